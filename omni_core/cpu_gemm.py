"""The linear layers' products on the CPU kernels kernel_choice.py chose for this machine.

PyTorch sends float32 CPU matmuls to MKL's sgemm; oneDNN (`cpu_kernels.onednn_linear`) runs the same products, and
can apply the feed-forward's SiLU inside the GEMM. Neither is faster everywhere (kernel_choice.py), and oneDNN
cannot run every dtype on every CPU (no bfloat16 without AVX-512): a path is only taken where it was probed runnable
and chosen. Everything else (GPU, other dtypes, autograd, builds without oneDNN) is plain F.linear.
"""

import torch
import torch.nn.functional as F

from .cpu_kernels import onednn_linear
from .kernel_choice import KERNEL_DTYPES, current_kernels


def cpu_inference(*tensors: torch.Tensor, dtype: torch.dtype = torch.float32) -> bool:
    """CPU tensors of `dtype` outside autograd: where a chosen CPU kernel may replace torch's own."""
    return not torch.is_grad_enabled() and all(t.device.type == "cpu" and t.dtype == dtype for t in tensors)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear, through oneDNN for float32 where it is this machine's faster path (torch's own bfloat16 GEMM is
    oneDNN already wherever oneDNN runs bfloat16)."""
    if cpu_inference(x, weight) and current_kernels().linear == "onednn":
        return onednn_linear(x, weight, bias)
    return F.linear(x, weight, bias)


def linear_silu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """silu(F.linear(x, weight, bias)); where oneDNN runs the layer the activation is applied inside the GEMM (no
    extra pass over the [S, ffn] output, ~10% of a feed-forward's first product on CPU)."""
    if x.dtype in KERNEL_DTYPES and cpu_inference(x, weight, dtype=x.dtype) and current_kernels(x.dtype).fused:
        return onednn_linear(x, weight, bias, "swish")
    return F.silu(F.linear(x, weight, bias))
