"""Fewer reference tokens: compact (downscaled) references and pruning of the least informative tokens.

Compact tokens (OminiControl2): the reference is encoded `condition_scale` times smaller and its Omni-RoPE
row/column ids are stretched by position_scale = 1 / condition_scale with offset (s - 1) / 2, so each token sits at
the centre of the block it covers on the full-size grid; 0.5 cuts the tokens 4x.
Pruning: tokens whose latent patch varies least (flat regions carry little the model needs) are dropped; the kept
ones keep their original positions.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import torch
import torch.nn.functional as F

from .condition import PIXELS_PER_TOKEN, Condition, ReferenceImage
from .errors import InvalidInputError
from .packing import patchify

Encoder = Callable[[torch.Tensor], torch.Tensor]  # pixels [1, 3, H, W] in [-1, 1] -> latent [1, C, H/8, W/8]


def compact_size(pixel_size: tuple[int, int], condition_scale: float) -> tuple[int, int]:
    """The reference's size at `condition_scale`, in multiples of 16 pixels and at least one token a side."""
    return tuple(max(PIXELS_PER_TOKEN, round(side * condition_scale / PIXELS_PER_TOKEN) * PIXELS_PER_TOKEN) for side in pixel_size)


def least_informative_tokens(latent: torch.Tensor, prune_ratio: float, patch_size: int = 2) -> torch.Tensor:
    """Row-major indices of the tokens to keep: all but the `prune_ratio` share with the lowest patch variance."""
    tokens = patchify(latent, patch_size)  # (n, p*p*C)
    keep = max(1, math.ceil(len(tokens) * (1.0 - prune_ratio)))
    variance = tokens.float().var(dim=1)
    return variance.topk(keep).indices.sort().values


def compact_reference(
    reference: ReferenceImage, encode: Encoder, condition_scale: float = 1.0, prune_ratio: float = 0.0
) -> ReferenceImage:
    """The reference re-encoded at `condition_scale` and/or pruned by `prune_ratio`, positions kept on its full grid."""
    latent, position_scale = reference.latent, reference.position_scale
    if condition_scale != 1.0:
        if reference.pixels is None:
            raise InvalidInputError("this reference has no pixels to re-encode; build the condition with encode_condition.")
        height, width = compact_size(reference.pixel_size, condition_scale)
        pixels = F.interpolate(reference.pixels, size=(height, width), mode="bicubic", antialias=True, align_corners=False)
        latent = encode(pixels.clamp(-1, 1))[0]
        position_scale = (reference.pixel_size[0] / height + reference.pixel_size[1] / width) / 2
    keep = least_informative_tokens(latent, prune_ratio) if prune_ratio > 0 else None
    return dataclasses.replace(reference, latent=latent, position_scale=position_scale, keep_index=keep)


def check_compaction(condition_scale: float, prune_ratio: float) -> None:
    """Refuse a scale or ratio that would leave no tokens, or add some."""
    if not isinstance(condition_scale, (int, float)) or not 0.0 < condition_scale <= 1.0:
        raise InvalidInputError(f"condition_scale must be in (0, 1], got {condition_scale!r} (0.5 = half size, 4x fewer tokens).")
    if not isinstance(prune_ratio, (int, float)) or not 0.0 <= prune_ratio < 1.0:
        raise InvalidInputError(f"prune_ratio must be in [0, 1), got {prune_ratio!r} (0.25 drops a quarter of the tokens).")


def compact_condition(
    condition: Condition, encode: Encoder, condition_scale: float = 1.0, prune_ratio: float = 0.0
) -> Condition:
    """The condition with every reference compacted and/or pruned; prompts untouched. A new fingerprint follows."""
    check_compaction(condition_scale, prune_ratio)
    references = tuple(compact_reference(ref, encode, condition_scale, prune_ratio) for ref in condition.references)
    return dataclasses.replace(condition, references=references, fingerprint="")
