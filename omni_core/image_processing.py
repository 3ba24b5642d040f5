"""Pixels in and out: reference-image resizing, output-size rules and conversion between image types.

Reference images go through PIL's LANCZOS resize like the official pipeline, so a ComfyUI IMAGE (floats that
came from 8-bit files) is turned back into 8 bits first; that round trip is exact for loaded images.
"""

from __future__ import annotations

import math
from typing import Union

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F

from .errors import InvalidInputError

ImageLike = Union[PIL.Image.Image, torch.Tensor, np.ndarray]
SIZE_MULTIPLE = 16  # VAE factor 8 x patch size 2
# The largest output side delivered: the decoded image is resized up to the requested size, so a typo such as
# width=64000 would otherwise end in a 49 GB allocation instead of an error naming the input.
MAX_OUTPUT_SIDE = 8192


def _scaled_to_multiple(height: int, width: int, ratio: float) -> tuple[int, int]:
    """Each side times `ratio`, truncated, then floored to a multiple of 16 (the official order of operations)."""
    return int(height * ratio) // SIZE_MULTIPLE * SIZE_MULTIPLE, int(width * ratio) // SIZE_MULTIPLE * SIZE_MULTIPLE


def fit_reference_size(height: int, width: int, max_pixels: int, max_side_length: int) -> tuple[int, int]:
    """Downscale (never up) to fit max_pixels and max_side_length, then floor each side to a multiple of 16."""
    ratio = min(math.sqrt(max_pixels / (height * width)), max_side_length / max(height, width), 1.0)
    return _scaled_to_multiple(height, width, ratio)


def fit_output_size(height: int, width: int, max_pixels: int) -> tuple[int, int]:
    """Requested output size scaled down to max_pixels and floored to multiples of 16 (the size that is sampled)."""
    return _scaled_to_multiple(height, width, min(math.sqrt(max_pixels / (height * width)), 1.0))


def check_output_size(height: int, width: int, max_pixels: int) -> tuple[int, int]:
    """Validate a requested size and return the sampled one, or say which input to change."""
    for name, value in (("height", height), ("width", width)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value <= 0:
            raise InvalidInputError(f"{name} must be a positive number of pixels, got {value!r}.")
        if value > MAX_OUTPUT_SIDE:
            raise InvalidInputError(
                f"{name}={value} is above {MAX_OUTPUT_SIDE} pixels, the largest output side; the model samples at most "
                f"max_pixels and resizes up to the size asked for. Use a side of at most {MAX_OUTPUT_SIDE}."
            )
    number = isinstance(max_pixels, (int, float, np.number)) and not isinstance(max_pixels, bool)
    if not number or not max_pixels >= SIZE_MULTIPLE**2:  # also refuses NaN
        raise InvalidInputError(
            f"max_pixels must be a number of pixels of at least {SIZE_MULTIPLE**2} ({SIZE_MULTIPLE} x {SIZE_MULTIPLE}), "
            f"got {max_pixels!r}; the official default is {1024 * 1024} (1024 x 1024)."
        )
    sampled = fit_output_size(int(height), int(width), max_pixels)
    if min(sampled) == 0:
        raise InvalidInputError(
            f"output size {width}x{height} with max_pixels {max_pixels} leaves no pixels after rounding to multiples "
            f"of {SIZE_MULTIPLE}; use sides of at least {SIZE_MULTIPLE} pixels."
        )
    return sampled


def image_array(image: ImageLike, name: str = "image") -> np.ndarray:
    """One image as a validated [H, W, C] array (C 1, 3 or 4): uint8 as given, or float32 in 0..1 from a float tensor or
    array given as [H, W, C], [C, H, W] or a batch of one; PIL images as their RGB uint8 pixels."""
    if isinstance(image, PIL.Image.Image):
        if image.width == 0 or image.height == 0:
            raise InvalidInputError(f"{name} is empty ({image.width}x{image.height} pixels).")
        return np.asarray(image.convert("RGB"))
    if isinstance(image, torch.Tensor):
        image = image.detach().to("cpu", torch.float32).numpy()
    if not isinstance(image, np.ndarray):
        raise InvalidInputError(
            f"{name} must be a PIL image, a numpy array or a torch tensor, got {type(image).__name__}."
        )
    if image.ndim == 4 and image.shape[0] == 1:
        image = image[0]
    if image.ndim == 3 and image.shape[0] in (1, 3, 4) and image.shape[-1] not in (1, 3, 4):
        image = image.transpose(1, 2, 0)  # [C, H, W] -> [H, W, C]
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
        raise InvalidInputError(
            f"{name} has shape {tuple(image.shape)}; expected one image as [H, W, 3] (ComfyUI IMAGE row) or [3, H, W]."
        )
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise InvalidInputError(f"{name} is empty (shape {tuple(image.shape)}).")
    if image.dtype != np.uint8 and not np.isfinite(image).all():
        raise InvalidInputError(f"{name} contains NaN or infinite values; check the node that produced it.")
    return image


def to_pil(image: ImageLike, name: str = "image") -> PIL.Image.Image:
    """An RGB PIL image from PIL, a uint8 array [H, W, C], or a float tensor/array in 0..1 (see `image_array`)."""
    image = image_array(image, name)
    if image.dtype != np.uint8:
        image = (np.clip(image, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    mode = {1: "L", 3: "RGB", 4: "RGBA"}[image.shape[-1]]
    return PIL.Image.fromarray(image[..., 0] if mode == "L" else image, mode).convert("RGB")


def preprocess_reference(
    image: ImageLike, max_pixels: int, max_side_length: int, name: str = "image"
) -> torch.Tensor:
    """A reference image as the VAE takes it: LANCZOS-resized to multiples of 16, [1, 3, h, w] in [-1, 1]."""
    pil = to_pil(image, name)
    height, width = fit_reference_size(pil.height, pil.width, max_pixels, max_side_length)
    if height == 0 or width == 0:
        raise InvalidInputError(
            f"{name} ({pil.width}x{pil.height}) is too small: with max_pixels {max_pixels} and max side "
            f"{max_side_length} it rounds to {width}x{height}. Use images of at least {SIZE_MULTIPLE} pixels a side."
        )
    pixels = np.asarray(pil.resize((width, height), resample=PIL.Image.LANCZOS), dtype=np.float32) / 255.0
    return torch.from_numpy(pixels).permute(2, 0, 1)[None] * 2.0 - 1.0


def postprocess(decoded: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """VAE output in [-1, 1] -> [0, 1], bilinearly resized to the requested (height, width) as the official does."""
    resized = F.interpolate(decoded.float(), size=size, mode="bilinear")
    return (resized / 2 + 0.5).clamp(0, 1)
