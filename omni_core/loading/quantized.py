"""fp8 weights: which weights are kept in float8, and ComfyUI's fp8 file formats (plain e4m3fn and scaled fp8).

Only the projection matrices of the attention and feed-forward layers are stored narrower: they hold nearly all the
bytes (the transformer's and the MLLM's). Modulation (`norm1.linear`), embedders, norms, the output norm and final
projection stay in the compute dtype: fp8 there costs quality for little memory.
"""

from __future__ import annotations

import json
import re
from typing import Mapping, Sequence

import torch

from ..errors import ModelFileError

FP8 = torch.float8_e4m3fn

# <blocks>.<N>.<attention or feed-forward>.<projection>[.0].weight, in the transformer's and the MLLM's key names
_PROJECTION = re.compile(
    r"(?:^|\.)(?:layers|noise_refiner|ref_image_refiner|context_refiner|blocks)\.\d+\."
    r"(?:attn|self_attn|feed_forward|mlp)\.[^.]+(?:\.0)?\.weight$"
)


def fp8_weight_names(shapes: Mapping[str, Sequence[int]]) -> set[str]:
    """The names among `shapes` ({name: shape}) whose weights fp8 storage keeps in float8: the blocks' projections."""
    return {name for name, shape in shapes.items() if len(shape) == 2 and _PROJECTION.search(name)}

# ComfyUI's scaled fp8 files: a per-layer weight scale (weight ~ fp8 values * scale), named `scale_weight` by the
# older format (with a `scaled_fp8` marker) and `weight_scale` by the newer (with `comfy_quant` per layer, JSON).
SCALE_SUFFIXES = (".scale_weight", ".weight_scale")
# Bookkeeping read for checking only: input scales serve fp8 matrix products, which weights computed in bf16 skip.
_BOOKKEEPING_SUFFIXES = (".comfy_quant", ".scale_input", ".input_scale")
SCALED_FP8_MARKER = "scaled_fp8"


# What a quantized layer holds beside its weight, in ComfyUI's per-layer form
QUANT_SUFFIXES = (".weight_scale", ".comfy_quant")
E4M3FN_FORMAT = {"format": "float8_e4m3fn"}


def comfy_quant_entry() -> torch.Tensor:
    """A layer's `comfy_quant` tensor (UTF-8 JSON bytes) saying its weight is scaled float8_e4m3fn."""
    return torch.tensor(list(json.dumps(E4M3FN_FORMAT).encode()), dtype=torch.uint8)


def is_bookkeeping(key: str) -> bool:
    return key == SCALED_FP8_MARKER or key.endswith(_BOOKKEEPING_SUFFIXES)


def weight_scales(keys) -> dict[str, str]:
    """{weight key: its scale's key} for the scaled weights of a ComfyUI scaled-fp8 file (empty for other files)."""
    return {key[: -len(suffix)] + ".weight": key for key in keys for suffix in SCALE_SUFFIXES if key.endswith(suffix)}


def check_quant_formats(state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    """Refuse layers of a format other than float8_e4m3fn (`comfy_quant` JSON), naming the first such layer."""
    for key, value in state_dict.items():
        if key.endswith(".comfy_quant"):
            conf = json.loads(bytes(value.tolist()).decode())
            if conf.get("format") != "float8_e4m3fn":
                raise ModelFileError(
                    f"'{source}': layer {key[: -len('.comfy_quant')]} is quantized as {conf.get('format')!r}; only "
                    "float8_e4m3fn (plain or scaled fp8) files load. Use an fp8 e4m3fn, bf16 or fp16 file."
                )


def dequantized(weight: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A scaled fp8 weight in `dtype`, for layers kept in the compute dtype."""
    return (weight.float() * scale.float()).to(dtype)


def quantize_scaled(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(e4m3fn values, float32 scale) with weight ~ values * scale, the scale mapping the largest |weight| to fp8's
    largest value: how scaled fp8 files are written (tests and benchmarks write them)."""
    scale = weight.float().abs().max().clamp_min(torch.finfo(torch.float32).tiny) / torch.finfo(FP8).max
    return (weight.float() / scale).to(FP8), scale.reshape(())
