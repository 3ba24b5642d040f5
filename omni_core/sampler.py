"""Samplers as pure functions over a velocity callable, in the shape of k-diffusion's `sample_euler`.

`model(x, t, step)` returns the velocity v = data - noise at time t (0 = noise, 1 = data); guidance and batching
live in that callable (see `guidance.py`), so the loop stays one line of math. `callback` receives a dict
(`x`, `i`, `t`, `v`, `denoised` = the data the velocity points at, for previews) after every step; an exception
raised there stops sampling at once.
"""

from __future__ import annotations

from typing import Callable

import torch

Velocity = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]


@torch.no_grad()
def sample_euler(
    model: Velocity,
    x: torch.Tensor,
    timesteps: torch.Tensor,
    callback: Callable[[dict], None] | None = None,
) -> torch.Tensor:
    """Euler integration of the flow ODE: x <- x + (t_next - t) v, accumulated in float32 like diffusers' step."""
    for i in range(len(timesteps) - 1):
        t, t_next = timesteps[i], timesteps[i + 1]
        v = model(x, t, i)
        if callback is not None:
            denoised = x.float() + (1 - t) * v
        x = (x.float() + (t_next - t) * v).to(v.dtype)
        if callback is not None:
            callback({"x": x, "i": i, "t": t, "v": v, "denoised": denoised})
    return x
