"""The official flow-matching objective: x_t = t x1 + (1 - t) x0 with x0 noise and x1 data, velocity target x1 - x0,
OmniGen2's training times (logit-normal, shifted by the image's token count) and a squared error summed over latent
elements and divided by the global batch's element count (the official normalisation: big images weigh more)."""

from __future__ import annotations

import math
from typing import Sequence

import torch

from .config import TimestepConfig

# The official `time_shift` v1: mu grows linearly from 0.5 at 256 tokens to 1.15 at 4096 tokens.
SHIFT_TOKENS = (256, 4096)
SHIFT_MU = (0.5, 1.15)


def shift_mu(tokens: int) -> float:
    """mu of the dynamic time shift for an image of `tokens` patches ((h // 2) * (w // 2) latent patches)."""
    (x1, x2), (y1, y2) = SHIFT_TOKENS, SHIFT_MU
    return y1 + (y2 - y1) * (tokens - x1) / (x2 - x1)


def training_timesteps(normal: torch.Tensor, token_counts: Sequence[int], config: TimestepConfig) -> torch.Tensor:
    """t in [0, 1] (0 = noise) per sample from standard normal draws `normal` [B]: sigmoid(mean + std * normal),
    then moved towards noise for larger images: with s = 1 - t, s <- e^mu / (e^mu + 1/s - 1). Float32."""
    t = torch.sigmoid(config.logit_mean + config.logit_std * normal.double())
    if config.dynamic_shift:
        mu = torch.tensor([math.exp(shift_mu(n)) for n in token_counts], dtype=torch.float64)
        s = 1.0 - t
        t = 1.0 - mu / (mu + (1.0 / s - 1.0))
    return t.float()


def interpolate(data: torch.Tensor, noise: torch.Tensor, t: float | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_t, velocity target) = (t x1 + (1 - t) x0, x1 - x0) for one latent."""
    return t * data + (1.0 - t) * noise, data - noise


def squared_error_sum(predictions: Sequence[torch.Tensor], targets: Sequence[torch.Tensor]) -> torch.Tensor:
    """Sum of squared errors over every element of every sample, in float32."""
    return sum(((p.float() - y.float()) ** 2).sum() for p, y in zip(predictions, targets))
