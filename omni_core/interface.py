"""The narrow interface chat and reflection use of a model, so that they depend on it and not on `OmniGen2`, which
calls them: its MLLM, encoding prompts and images into a condition, and sampling from a condition."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

import torch

from .condition import Condition, ReferenceImage
from .image_processing import ImageLike
from .options import SamplingOptions
from .reference_cache import ConditionFeatureStore
from .text_encoder import TextEncoder

Progress = Callable[[int, int, torch.Tensor], None]  # (step, steps, denoised estimate [B, C, h, w]) after each step


@dataclass
class GenerationResult:
    """images [B, 3, H, W] in [0, 1]; latents [B, C, H/8, W/8] in the transformer's (scaled) space; run figures."""

    images: torch.Tensor
    latents: torch.Tensor
    stats: dict[str, Any] = field(default_factory=dict)


class ConditionalSampler(Protocol):
    """What `OmniGen2` offers chat and reflection (see pipeline.py for each)."""

    text_encoder: TextEncoder

    def encode(
        self, prompt: str, negative_prompt: str | None, images: Sequence[ImageLike] | None, options: SamplingOptions
    ) -> Condition: ...

    def encode_references(
        self, images: Sequence[ImageLike] | None, max_pixels: int, max_input_image_side_length: int
    ) -> tuple[ReferenceImage, ...]: ...

    def compacted(self, condition: Condition, options: SamplingOptions) -> Condition: ...

    def sample(
        self,
        condition: Condition,
        options: SamplingOptions | None = None,
        *,
        progress: Progress | None = None,
        condition_features: ConditionFeatureStore | None = None,
    ) -> GenerationResult: ...
