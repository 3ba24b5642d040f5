"""Node inputs checked and converted for the engine: IMAGE and MASK sockets, output sizes, reference-image limits,
guidance and cache options. Bad input fails here with an error naming the input and the fix."""

from __future__ import annotations

import inspect
from typing import Any, Callable

import torch

from omni_core.condition import check_reference_count
from omni_core.errors import InvalidInputError
from omni_core.step_cache import STEP_CACHE_CHOICES, step_cache_by_name


def collect_images(**inputs: Any) -> list[torch.Tensor] | None:
    """Reference images from IMAGE sockets, in socket order, every row of a batch counting as one image.

    Each IMAGE is float [B, H, W, 3] in 0..1; the engine takes its [H, W, 3] rows.
    """
    images: list[torch.Tensor] = []
    for name, value in inputs.items():
        if value is None:
            continue
        if not isinstance(value, torch.Tensor):
            got = f"a dict with keys {sorted(value)}" if isinstance(value, dict) else type(value).__name__
            raise InvalidInputError(f"'{name}' must be an IMAGE (float tensor [B, H, W, 3]); got {got}.")
        if value.ndim == 3:
            value = value.unsqueeze(0)
        if value.ndim != 4 or value.shape[-1] != 3 or not value.is_floating_point():
            raise InvalidInputError(
                f"'{name}' must be an IMAGE (float tensor [B, H, W, 3]); got {value.dtype} tensor of shape "
                f"{tuple(value.shape)}."
            )
        _, height, width, _ = value.shape
        if height < 1 or width < 1:
            raise InvalidInputError(f"'{name}' is empty: {width}x{height} pixels. Give an image of at least 16x16.")
        images.extend(value.unbind(0))
    given = ", ".join(f"{name}: {len(value) if value.ndim == 4 else 1}" for name, value in inputs.items() if value is not None)
    check_reference_count(len(images), detail=f" ({given}; batches count image by image)")
    return images or None


def single_image(image: Any, name: str) -> torch.Tensor:
    """One picture [H, W, 3] from an IMAGE socket that must hold exactly one."""
    images = collect_images(**{name: image}) or []
    if len(images) != 1:
        raise InvalidInputError(f"'{name}' holds a batch of {len(images)} images; give one (e.g. through Image From Batch).")
    return images[0]


def single_mask(mask: Any, name: str) -> torch.Tensor:
    """One mask [H, W] from a MASK socket ([H, W] or [1, H, W]); values are checked by the engine."""
    if not isinstance(mask, torch.Tensor) or mask.ndim not in (2, 3):
        got = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise InvalidInputError(f"'{name}' must be a MASK (float tensor [B, H, W]); got {got}.")
    if mask.ndim == 3 and mask.shape[0] != 1:
        raise InvalidInputError(f"'{name}' holds a batch of {mask.shape[0]} masks; give one.")
    return mask.reshape(mask.shape[-2:])


def output_size(width: int, height: int) -> dict[str, int | None]:
    """Width and height for the engine: 0 means automatic (the official pipeline's rule), for each side."""
    for name, value in (("width", width), ("height", height)):
        if value < 0 or (value and value % 16):
            raise InvalidInputError(f"{name}={value}: use 0 (automatic) or a positive multiple of 16.")
    return {"width": width or None, "height": height or None}


def image_limits(max_pixels: int, max_side: int) -> dict[str, int]:
    """The reference-image size limits, checked: both must leave room for at least one 16 x 16 patch."""
    if max_pixels < 256 or max_side < 16:
        raise InvalidInputError(
            f"max_pixels={max_pixels}, max_input_image_side_length={max_side}: reference images are resized to fit "
            "these, so use at least 256 pixels and a side of 16 (defaults 1048576 and 1024)."
        )
    return {"max_pixels": max_pixels, "max_input_image_side_length": max_side}


def cfg_range(start: float, end: float) -> tuple[float, float]:
    if not 0.0 <= start <= end <= 1.0:
        raise InvalidInputError(f"cfg range {start}..{end}: need 0 <= start <= end <= 1 (fractions of the steps).")
    return (start, end)


def cache_steps(n: int) -> int | None:
    """cache_per_n_steps for the engine: 0 turns reference caching off (every step recomputes, as officially)."""
    if n < 0:
        raise InvalidInputError(f"cache_per_n_steps={n}: use 0 (off) or a positive number of steps.")
    return n or None


REFERENCE_ATTENTION = {"auto": None, "joint": False, "independent": True}  # widget choice -> independent_condition


def independent_condition(choice: str) -> bool | None:
    """The sampler's reference_attention choice as the engine's `independent_condition` (None: the model's own)."""
    if choice not in REFERENCE_ATTENTION:
        raise InvalidInputError(f"reference_attention={choice!r}: choose one of {', '.join(REFERENCE_ATTENTION)}.")
    return REFERENCE_ATTENTION[choice]


# The sampler's step_cache widgets as the engine's `step_cache` option: the engine's own names and conversion.
STEP_CACHES = STEP_CACHE_CHOICES
step_cache = step_cache_by_name


def engine_call(function: Callable[..., Any], *args: Any, **options: Any) -> Any:
    """Call an engine method with the options that are set; None means "the engine's default".

    An option the engine does not take (an older omni_core) but the user set is an error naming it, never ignored.
    """
    options = {k: v for k, v in options.items() if v is not None}
    parameters = inspect.signature(function).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        unknown = sorted(k for k in options if k not in parameters)
        if unknown:
            raise InvalidInputError(
                f"this omni_core version does not support {unknown}; update the pack or leave them at 0 (off)."
            )
    return function(*args, **options)
