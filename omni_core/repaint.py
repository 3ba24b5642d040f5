"""Token integration for repainting (OminiControl2): only the masked region is generated.

The known part of the canvas enters as condition tokens (the canvas as a reference image pruned to the tokens
outside the mask) and only the masked tokens enter as noise, so a step runs fewer tokens than the whole canvas
would. Afterwards the generated tokens are put back into the canvas latent and, after decoding, the masked pixels
into the original image, so everything outside the mask is returned untouched.
"""

from __future__ import annotations

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F

from .condition import PIXELS_PER_TOKEN
from .errors import InvalidInputError


def to_mask(mask, size: tuple[int, int]) -> torch.Tensor:
    """A float [H, W] mask in 0..1 (1 = repaint) from a ComfyUI MASK ([H, W] or [1, H, W]), an array or a PIL image,
    checked against the image size (H, W)."""
    if isinstance(mask, PIL.Image.Image):
        mask = np.asarray(mask.convert("L"), dtype=np.float32) / 255.0
    mask = torch.as_tensor(np.asarray(mask) if not isinstance(mask, torch.Tensor) else mask).float()
    if mask.ndim == 3 and mask.shape[0] == 1:
        mask = mask[0]
    if mask.ndim != 2:
        raise InvalidInputError(f"mask must be one [H, W] mask, got shape {tuple(mask.shape)}.")
    if tuple(mask.shape) != tuple(size):
        raise InvalidInputError(f"mask is {tuple(mask.shape)} but the image is {tuple(size)} (H, W); give them the same size.")
    if not torch.isfinite(mask).all():
        raise InvalidInputError("mask contains NaN or infinite values.")
    return mask.clamp(0, 1)


def token_mask(mask: torch.Tensor, canvas_size: tuple[int, int]) -> torch.Tensor:
    """Which tokens of the canvas grid are repainted: any covered pixel above one half marks its 16 x 16 token."""
    resized = F.interpolate(mask[None, None], size=canvas_size, mode="bilinear", align_corners=False)
    return F.max_pool2d((resized > 0.5).float(), PIXELS_PER_TOKEN)[0, 0].bool()


def original_pixels(image: np.ndarray, decoded: PIL.Image.Image) -> torch.Tensor:
    """The picture (an `image_array`) as float [3, H, W] in 0..1 for stitching: float RGB pixels as given (a ComfyUI
    IMAGE row), so the kept region is returned bit for bit; anything else from its 8-bit decoding `decoded`."""
    if image.dtype != np.uint8 and image.shape[-1] == 3:
        return torch.from_numpy(image).permute(2, 0, 1)
    return torch.from_numpy(np.asarray(decoded, dtype=np.float32) / 255.0).permute(2, 0, 1)


def stitch_latents(known: torch.Tensor, generated: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """generated [B, C, h, w] inside the masked tokens, the canvas latent known [C, h, w] everywhere else."""
    patch = known.shape[-1] // tokens.shape[-1]
    inside = tokens.repeat_interleave(patch, 0).repeat_interleave(patch, 1).to(generated.device)
    return torch.where(inside, generated, known.to(generated))


def stitch_pixels(original: torch.Tensor, generated: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """original [3, H, W] and generated [B, 3, H, W] in 0..1 blended by the soft mask [H, W] (1 = generated)."""
    weight = mask.to(generated)[None, None]
    return original.to(generated)[None] * (1 - weight) + generated * weight
