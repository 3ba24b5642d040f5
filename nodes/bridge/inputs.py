"""Node inputs checked and converted for the engine: IMAGE and MASK sockets, and the widgets as the engine's
`SamplingOptions`. Bad input fails here with an error naming the input and the fix."""

from __future__ import annotations

from typing import Any

import torch

from omni_core.condition import check_reference_count
from omni_core.errors import InvalidInputError
from omni_core.options import SamplingOptions
from omni_core.step_cache import STEP_CACHE_TUNING, step_cache_by_name


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


# Widgets that set one option as they are, by the option's name where the widget has another.
RENAMED_WIDGETS = {"text_guidance": "text_guidance_scale", "image_guidance": "image_guidance_scale", "batch_size": "num_images"}
SAME_NAME_WIDGETS = ("seed", "steps", "max_pixels", "max_input_image_side_length", "condition_scale", "prune_ratio")
INDEPENDENT_CONDITION = {"auto": None, "joint": False, "independent": True}  # widget choice -> the engine's option


def sampling_options(widgets: dict[str, Any]) -> SamplingOptions:
    """The engine's options from a node's sampling widgets; an option whose widgets the node does not show keeps its
    default. 0 means automatic for width and height and off for cache_per_n_steps, as the tooltips say."""
    widgets, options = dict(widgets), {}
    for widget, option in {**RENAMED_WIDGETS, **{name: name for name in SAME_NAME_WIDGETS}}.items():
        if widget in widgets:
            options[option] = widgets.pop(widget)
    for side in ("width", "height"):
        if side in widgets:
            options[side] = _automatic_side(side, widgets.pop(side))
    if "cfg_range_start" in widgets:
        options["cfg_range"] = (widgets.pop("cfg_range_start"), widgets.pop("cfg_range_end"))
    if "cache_per_n_steps" in widgets:
        n = widgets.pop("cache_per_n_steps")
        if n < 0:
            raise InvalidInputError(f"cache_per_n_steps={n}: use 0 (off) or a positive number of steps.")
        options["cache_per_n_steps"] = n or None
    if "independent_condition" in widgets:
        choice = widgets.pop("independent_condition")
        if choice not in INDEPENDENT_CONDITION:
            raise InvalidInputError(f"independent_condition={choice!r}: choose one of {', '.join(INDEPENDENT_CONDITION)}.")
        options["independent_condition"] = INDEPENDENT_CONDITION[choice]
    if "step_cache" in widgets:
        tuning = {name: widgets.pop(name) for name in STEP_CACHE_TUNING if name in widgets}
        options["step_cache"] = step_cache_by_name(widgets.pop("step_cache"), **tuning)
    if widgets:
        raise InvalidInputError(f"widgets {sorted(widgets)} set no sampling option; update the pack.")
    return SamplingOptions.of(**options)


def _automatic_side(name: str, value: int) -> int | None:
    """A width or height widget for the engine: 0 means automatic (the official pipeline's rule)."""
    if value < 0 or (value and value % 16):
        raise InvalidInputError(f"{name}={value}: use 0 (automatic) or a positive multiple of 16.")
    return value or None
