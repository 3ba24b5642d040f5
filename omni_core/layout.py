"""Where each token of a sample sits in the joint sequence [text | reference 1 .. N | noise], with its Omni-RoPE ids."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .rope import grid_positions, text_positions


@dataclass(frozen=True)
class TokenGrid:
    """An image's token grid, the scale that maps it back onto its full-size grid (compact references), and the
    row-major indices of the tokens that take part (None: all; a pruned reference, or the masked region of a
    repainted image)."""

    height: int
    width: int
    position_scale: float = 1.0
    keep_index: tuple[int, ...] | None = None

    @property
    def num_tokens(self) -> int:
        return self.height * self.width if self.keep_index is None else len(self.keep_index)

    def positions(self, sequence_id: float, device: torch.device | str = "cpu") -> torch.Tensor:
        ids = grid_positions(self.height, self.width, sequence_id, self.position_scale, device)
        return ids if self.keep_index is None else ids[list(self.keep_index)]

    @property
    def sequence_extent(self) -> int:
        """How far the image advances the sequence id: the longer side of the grid it stands for at full size."""
        return round(max(self.height, self.width) * self.position_scale)


@dataclass(frozen=True)
class SampleLayout:
    """One sample's token counts and position ids: text, then each reference image, then the noise image.

    Sequence ids follow the official rule: text token k has id k; the first image starts at the text length and
    every image advances the id by its longer side; the noise image takes the final id, so all images share
    row/column ids and differ only in sequence id.
    """

    text_len: int
    references: tuple[TokenGrid, ...]
    noise: TokenGrid

    @property
    def reference_lens(self) -> list[int]:
        return [ref.num_tokens for ref in self.references]

    @property
    def reference_len(self) -> int:
        return sum(self.reference_lens)

    @property
    def noise_len(self) -> int:
        return self.noise.num_tokens

    @property
    def seq_len(self) -> int:
        return self.text_len + self.reference_len + self.noise_len

    def reference_positions(self, device: torch.device | str = "cpu") -> list[torch.Tensor]:
        shift = self.text_len
        positions = []
        for ref in self.references:
            positions.append(ref.positions(shift, device))
            shift += ref.sequence_extent
        return positions

    def noise_positions(self, device: torch.device | str = "cpu") -> torch.Tensor:
        shift = self.text_len + sum(ref.sequence_extent for ref in self.references)
        return self.noise.positions(shift, device)

    def text_positions(self, device: torch.device | str = "cpu") -> torch.Tensor:
        return text_positions(self.text_len, device)
