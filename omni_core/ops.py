"""The layer constructors models are built from, injectable so a host can swap them.

Every weight-owning module takes `operations`: a namespace with `Linear`, `RMSNorm` and `LayerNorm`. The default is
torch's layers with faster float32 CPU inference (Linear on this machine's faster GEMM, see cpu_gemm.py; RMSNorm in
fewer passes); ComfyUI passes its `comfy.ops` classes (no random init, weight casting, quantised storage) through the
same seam, as it does for its own models.
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
    """torch.nn.RMSNorm (same parameters and state dict) whose float32 CPU inference reads x once for its statistic
    (a vector norm) and scales it in place: 3 passes instead of torch's ~6 (pow, mean, add, rsqrt, mul, mul), ~1.8x
    faster, equal to round-off."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fast = x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_grad_enabled()
        if not fast or len(self.normalized_shape) != 1 or self.weight is None or self.weight.dtype != x.dtype:
            return super().forward(x)
        eps = torch.finfo(x.dtype).eps if self.eps is None else self.eps
        inverse_rms = torch.linalg.vector_norm(x, dim=-1, keepdim=True).square_().div_(x.shape[-1]).add_(eps).rsqrt_()
        return (x * inverse_rms).mul_(self.weight)


default_operations = SimpleNamespace(Linear=Linear, RMSNorm=RMSNorm, LayerNorm=torch.nn.LayerNorm)


class StorageCastLinear(torch.nn.Linear):
    """A Linear whose weights may be stored narrower than they are computed (float8 storage, bf16 compute): each
    call casts them to the input's dtype, so the 4B transformer fits 8-12 GB cards."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return linear(x, self.weight.to(x.dtype), bias)


storage_cast_operations = SimpleNamespace(
    Linear=StorageCastLinear, RMSNorm=torch.nn.RMSNorm, LayerNorm=torch.nn.LayerNorm
)
