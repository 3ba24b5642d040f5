"""fp8 weights: which weights are kept in float8, and ComfyUI's fp8 file formats.

Only the projection matrices of the attention and feed-forward layers are stored narrower: they hold nearly all the
bytes (the transformer's and the MLLM's). Modulation (`norm1.linear`), embedders, norms, the output norm and final
projection stay in the compute dtype: fp8 there costs quality for little memory.
"""

from __future__ import annotations

import re
from typing import Mapping, Sequence

import torch

FP8 = torch.float8_e4m3fn

# <blocks>.<N>.<attention or feed-forward>.<projection>[.0].weight, in the transformer's and the MLLM's key names
_PROJECTION = re.compile(
    r"(?:^|\.)(?:layers|noise_refiner|ref_image_refiner|context_refiner|blocks)\.\d+\."
    r"(?:attn|self_attn|feed_forward|mlp)\.[^.]+(?:\.0)?\.weight$"
)


def fp8_weight_names(shapes: Mapping[str, Sequence[int]]) -> set[str]:
    """The names among `shapes` ({name: shape}) whose weights fp8 storage keeps in float8: the blocks' projections."""
    return {name for name, shape in shapes.items() if len(shape) == 2 and _PROJECTION.search(name)}
