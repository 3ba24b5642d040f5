"""Where the pack computes and keeps tensors, and the dtype weights load in: ComfyUI's choices inside it, the CPU in
float32 outside it."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from omni_core.device_dtype import default_dtype
from omni_core.errors import InvalidInputError

from .host import IN_COMFYUI, model_management

WEIGHT_DTYPES = ("auto", "bf16", "fp16", "fp32", "fp8_e4m3fn")
_NAMED_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def load_device() -> torch.device:
    """Where sampling runs: ComfyUI's torch device, or the CPU outside ComfyUI."""
    return model_management.get_torch_device() if IN_COMFYUI else torch.device("cpu")


def offload_device() -> torch.device:
    """Where weights wait between runs: ComfyUI's offload device, or the CPU outside ComfyUI."""
    return model_management.unet_offload_device() if IN_COMFYUI else torch.device("cpu")


def output_device() -> torch.device:
    """Where IMAGE and LATENT outputs live (ComfyUI's intermediate device; the CPU outside it)."""
    return model_management.intermediate_device() if IN_COMFYUI else torch.device("cpu")


@dataclass(frozen=True)
class WeightDtypes:
    """The dtype weights are loaded in (`compute`) and, for fp8, the narrower dtype the transformer's and the MLLM's
    projection matrices are stored in."""

    compute: torch.dtype
    storage: torch.dtype | None = None  # None: stored as computed


def weight_dtypes(choice: str) -> WeightDtypes:
    """Resolve the loader's weight dtype choice. 'auto' asks ComfyUI what the device handles; outside ComfyUI
    it is the engine's own default for the device (`omni_core.device_dtype`: fp32 on the CPU)."""
    if choice not in WEIGHT_DTYPES:
        raise InvalidInputError(f"weight_dtype '{choice}' is not one of {WEIGHT_DTYPES}.")
    if choice == "fp8_e4m3fn":
        return WeightDtypes(torch.bfloat16, torch.float8_e4m3fn)
    if choice != "auto":
        return WeightDtypes(_NAMED_DTYPES[choice])
    device = load_device()
    if not IN_COMFYUI:
        return WeightDtypes(default_dtype(device))
    if model_management.should_use_bf16(device):
        return WeightDtypes(torch.bfloat16)
    if model_management.should_use_fp16(device):
        return WeightDtypes(torch.float16)
    return WeightDtypes(torch.float32)
