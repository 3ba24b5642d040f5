"""The dtype OmniGen2 loads in when none is given: per device, by ComfyUI's `model_management` rules.

ComfyUI's rule (`unet_dtype` / `should_use_bf16` / `should_use_fp16`, summarised): on the CPU models run in float32
(bfloat16 "works but is extremely slow" there by its note); on a CUDA/ROCm GPU of compute capability >= 8 (or one
torch reports bfloat16 support for) half precision is used; on Apple MPS from macOS 14 bfloat16; on Intel XPU
bfloat16 where the device supports it; anything else float32. OmniGen2's transformer overflows float16 (like
FLUX), so of the half-precision types only bfloat16 is offered, which is also what the official pipeline runs in.

On the CPU float32 stays the default here too: it is what matches the official outputs to round-off. bfloat16 is
an opt-in (`load_model(dtype=torch.bfloat16)`, ~0.3-0.6x the float32 time where the CPU has bfloat16 instructions,
~50 dB against float32: benchmarks/README.md), which `load_model` mentions in its log there; without AVX-512 oneDNN
has no bfloat16 kernels, bfloat16 runs on torch's generic ones at several times the float32 time, and it warns.
"""

from __future__ import annotations

import torch

from .errors import InvalidInputError
from .kernel_choice import cpu_description

BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_has_bf16_instructions() -> bool:
    """The CPU computes bfloat16 natively (AVX512-BF16 or AMX-BF16), where bfloat16 GEMMs beat float32 ones."""
    return any(flag in cpu_description()[1] for flag in BF16_CPU_FLAGS)


def check_device(device: str | torch.device) -> torch.device:
    """The device parsed, or an error naming it when this machine or torch build cannot place a tensor there (an
    unknown name, a GPU index that does not exist, CUDA asked of a CPU-only torch), before any weights load."""
    try:
        parsed = torch.device(device)
        torch.empty(0, device=parsed)
    except (RuntimeError, AssertionError, TypeError, ValueError) as error:
        usable = ["cpu", *(f"cuda:{i}" for i in range(torch.cuda.device_count()))]
        if torch.backends.mps.is_available():
            usable.append("mps")
        reason = (str(error).splitlines() or [type(error).__name__])[0][:200]  # torch's dispatch errors run for pages
        usable_names = ", ".join(usable)
        raise InvalidInputError(f"device={device!r} cannot be used here ({reason}); use one of {usable_names}.") from None
    return parsed


def execution_device(model: torch.nn.Module) -> torch.device:
    """Where a model computes: the device a host declared (`model.execution_device`) or else its first weight's.

    A host that loads weights layer by layer (ComfyUI's partial loading) keeps some of them on the CPU and casts them
    to the GPU per call, so no weight's device says where inputs must go; the host declares it instead.
    """
    declared = getattr(model, "execution_device", None)
    return declared if declared is not None else next(model.parameters()).device


def default_dtype(device: str | torch.device) -> torch.dtype:
    """bfloat16 where ComfyUI would run a bfloat16-capable model in half precision, else float32 (see above)."""
    device = torch.device(device)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        capable = torch.cuda.get_device_capability(index)[0] >= 8 or torch.cuda.is_bf16_supported()
        return torch.bfloat16 if capable else torch.float32
    if device.type == "mps":
        return torch.bfloat16 if torch.backends.mps.is_macos_or_newer(14, 0) else torch.float32
    if device.type == "xpu":
        return torch.bfloat16 if torch.xpu.is_bf16_supported() else torch.float32
    return torch.float32
