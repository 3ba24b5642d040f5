"""Flow-matching time grids: pure functions of the step count and the image size.

t runs from 0 (pure noise) to 1 (data). OmniGen2 shifts the grid towards the noise end for larger images
("dynamic time shift"): with m = sqrt(latent tokens) / 40, t -> t / (m - m t + t).
"""

from __future__ import annotations

import math

import torch

from .errors import InvalidInputError


def time_shift_dynamic(t: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """OmniGen2's resolution-dependent shift; m = 1 at 320 x 320 pixels (1600 latent pixels), identity there."""
    m = math.sqrt(num_tokens) / 40.0
    return t / (m - m * t + t)


def flow_timesteps(steps: int, num_tokens: int | None = None, dynamic_time_shift: bool = True) -> torch.Tensor:
    """steps + 1 float32 times: linspace(0, 1, steps + 1)[:-1], shifted, then a final 1 appended.

    num_tokens is the latent height * width (the official scheduler's count, before patching).
    """
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise InvalidInputError(f"steps must be a whole number >= 1, got {steps!r}.")
    t = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float32)[:-1]
    if dynamic_time_shift and num_tokens is not None:
        t = time_shift_dynamic(t.double(), num_tokens).float()
    return torch.cat([t, torch.ones(1)])
