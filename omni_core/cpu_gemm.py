"""Float32 CPU GEMMs for inference on the faster of oneDNN and MKL, as measured on the machine that runs them.

PyTorch sends float32 CPU matmuls to MKL's sgemm; oneDNN (`torch.ops.mkldnn._linear_pointwise`, the op inductor
uses) runs the same products too. Neither is faster everywhere: on an AMD EPYC Zen 5 oneDNN is ~2x faster for
every linear shape of the model, on a Zen 4 0-25% faster, while on an Intel Xeon with AMX MKL is faster and oneDNN
always on made the engine slower than the official one. The rule (kernel_choice.py): a micro-benchmark of both
paths, run once per machine and cached on disk under the CPU model (family and model numbers included) and flags,
torch version, thread count and dtype, decides (it picked oneDNN on both EPYCs and MKL on the Xeon);
`OMNI_CORE_CPU_GEMM=auto|onednn|mkl` or `kernel_choice.set_cpu_gemm` overrides it.

`linear` takes the chosen path where it applies and F.linear everywhere else (GPU, bfloat16 and other dtypes, which
torch already sends to oneDNN, autograd, builds without the op, which is private to PyTorch and checked for).
"""

import torch

from .kernel_choice import current_kernels, onednn_available

ONEDNN_GEMM = onednn_available()


def onednn_gemm_applies(*tensors: torch.Tensor, dtype: torch.dtype = torch.float32) -> bool:
    """Whether `onednn_linear` may replace F.linear/matmul here: CPU tensors of `dtype`, inference (no autograd)."""
    return (
        ONEDNN_GEMM
        and not torch.is_grad_enabled()
        and all(t.device.type == "cpu" and t.dtype == dtype for t in tensors)
    )


def onednn_linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, activation: str = "none"
) -> torch.Tensor:
    """x @ weight.T + bias through oneDNN, then `activation` ("none", or a oneDNN post-op such as "swish") inside the
    GEMM. Equal to F.linear up to float32 round-off (another summation order)."""
    # a non-contiguous weight sends oneDNN to a reference kernel ~1000x slower: make it dense first (no-op if so)
    return torch.ops.mkldnn._linear_pointwise(x, weight.contiguous(), bias, activation, [], "")


def _use_onednn(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return onednn_gemm_applies(x, weight) and current_kernels().linear == "onednn"


def _fuse_onednn(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether a GEMM with a fused post-op runs through oneDNN: float32 where it is the machine's faster path, and
    bfloat16 CPU inference always (torch's own bfloat16 CPU GEMM is oneDNN already, so only the fusion is new)."""
    return onednn_gemm_applies(x, weight, dtype=torch.bfloat16) or _use_onednn(x, weight)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear, through oneDNN where it applies and is this machine's faster path."""
    if _use_onednn(x, weight):
        return onednn_linear(x, weight, bias)
    return torch.nn.functional.linear(x, weight, bias)


def linear_silu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """silu(F.linear(x, weight, bias)); through oneDNN the activation is applied inside the GEMM (no extra pass over
    the [S, ffn] output, ~10% of a feed-forward's first product on CPU)."""
    if _fuse_onednn(x, weight):
        return onednn_linear(x, weight, bias, "swish")
    return torch.nn.functional.silu(torch.nn.functional.linear(x, weight, bias))
