"""Fast float32 GEMMs on x86 CPUs: oneDNN instead of MKL's sgemm, for inference.

PyTorch sends float32 CPU matmuls to MKL's sgemm, which on the AMD EPYC CPUs measured here runs at about half the
speed of oneDNN's kernels for every linear shape of the model (2-2.9x; see benchmarks/README.md); bfloat16 matmuls
already go to oneDNN. `linear` picks oneDNN where it applies and falls back to F.linear everywhere else (GPU,
other dtypes, autograd, builds without the op). The op is private to PyTorch, so it is checked for at import.
"""

import platform

import torch


def _has_onednn_gemm() -> bool:
    """oneDNN's dense GEMM is reachable: an x86 build of PyTorch with mkldnn (all official x86 wheels)."""
    return (
        platform.machine().lower() in ("x86_64", "amd64")
        and torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    )


ONEDNN_GEMM = _has_onednn_gemm()


def onednn_gemm_applies(*tensors: torch.Tensor) -> bool:
    """Whether `onednn_linear` may replace F.linear/matmul here: float32 CPU tensors, inference (no autograd)."""
    return (
        ONEDNN_GEMM
        and not torch.is_grad_enabled()
        and all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)
    )


def onednn_linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, activation: str = "none"
) -> torch.Tensor:
    """x @ weight.T + bias through oneDNN, then `activation` ("none", or a oneDNN post-op such as "swish") inside the
    GEMM. Equal to F.linear up to float32 round-off (another summation order)."""
    # a non-contiguous weight sends oneDNN to a reference kernel ~1000x slower: make it dense first (no-op if so)
    return torch.ops.mkldnn._linear_pointwise(x, weight.contiguous(), bias, activation, [], "")


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear, through oneDNN where `onednn_gemm_applies`."""
    if onednn_gemm_applies(x, weight):
        return onednn_linear(x, weight, bias)
    return torch.nn.functional.linear(x, weight, bias)


def linear_silu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """silu(F.linear(x, weight, bias)); through oneDNN the activation is applied inside the GEMM (no extra pass over
    the [S, ffn] output, ~10% of a feed-forward's first product on CPU)."""
    if onednn_gemm_applies(x, weight):
        return onednn_linear(x, weight, bias, "swish")
    return torch.nn.functional.silu(torch.nn.functional.linear(x, weight, bias))
