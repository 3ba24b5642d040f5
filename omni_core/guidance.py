"""Text and image guidance: which transformer passes a step needs and how their velocities combine.

The official pipeline runs up to three passes per step: cond (prompt, references), ref (negative prompt,
references) and uncond (negative prompt, no references), combined as
    v = uncond + image_scale (ref - uncond) + text_scale (cond - ref),
or with text guidance only v = uncond + text_scale (cond - uncond). Scales apply only on steps i with
cfg_range[0] <= i / steps <= cfg_range[1]; elsewhere the cond pass alone runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from .condition import TextCondition

COND, REF, UNCOND = "cond", "ref", "uncond"
OFFICIAL_TEXT_GUIDANCE = 5.0  # the official pipeline's default, tuned for the released model


def active_scales(
    step: int, steps: int, text_scale: float, image_scale: float, cfg_range: tuple[float, float]
) -> tuple[float, float]:
    """The (text, image) scales in force at `step`: the given ones inside cfg_range, 1 (no guidance) outside."""
    inside = cfg_range[0] <= step / steps <= cfg_range[1]
    return (text_scale, image_scale) if inside else (1.0, 1.0)


def planned_passes(text_scale: float, image_scale: float) -> tuple[str, ...]:
    """The passes these scales need, in the official order."""
    if text_scale > 1.0 and image_scale > 1.0:
        return (COND, REF, UNCOND)
    if text_scale > 1.0:
        return (COND, UNCOND)
    return (COND,)


def combine_guidance(velocity: dict[str, torch.Tensor], text_scale: float, image_scale: float) -> torch.Tensor:
    """Combine the passes' velocities exactly as the official pipeline does (same operation order)."""
    if REF in velocity:
        uncond = velocity[UNCOND]
        return uncond + image_scale * (velocity[REF] - uncond) + text_scale * (velocity[COND] - velocity[REF])
    if UNCOND in velocity:
        return velocity[UNCOND] + text_scale * (velocity[COND] - velocity[UNCOND])
    return velocity[COND]


@dataclass(frozen=True)
class GuidancePass:
    """One transformer pass: which prompt it reads and whether it sees the reference images."""

    name: str
    text: TextCondition
    with_references: bool


# run(x [N, C, H, W], t (this step's time, a scalar), the passes, step) -> per pass name its velocity [N, C, H, W].
# The runner sees every pass of a step at once, so it can batch them and compute once what they share.
PassRunner = Callable[[torch.Tensor, torch.Tensor, Sequence[GuidancePass], int], dict[str, torch.Tensor]]


class GuidedVelocity:
    """The velocity the sampler integrates: the passes a step needs, run by `run_passes`, then combined."""

    def __init__(
        self,
        run_passes: PassRunner,
        positive: TextCondition,
        negative: TextCondition | None,
        has_references: bool,
        steps: int,
        text_scale: float,
        image_scale: float,
        cfg_range: tuple[float, float],
    ) -> None:
        self.run_passes = run_passes
        self.passes = {
            COND: GuidancePass(COND, positive, has_references),
            REF: GuidancePass(REF, negative or positive, has_references),
            UNCOND: GuidancePass(UNCOND, negative or positive, False),
        }
        self.steps = steps
        self.text_scale = text_scale
        self.image_scale = image_scale if has_references else 1.0  # no references: nothing for image guidance to do
        self.cfg_range = cfg_range

    def __call__(self, x: torch.Tensor, t: torch.Tensor, step: int) -> torch.Tensor:
        text_scale, image_scale = active_scales(step, self.steps, self.text_scale, self.image_scale, self.cfg_range)
        passes = [self.passes[name] for name in planned_passes(text_scale, image_scale)]
        velocity = {name: v.float() for name, v in self.run_passes(x, t, passes, step).items()}
        return combine_guidance(velocity, text_scale, image_scale)


def batchable_groups(passes: Sequence[GuidancePass]) -> list[list[GuidancePass]]:
    """Passes that can share one forward (one batch, no padding added): same text length and same reference set."""
    groups: dict[tuple[int, bool], list[GuidancePass]] = {}
    for p in passes:
        groups.setdefault((p.text.embeds.shape[1], p.with_references), []).append(p)
    return list(groups.values())
