"""Step-level caching: on some steps a guidance pass skips the joint transformer blocks and estimates their output,
as the official OmniGen2 offers it (one state per guidance pass, like its pipeline):

- TeaCache: accumulates the rescaled relative L1 change of the first joint block's modulated input since the pass's
  previous step; while it stays under `threshold`, the step adds the blocks' last residual (output - input) to its
  input. The first and last steps always compute.
- TaylorSeer: the first `first_enhance` calls compute, then one in every `interval`; finite differences up to `order`
  of the last joint block's output (only it, at the noise tokens the output layers read) predict the calls between.

TeaCache's polynomial belongs to the model it was fitted on: another model (fine-tuned, smaller, random) relates
input and output change on another scale, so the official threshold skips nothing or too much there.
`TeaCacheCalibration` records both changes while computing every step, and `fit()` gives that model's polynomial;
`python -m omni_core.training.calibrate_teacache` stores it as the config's `teacache_coefficients`.

With the reference-feature cache (reuse every n steps, or the independent condition) only [text | noise] runs through
the joint blocks every step, and TeaCache's measure is taken over those tokens. One `StepCacheRun` lives for one
sampling run and is cleared in a `finally`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Union

import numpy as np
import torch

from .config import is_polynomial
from .errors import InvalidInputError

# The official rescale polynomial (highest power first), fitted to the released 3B model's outputs.
OFFICIAL_TEACACHE_COEFFICIENTS = (-5.48259225, 11.48772289, -4.47407401, 2.47730926, -0.03316487)


def _check_whole(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidInputError(f"{name} must be a whole number >= {minimum}, got {value!r}.")


@dataclass(frozen=True)
class TeaCache:
    """TeaCache options. threshold: the accumulated rescaled change below which a step is skipped (official default
    0.05; higher skips more); coefficients: the rescale polynomial, highest power first; None (default) takes the
    sampled model's own (its config's `teacache_coefficients`, else the official polynomial)."""

    threshold: float = 0.05
    coefficients: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, (int, float)) or not self.threshold >= 0:
            raise InvalidInputError(f"TeaCache threshold must be a number >= 0, got {self.threshold!r}.")
        if self.coefficients is not None:
            if not is_polynomial(self.coefficients):
                raise InvalidInputError(
                    f"TeaCache coefficients must be None or a non-empty sequence of numbers, got {self.coefficients!r}."
                )
            object.__setattr__(self, "coefficients", tuple(self.coefficients))

    def new_state(self, steps: int) -> TeaCacheState:
        return TeaCacheState(self, steps)


@dataclass(frozen=True)
class TaylorSeer:
    """TaylorSeer options (official defaults): order of the Taylor series (its `max_order`), interval (one computed
    call in every `interval` after the warm-up, its `fresh_threshold`) and first_enhance (calls always computed)."""

    order: int = 4
    interval: int = 3
    first_enhance: int = 5

    def __post_init__(self) -> None:
        _check_whole("TaylorSeer order", self.order, 0)
        _check_whole("TaylorSeer interval", self.interval, 1)
        _check_whole("TaylorSeer first_enhance", self.first_enhance, 1)

    def new_state(self, steps: int) -> TaylorSeerState:
        return TaylorSeerState(self)


@dataclass
class TeaCacheCalibration:
    """Sampled with, every step computes (the output is the uncached one) while each pass's consecutive computed
    steps add (relative L1 of TeaCache's measure, relative L1 of the last joint block's output at the noise tokens)
    to `pairs`. Runs on several prompts and seeds accumulate; `fit()` then gives that model's polynomial."""

    pairs: list[tuple[float, float]] = field(default_factory=list)

    def new_state(self, steps: int) -> TeaCacheCalibrationState:
        return TeaCacheCalibrationState(self.pairs)

    def fit(self, degree: int = 4) -> tuple[float, ...]:
        """Least-squares polynomial from input change to output change, highest power first (TeaCache's layout)."""
        _check_whole("TeaCache calibration degree", degree, 1)
        if len(self.pairs) <= degree:
            raise InvalidInputError(
                f"TeaCache calibration has {len(self.pairs)} step pairs, a degree-{degree} fit needs more than {degree}: "
                "sample more steps or prompts with it first."
            )
        x, y = np.array(self.pairs, dtype=np.float64).T
        return tuple(float(c) for c in np.polyfit(x, y, degree))


StepCache = Union[TeaCache, TaylorSeer, TeaCacheCalibration]
STEP_CACHE_CHOICES = ("none", "teacache", "taylorseer")
STEP_CACHE_TUNING = ("teacache_threshold", "taylorseer_order", "taylorseer_interval")  # step_cache_by_name's keywords


def step_cache_by_name(
    choice: str,
    teacache_threshold: float = TeaCache.threshold,
    taylorseer_order: int = TaylorSeer.order,
    taylorseer_interval: int = TaylorSeer.interval,
) -> StepCache | None:
    """The step cache a node widget or command-line option names (None: every step computes)."""
    if choice not in STEP_CACHE_CHOICES:
        raise InvalidInputError(f"step_cache={choice!r}: choose one of {', '.join(STEP_CACHE_CHOICES)}.")
    if choice == "teacache":
        return TeaCache(threshold=teacache_threshold)
    if choice == "taylorseer":
        return TaylorSeer(order=taylorseer_order, interval=taylorseer_interval)
    return None


def relative_l1(current: torch.Tensor, previous: torch.Tensor) -> float:
    """mean |current - previous| / mean |previous|, in the tensors' dtype like the official code."""
    return ((current - previous).abs().mean() / previous.abs().mean()).item()


def polynomial(coefficients: tuple[float, ...], x: float) -> float:
    """Horner's rule in float64, highest power first (numpy.poly1d's order of operations)."""
    value = 0.0
    for c in coefficients:
        value = value * x + c
    return value


class TeaCacheState:
    """One guidance pass's TeaCache state: the previous modulated input, the accumulated change, the last residual."""

    def __init__(self, options: TeaCache, steps: int) -> None:
        self.options, self.steps = options, steps
        self.previous: torch.Tensor | None = None
        self.accumulated = 0.0
        self.residual: torch.Tensor | None = None

    def plan(self, step: int, modulated: torch.Tensor | None) -> bool:
        """Whether this step computes the joint blocks, from the first block's modulated input of this pass."""
        previous, self.previous = self.previous, modulated
        # a pass that first runs after step 0 (cfg_range starting later) has nothing to reuse yet: it computes
        if step in (0, self.steps - 1) or previous is None or self.residual is None:
            self.accumulated = 0.0
            return True
        self.accumulated += polynomial(self.options.coefficients, relative_l1(modulated, previous))
        if self.accumulated < self.options.threshold:
            return False
        self.accumulated = 0.0
        return True

    def record(self, noise: torch.Tensor, hidden: torch.Tensor) -> None:
        self.residual = hidden - noise

    def estimate(self, noise: torch.Tensor | None) -> torch.Tensor:
        return noise + self.residual


class TaylorSeerState:
    """One guidance pass's TaylorSeer state. Counts the pass's own calls (like the official per-pass `current`), so a
    pass that runs on fewer steps (cfg_range) warms up and keeps its interval on the calls it makes."""

    def __init__(self, options: TaylorSeer) -> None:
        self.options = options
        self.call = -1
        self.since_computed = 0
        self.computed_calls = [0]  # the official activated_steps start as [0]; call 0 appends itself
        self.factors: list[torch.Tensor] = []  # the feature, then its finite differences of order 1, 2, ...

    def plan(self, step: int, modulated: torch.Tensor | None = None) -> bool:
        self.call += 1
        if self.call < self.options.first_enhance or self.since_computed == self.options.interval - 1:
            self.since_computed = 0
            self.computed_calls.append(self.call)
            return True
        self.since_computed += 1
        return False

    def record(self, noise: torch.Tensor | None, hidden: torch.Tensor) -> None:
        """Refit the differences to the computed output (during warm-up only the last but one call starts them)."""
        distance = self.computed_calls[-1] - self.computed_calls[-2]
        factors = [hidden]
        if self.call > self.options.first_enhance - 2:
            for previous in self.factors[: self.options.order]:
                factors.append((factors[-1] - previous) / distance)
        self.factors = factors

    def estimate(self, noise: torch.Tensor | None) -> torch.Tensor:
        elapsed = self.call - self.computed_calls[-1]
        return sum((1 / math.factorial(i)) * factor * (elapsed**i) for i, factor in enumerate(self.factors))


class TeaCacheCalibrationState:
    """One guidance pass's calibration record: its previous measure and output; computes every step."""

    def __init__(self, pairs: list[tuple[float, float]]) -> None:
        self.pairs = pairs
        self.previous_input: torch.Tensor | None = None
        self.input_change: float | None = None
        self.previous_output: torch.Tensor | None = None

    def plan(self, step: int, modulated: torch.Tensor | None) -> bool:
        if self.previous_input is not None:
            self.input_change = relative_l1(modulated, self.previous_input)
        self.previous_input = modulated
        return True

    def record(self, noise: torch.Tensor | None, hidden: torch.Tensor) -> None:
        if self.previous_output is not None and self.input_change is not None:
            self.pairs.append((self.input_change, relative_l1(hidden, self.previous_output)))
        self.previous_output = hidden


class StepCacheRun:
    """The step cache of one sampling run: per guidance pass its state (made on first use) and which steps it
    computed or skipped."""

    def __init__(self, options: StepCache, steps: int, teacache_coefficients: tuple[float, ...] | None = None) -> None:
        """teacache_coefficients: the sampled model's own polynomial (its config's), for a TeaCache without one."""
        if not isinstance(options, (TeaCache, TaylorSeer, TeaCacheCalibration)):
            raise InvalidInputError(
                "step_cache must be None, omni_core.step_cache.TeaCache(...), TaylorSeer(...) or TeaCacheCalibration(), "
                f"got {options!r}."
            )
        if isinstance(options, TeaCache) and options.coefficients is None:
            options = replace(options, coefficients=teacache_coefficients or OFFICIAL_TEACACHE_COEFFICIENTS)
        self.options, self.steps = options, steps
        self.states: dict[str, TeaCacheState | TaylorSeerState | TeaCacheCalibrationState] = {}
        self.computed: dict[str, list[int]] = {}
        self.skipped: dict[str, list[int]] = {}

    @property
    def measures_input(self) -> bool:
        """Whether `plan` needs the first joint block's modulated input (TeaCache) or decides from counts alone."""
        return isinstance(self.options, (TeaCache, TeaCacheCalibration))

    def plan(self, name: str, step: int, modulated: torch.Tensor | None = None) -> bool:
        if name not in self.states:
            self.states[name] = self.options.new_state(self.steps)
        compute = self.states[name].plan(step, modulated)
        (self.computed if compute else self.skipped).setdefault(name, []).append(step)
        return compute

    def record(self, name: str, noise: torch.Tensor | None, hidden: torch.Tensor) -> None:
        """A computed step: the pass's refined noise tokens (the blocks' input) and the last block's output there."""
        self.states[name].record(noise, hidden)

    def estimate(self, name: str, noise: torch.Tensor | None) -> torch.Tensor:
        """A skipped step: the last block's output at the noise tokens (TeaCache adds its residual to `noise`)."""
        return self.states[name].estimate(noise)

    def clear(self) -> None:
        self.states.clear()

    def stats(self) -> dict:
        count = lambda steps: sum(len(v) for v in steps.values())
        return {"step_cache": type(self.options).__name__, "pass_steps_computed": count(self.computed),
                "pass_steps_skipped": count(self.skipped),
                "computed_steps": {name: list(steps) for name, steps in self.computed.items()}}
