"""Omni-RoPE: 3-axis position ids (sequence, row, column) and the rotations they give queries and keys.

Positions are floats so a compact (downscaled) reference can sit between integer grid ids; at integer ids the result
equals the official table lookup. Building ids is kept apart from rotating, as k-diffusion's `axial_rope` does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

ROPE_THETA = 10000.0


def text_positions(length: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Ids of text token k: (k, k, k). Returns [length, 3] float."""
    return torch.arange(length, device=device, dtype=torch.float64)[:, None].expand(length, 3)


def grid_positions(
    height: int,
    width: int,
    sequence_id: float,
    position_scale: float = 1.0,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Ids of an image's tokens in row-major order: (sequence_id, row, col). Returns [height * width, 3] float.

    With `position_scale` s > 1 (a reference encoded s times smaller), token (r, c) gets row r * s + (s - 1) / 2:
    the centre of the s x s block it covers on the full-size grid (OminiControl2's compact tokens).
    """
    offset = (position_scale - 1.0) / 2.0
    rows = torch.arange(height, device=device, dtype=torch.float64) * position_scale + offset
    cols = torch.arange(width, device=device, dtype=torch.float64) * position_scale + offset
    ids = torch.empty(height, width, 3, device=device, dtype=torch.float64)
    ids[..., 0] = sequence_id
    ids[..., 1] = rows[:, None]
    ids[..., 2] = cols[None, :]
    return ids.reshape(height * width, 3)


@dataclass(frozen=True)
class Rotation:
    """cos + i sin of every rotated pair, [B, S, 1, head_dim / 2] complex64, broadcast over heads."""

    cis: torch.Tensor

    def select(self, index: slice | torch.Tensor) -> "Rotation":
        """The rotations of a subset of token positions (dim 1)."""
        return Rotation(self.cis[:, index])


class OmniRoPE(torch.nn.Module):
    """Turns [B, S, 3] position ids into per-token rotations. Holds no weights, so it never appears in checkpoints."""

    def __init__(self, axes_dim: tuple[int, ...], theta: float = ROPE_THETA) -> None:
        super().__init__()
        assert all(d % 2 == 0 for d in axes_dim), f"every RoPE axis needs an even size, got {axes_dim}"
        self.axes_dim = tuple(axes_dim)
        self.theta = theta

    def frequencies(self, device: torch.device) -> list[torch.Tensor]:
        """1 / theta^(2j / d) for each axis, in float64 as the official tables are."""
        return [
            1.0 / (self.theta ** (torch.arange(0, d, 2, dtype=torch.float64, device=device) / d)) for d in self.axes_dim
        ]

    def forward(self, positions: torch.Tensor) -> Rotation:
        """positions [B, S, 3] (any float or int dtype) -> Rotation with cis [B, S, 1, head_dim / 2]."""
        B, S, n_axes = positions.shape
        assert n_axes == len(self.axes_dim), f"positions need {len(self.axes_dim)} axes, got shape {tuple(positions.shape)}"
        # float64 angles where the device has it (MPS does not), like diffusers' FluxPosEmbed
        compute_dtype = torch.float32 if positions.device.type == "mps" else torch.float64
        positions = positions.to(compute_dtype)
        angles = torch.cat(
            [positions[..., axis, None] * freqs.to(compute_dtype) for axis, freqs in enumerate(self.frequencies(positions.device))],
            dim=-1,
        )  # (B, S, head_dim / 2)
        return Rotation(torch.complex(angles.cos().float(), angles.sin().float())[:, :, None, :])


def apply_rotation(x: torch.Tensor, rotation: Rotation, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Rotate adjacent pairs (2i, 2i + 1) of x [B, S, H, head_dim] by the token's angles, in float32; the result in
    `dtype` (default x's).

    As one complex product: a single pass over x (the real form, even * cos - odd * sin and even * sin + odd * cos
    stacked, took 7 passes and ~10x the time on CPU)."""
    pairs = torch.view_as_complex(x.float().contiguous().unflatten(-1, (-1, 2)))  # (B, S, H, head_dim / 2)
    return torch.view_as_real(pairs * rotation.cis).flatten(-2).to(dtype or x.dtype)
