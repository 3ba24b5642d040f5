"""How to run OmniGen2: every option of a sampling run in one frozen object, each with its default, help and check.

`sample`, `repaint`, `generate`, `chat` and `reflect` take a `SamplingOptions` (or its fields as keywords, which
make one) and hand it on unchanged. The CLI's flags are made from its fields and the nodes' widgets map onto them,
so a new option is one new field here: it is then checked, documented and reachable everywhere, and a field no
entry point can set fails their tests.
"""

from __future__ import annotations

import dataclasses
import numbers
from dataclasses import dataclass
from typing import Any

from .compact import check_compaction
from .errors import InvalidInputError
from .step_cache import StepCache

DEFAULT_MAX_PIXELS = 1024 * 1024  # the official pipeline's reference and output pixel budget
DEFAULT_MAX_SIDE = 1024  # the official longest side of a reference image


def _option(default: Any, help: str) -> Any:
    return dataclasses.field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class SamplingOptions:
    """One sampling run's options. Fields that shape how images are encoded (max_pixels, max_input_image_side_length,
    condition_scale, prune_ratio) apply where an entry point encodes them: generate, chat, reflect and repaint's
    canvas; `sample` takes a condition already encoded."""

    width: int | None = _option(None, "output width; default: one reference image's size, else the model's size")
    height: int | None = _option(None, "output height; default as width")
    steps: int = _option(50, "sampling steps (official: 50)")
    text_guidance_scale: float | None = _option(
        None, "how strongly the prompt steers (1 = off); default: the model's (official 5.0, bundled model 2.5)")
    image_guidance_scale: float = _option(2.0, "how closely the result follows the reference images (1 = off)")
    cfg_range: tuple[float, float] = _option((0.0, 1.0), "guidance applies from START to END, fractions of the steps")
    seed: int = _option(0, "noise seed; image i of a batch uses seed + i")
    num_images: int = _option(1, "images per run")
    align_res: bool | None = _option(
        None, "one reference image sets the output size; default: when no width or height is given")
    max_pixels: int | None = _option(
        None, f"reference images and the sampled size fit this many pixels; default {DEFAULT_MAX_PIXELS} when "
              "encoding, the condition's when sampling")
    max_input_image_side_length: int = _option(DEFAULT_MAX_SIDE, "longest side of a reference image")
    condition_scale: float = _option(1.0, "encode reference tokens at this fraction of their size (1 = off)")
    prune_ratio: float = _option(0.0, "drop this fraction of the least informative reference tokens (0 = off)")
    cache_per_n_steps: int | None = _option(
        None, "recompute reference features every n steps and reuse them in between (n > steps: once); default off")
    independent_condition: bool | None = _option(
        None, "references attend only to themselves at condition_timestep (exact to reuse); default: what the "
              "model was trained with")
    condition_timestep: float = _option(1.0, "the timestep of the independent condition's branch (1 = clean)")
    step_cache: StepCache | None = _option(None, "TeaCache(...) or TaylorSeer(...): skip and estimate steps")

    def __post_init__(self) -> None:
        wholes = {"steps": 1, "num_images": 1, "seed": 0, "max_input_image_side_length": 16}
        optional_wholes = {"width": 1, "height": 1, "max_pixels": 256, "cache_per_n_steps": 1}
        for name, least in {**wholes, **optional_wholes}.items():
            _check_whole(name, getattr(self, name), least, optional=name in optional_wholes)
        for name in ("text_guidance_scale", "image_guidance_scale"):
            value = getattr(self, name)
            if value is not None and (not _is_number(value) or value != value or value < 0):
                raise InvalidInputError(f"{name} must be a number >= 0 (1 disables it), got {value!r}.")
        cfg_range = tuple(self.cfg_range)
        if len(cfg_range) != 2 or not all(map(_is_number, cfg_range)) or not 0.0 <= cfg_range[0] <= cfg_range[1] <= 1.0:
            raise InvalidInputError(f"cfg_range must be (start, end) with 0 <= start <= end <= 1, got {cfg_range}.")
        object.__setattr__(self, "cfg_range", (float(cfg_range[0]), float(cfg_range[1])))
        check_compaction(self.condition_scale, self.prune_ratio)
        if not _is_number(self.condition_timestep) or not 0.0 <= self.condition_timestep <= 1.0:
            raise InvalidInputError(f"condition_timestep must be in [0, 1] (1 = clean), got {self.condition_timestep!r}.")

    def max_pixels_or(self, default: int) -> int:
        """max_pixels, or `default` where none is given: the condition's when sampling, `DEFAULT_MAX_PIXELS` when an
        entry point encodes reference images (`encoding_max_pixels`)."""
        return default if self.max_pixels is None else self.max_pixels

    @property
    def encoding_max_pixels(self) -> int:
        return self.max_pixels_or(DEFAULT_MAX_PIXELS)

    @classmethod
    def of(cls, options: SamplingOptions | None = None, **changes: Any) -> SamplingOptions:
        """`options` (default: all defaults) with `changes` applied; a name that is no option fails, naming them all."""
        if options is not None and not isinstance(options, cls):
            raise InvalidInputError(f"options must be a SamplingOptions, got {type(options).__name__}.")
        unknown = sorted(set(changes) - set(OPTION_NAMES))
        if unknown:
            raise InvalidInputError(f"unknown sampling options {unknown}; the options are {list(OPTION_NAMES)}.")
        return dataclasses.replace(options or cls(), **changes)


OPTION_NAMES = tuple(f.name for f in dataclasses.fields(SamplingOptions))


def options_among(settings: dict[str, Any]) -> SamplingOptions:
    """The options among other settings (a recorded case's prompt, images, ... besides its options)."""
    return SamplingOptions.of(**{name: value for name, value in settings.items() if name in OPTION_NAMES})


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_whole(name: str, value: Any, least: int, optional: bool) -> None:
    if optional and value is None:
        return
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < least:
        default = " or None (the default)" if optional else ""
        raise InvalidInputError(f"{name} must be a whole number >= {least}{default}, got {value!r}.")
