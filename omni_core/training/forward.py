"""The transformer's training forward, as one module that DDP/FSDP can wrap (their hooks run on its `forward`)."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..condition import ReferenceImage
from ..transformer import OmniGen2Transformer


class VelocityModel(nn.Module):
    """Predicts the velocity of noisy latents under text and reference conditions, differentiably.

    The transformer is a child named `transformer`, so parameter names are the checkpoint's keys behind that prefix.
    """

    def __init__(self, transformer: OmniGen2Transformer) -> None:
        super().__init__()
        self.transformer = transformer

    def forward(
        self,
        noisy: Sequence[torch.Tensor],
        timestep: torch.Tensor,
        text: torch.Tensor,
        text_mask: torch.Tensor,
        references: Sequence[Sequence[ReferenceImage]],
    ) -> list[torch.Tensor]:
        return self.transformer(list(noisy), timestep, text, text_mask, [list(refs) for refs in references])
