"""What a generation is conditioned on: encoded prompts and reference latents, as one immutable object."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import torch

from .errors import InvalidInputError

MAX_REFERENCE_IMAGES = 5  # the checkpoint's image_index_embedding has one row per reference slot
PIXELS_PER_TOKEN = 16  # VAE factor 8 x patch size 2


@dataclass(frozen=True)
class TextCondition:
    """Last hidden states of the MLLM for one prompt: `embeds` [1, L, D], `mask` [1, L] (1 = real token)."""

    embeds: torch.Tensor
    mask: torch.Tensor
    text: str = ""


@dataclass(frozen=True)
class ReferenceImage:
    """One reference image as the transformer sees it: scaled VAE latent [C, h, w] and its pixel size.

    `position_scale` > 1 marks a compact (downscaled) reference whose Omni-RoPE row/column ids are stretched back
    onto the full-size grid; `keep_index` (token indices, row-major) marks a pruned one. Both default to "as encoded".
    `pixels` keeps the preprocessed image [1, 3, H, W] in [-1, 1], so it can be re-encoded smaller.
    """

    latent: torch.Tensor
    pixel_size: tuple[int, int]
    position_scale: float = 1.0
    keep_index: torch.Tensor | None = None
    pixels: torch.Tensor | None = None

    @property
    def full_size_tokens(self) -> int:
        """Tokens this image would take uncompacted and unpruned (the patch grid at its full pixel size)."""
        return (self.pixel_size[0] // PIXELS_PER_TOKEN) * (self.pixel_size[1] // PIXELS_PER_TOKEN)

    @property
    def num_tokens(self) -> int:
        latent_per_token = PIXELS_PER_TOKEN // 8
        grid = (self.latent.shape[1] // latent_per_token) * (self.latent.shape[2] // latent_per_token)
        return grid if self.keep_index is None else len(self.keep_index)


@dataclass(frozen=True)
class Condition:
    """A positive prompt, an optional negative prompt and 0..5 reference images, ready for sampling.

    `max_pixels` is the pixel budget the images were encoded with; sampling uses it for the output size too.
    """

    positive: TextCondition
    negative: TextCondition | None = None
    references: tuple[ReferenceImage, ...] = ()
    max_pixels: int = 1024 * 1024
    fingerprint: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        check_reference_count(len(self.references))
        if not self.fingerprint:
            object.__setattr__(self, "fingerprint", condition_fingerprint(self))


def check_reference_count(
    count: int,
    what: str = "reference images",
    detail: str = "",
    reserved_for: str | None = None,
) -> None:
    """The one rule of how many images OmniGen2 is shown: at most the checkpoint's image slots (one fewer when one is
    `reserved_for` something else, as repaint's canvas). The error names `what` was given (and `detail`)."""
    limit = MAX_REFERENCE_IMAGES - (reserved_for is not None)
    if count > limit:
        besides = "" if reserved_for is None else f" besides {reserved_for}"
        raise InvalidInputError(
            f"{count} {what} given{detail}; OmniGen2 takes at most {limit}{besides}. Remove some or combine them into "
            "one picture."
        )


def tensor_fingerprint(tensor: torch.Tensor) -> str:
    """A content hash of a tensor (shape, dtype and bytes), for cache keys that must never collide across inputs."""
    data = tensor.detach().to("cpu").contiguous()
    digest = hashlib.sha1(f"{tuple(data.shape)}|{data.dtype}".encode())
    digest.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return digest.hexdigest()


def reference_fingerprint(reference: ReferenceImage) -> str:
    """Hash of everything that determines one reference image's tokens: latent, pixel size, position scale, kept
    tokens (not its slot: callers that key per image add it)."""
    digest = hashlib.sha1(tensor_fingerprint(reference.latent).encode())
    digest.update(f"{reference.pixel_size}|{reference.position_scale}".encode())
    if reference.keep_index is not None:
        digest.update(tensor_fingerprint(reference.keep_index).encode())
    return digest.hexdigest()


def condition_fingerprint(condition: Condition) -> str:
    """Hash of everything that determines the reference tokens' content (not the prompts: refs never see text)."""
    digest = hashlib.sha1()
    for ref in condition.references:
        digest.update(reference_fingerprint(ref).encode())
    return digest.hexdigest()
