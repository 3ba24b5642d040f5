"""The layer constructors models are built from, injectable so a host can swap them.

Every weight-owning module takes `operations`: a namespace with `Linear`, `RMSNorm` and `LayerNorm`. The default is
torch's layers with faster float32 CPU inference (Linear on this machine's faster GEMM, see cpu_gemm.py; RMSNorm in
fewer passes); ComfyUI passes its `comfy.ops` classes (no random init, weight casting, quantised storage) through the
same seam, as it does for its own models. Models another library builds (diffusers' VAE, transformers' MLLM) take a
host's classes through `adopt_operations`.
"""

from types import SimpleNamespace

import torch

from .cpu_gemm import linear, linear_silu


class Linear(torch.nn.Linear):
    """torch.nn.Linear (same parameters and state dict) whose float32 CPU inference runs on oneDNN."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)

    def forward_silu(self, x: torch.Tensor) -> torch.Tensor:
        """silu(self(x)), fused where oneDNN runs it."""
        return linear_silu(x, self.weight, self.bias)


class RMSNorm(torch.nn.RMSNorm):
    """torch.nn.RMSNorm (same parameters and state dict) whose float32 / bfloat16 CPU inference reads x once for its
    statistic (a float32 vector norm, no upcast copy) and scales it: 3 passes instead of torch's ~6 (pow, mean, add,
    rsqrt, mul, mul), ~1.8x faster, equal to round-off."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _fast_norm(self, x):
            return super().forward(x)
        return _normalized(self, x)


FAST_NORM_DTYPES = (torch.float32, torch.bfloat16)


def _fast_norm(norm: torch.nn.Module, x: torch.Tensor) -> bool:
    return (
        isinstance(norm, RMSNorm)
        and x.device.type == "cpu"
        and x.dtype in FAST_NORM_DTYPES
        and not torch.is_grad_enabled()
        and len(norm.normalized_shape) == 1
        and norm.weight is not None
        and norm.weight.dtype == x.dtype
    )


def _inverse_rms(norm: RMSNorm, x: torch.Tensor, rounded: bool = False) -> torch.Tensor:
    """1 / rms(x) per row, [..., 1] float32, from one read of x whatever its dtype.

    `rounded`: the norm returned in x's dtype (accumulated in float32 either way) for a result that is rounded to it
    anyway; a float32 norm of a bfloat16 x first copies x to float32, 5x the time."""
    eps = torch.finfo(x.dtype).eps if norm.eps is None else norm.eps
    norms = torch.linalg.vector_norm(x, dim=-1, keepdim=True, dtype=None if rounded else torch.float32)
    squares = norms.float().square_()
    return squares.div_(x.shape[-1]).add_(eps).rsqrt_()


def _weight(norm: RMSNorm, scale: torch.Tensor | None) -> torch.Tensor:
    """The norm's weight times a per-sample scale ([B, 1, D]: a tiny product instead of a pass over x), float32."""
    return norm.weight.float() if scale is None else norm.weight.float() * scale.float()


def _normalized(
    norm: RMSNorm, x: torch.Tensor, scale: torch.Tensor | None = None, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """x / rms(x) * weight * scale in `dtype` (default x's), accumulated in float32.

    Every pass reads and writes one dtype: an op mixing bfloat16 and float32 tensors first copies the bfloat16 one to
    float32 (TensorIterator's common dtype), ~2x the time of a same-dtype pass. So a bfloat16 result is computed in
    bfloat16 passes, and a float32 result of a bfloat16 x upcasts x once."""
    dtype = dtype or x.dtype
    weight = _weight(norm, scale)
    if dtype == x.dtype != torch.float32:
        return (x * _inverse_rms(norm, x, rounded=True).to(dtype)).mul_(weight.to(dtype))
    x = x.float()
    return (x * _inverse_rms(norm, x)).mul_(weight).to(dtype)


def rms_norm(
    norm: torch.nn.Module, x: torch.Tensor, scale: torch.Tensor | None = None, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """norm(x) * scale (a modulated block's scaled norm), returned in `dtype` (default x's).

    Our RMSNorm folds the scale into its weight, and for a float32 `dtype` skips rounding the result (RoPE rotates in
    float32 next): one or two passes fewer per call. Any other norm (a host's layer class) runs as itself.
    """
    dtype = dtype or x.dtype
    if _fast_norm(norm, x):
        return _normalized(norm, x, scale, dtype)
    out = norm(x) if scale is None else norm(x) * scale
    return out.to(dtype)


def add_rms_norm(
    x: torch.Tensor, norm: torch.nn.Module, y: torch.Tensor, gate: torch.Tensor | None = None
) -> torch.Tensor:
    """x + gate * norm(y) (a block's residual); with our RMSNorm one pass after the norm's statistic."""
    if not _fast_norm(norm, y) or x.dtype != y.dtype:
        return x + (norm(y) if gate is None else gate * norm(y))
    if x.dtype == torch.float32:
        return torch.addcmul(x, y * _inverse_rms(norm, y), _weight(norm, gate))
    # bfloat16: in bfloat16 passes, as in `_normalized`
    return torch.addcmul(x, y * _inverse_rms(norm, y, rounded=True).to(y.dtype), _weight(norm, gate).to(y.dtype))


default_operations = SimpleNamespace(Linear=Linear, RMSNorm=RMSNorm, LayerNorm=torch.nn.LayerNorm)


class StorageCastLinear(torch.nn.Linear):
    """A Linear whose weights may be stored narrower than they are computed (float8 storage, bf16 compute): each
    call casts them to the input's dtype, so the 4B transformer fits 8-12 GB cards. A `weight_scale` buffer (ComfyUI's
    scaled fp8 files) multiplies the cast weight."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        scale = self._buffers.get("weight_scale")  # float32, 0-dim: the product is x's dtype, rounded once
        weight = self.weight.to(x.dtype) if scale is None else self.weight.to(x.dtype) * scale
        return linear(x, weight, bias)


storage_cast_operations = SimpleNamespace(
    Linear=StorageCastLinear, RMSNorm=torch.nn.RMSNorm, LayerNorm=torch.nn.LayerNorm
)


def adopt_operations(model: torch.nn.Module, operations: SimpleNamespace) -> torch.nn.Module:
    """Give a model another library built (diffusers' VAE, transformers' MLLM) a host's layer classes, in place.

    Every layer that is exactly a torch layer named in `operations` (Linear, Conv2d, Embedding, ...) becomes that
    class, a subclass with the same parameters (ComfyUI's ops are). Then, where the host provides
    `operations.castable(layer)`, every layer owning parameters is handed to it, those of other classes
    (transformers' RMSNorm) included: a host that moves weights layer by layer (ComfyUI's partial loading) must be
    able to move every weight, or the ones it cannot would stay behind.
    """
    for layer in model.modules():
        kind = type(layer)
        if getattr(torch.nn, kind.__name__, None) is kind and hasattr(operations, kind.__name__):
            layer.__class__ = getattr(operations, kind.__name__)
        if hasattr(operations, "castable") and any(True for _ in layer.parameters(recurse=False)):
            if any(True for _ in layer.children()):
                raise TypeError(f"{kind.__name__} owns parameters beside child layers: no host can move them per layer")
            operations.castable(layer)
    return model
