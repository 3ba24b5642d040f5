"""Frozen features, computed once per prompt and per image and kept in memory.

The text encoder and the VAE do not train, so a prompt's MLLM features and an image's VAE posterior are the same
every time the item comes round: computing them once is what makes training on a CPU fast. Entries are keyed by
everything that determines them (the prompt; the file, its modification time and size, and the sizing settings)
and kept in CPU memory (a GPU's memory is for training); `data.cache_features: false` recomputes them every time
instead, for data sets too large to hold.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import PIL.Image
import torch

from ..compact import compact_reference
from ..condition import ReferenceImage
from ..image_processing import preprocess_reference
from ..text_encoder import TextEncoder
from ..vae import encode_to_latent_distribution
from .config import DataConfig
from .data import TrainingItem


@dataclass(frozen=True)
class LatentPosterior:
    """An image's VAE posterior in the transformer's latent space, [C, h, w] each (CPU), and how it sits as a reference:
    its processed full-size `pixel_size` and the `position_scale` of a compact (downscaled) encoding."""

    mean: torch.Tensor
    std: torch.Tensor
    pixel_size: tuple[int, int]
    position_scale: float = 1.0

    def draw(self, noise: torch.Tensor | None) -> torch.Tensor:
        """mean + std * noise (a posterior sample), or the mean when noise is None."""
        return self.mean if noise is None else self.mean + self.std * noise

    def as_reference(self, latent: torch.Tensor) -> ReferenceImage:
        return ReferenceImage(latent=latent, pixel_size=self.pixel_size, position_scale=self.position_scale)


def _file_key(path: Path) -> tuple:
    stat = path.stat()
    return str(path.resolve()), stat.st_mtime_ns, stat.st_size


class FrozenFeatures:
    """Text features and VAE posteriors of training items, cached in memory for the whole run."""

    def __init__(
        self,
        text_encoder: TextEncoder,
        vae: torch.nn.Module,
        data: DataConfig,
        device: torch.device,
        condition_size: int | None = None,
        position_scale: float | None = None,
    ) -> None:
        self.text_encoder, self.vae, self.data, self.device = text_encoder, vae, data, device
        self.condition_size, self.position_scale = condition_size, position_scale
        self.cache = data.cache_features
        self._prompts: dict[str, torch.Tensor] = {}
        self._images: dict[tuple, LatentPosterior] = {}

    def prompt(self, text: str) -> torch.Tensor:
        """The MLLM features [L, D] of one templated prompt (as generation encodes it), float32 on the CPU."""
        if text in self._prompts:
            return self._prompts[text]
        features = self.text_encoder.encode([text])[0].embeds[0].to("cpu", torch.float32)
        if self.cache:
            self._prompts[text] = features
        return features

    def output(self, item: TrainingItem) -> LatentPosterior:
        """The posterior of the item's output image at the training resolution."""
        return self._image(item.output_image, self.data.max_output_pixels, None, item.source)

    def references(self, item: TrainingItem) -> list[LatentPosterior]:
        """The posteriors of the item's input images, sized by the budget for their count (and compacted)."""
        budgets = self.data.max_input_pixels
        budget = budgets[min(len(item.input_images), len(budgets)) - 1]
        return [self._image(path, budget, self.condition_size, item.source) for path in item.input_images]

    def _image(self, path: Path, max_pixels: int, condition_size: int | None, source: str) -> LatentPosterior:
        key = (_file_key(path), max_pixels, self.data.max_side_length, condition_size, self.position_scale)
        if key in self._images:
            return self._images[key]
        posterior = self._encode(path, max_pixels, condition_size, source)
        if self.cache:
            self._images[key] = posterior
        return posterior

    def _encode(self, path: Path, max_pixels: int, condition_size: int | None, source: str) -> LatentPosterior:
        with PIL.Image.open(path) as image:
            pixels = preprocess_reference(image.convert("RGB"), max_pixels, self.data.max_side_length, name=f"{source}: {path.name}")
        stds = []

        def encode(image_pixels: torch.Tensor) -> torch.Tensor:
            mean, std = encode_to_latent_distribution(self.vae, image_pixels.to(self.device))
            stds.append(std.cpu())
            return mean.cpu()

        pixel_size = tuple(pixels.shape[-2:])
        reference = ReferenceImage(latent=encode(pixels)[0], pixel_size=pixel_size, pixels=pixels)
        if condition_size is not None and condition_size < max(pixel_size):
            # the same re-encoding as inference's compact_condition, so a LoRA trains on the tokens it will see
            reference = compact_reference(reference, encode, condition_size / max(pixel_size))
            if self.position_scale is not None:
                reference = dataclasses.replace(reference, position_scale=self.position_scale)
        return LatentPosterior(reference.latent, stds[-1][0], pixel_size, reference.position_scale)
