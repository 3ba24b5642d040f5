"""The transformer's training forward, as one module that DDP/FSDP can wrap (their hooks run on its `forward`).

Two modes, as inference has them:
- joint (the official training): references and noise in one joint sequence, every token attending to all;
- independent condition (OminiControl2's asymmetric mask): the references run alone at the clean timestep through
  the condition branch, and text and noise tokens attend to their keys/values as well as to each other. This is
  the computation inference does with `independent_condition` (the same stages of `OmniGen2Transformer`), here with
  autograd and a batch of samples that each have their own images.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..condition import ReferenceImage
from ..packing import pad_sequences
from ..reference_cache import KVReuse, LayerKV, condition_features, place_condition
from ..transformer import OmniGen2Transformer


def condition_hook(transformer: OmniGen2Transformer, references, layouts, condition_timestep: float) -> KVReuse | None:
    """The hook that gives every sample its images' condition keys/values in every joint layer, turned to the sequence
    ids they take after that sample's text (right-padded, masked); None when no sample has images."""
    features = condition_features(transformer, references, condition_timestep)
    if not any(f.grids for f in features):
        return None
    placed = [place_condition(transformer, f, layout.text_len) if f.grids else None for f, layout in zip(features, layouts)]
    template = next(p for p in placed if p is not None)
    layers = []
    for index, kv in enumerate(template):
        empty = kv.key.new_zeros(kv.key.shape[1], 0, kv.key.shape[3])
        keys = [p[index].key[0].transpose(0, 1) if p else empty.transpose(0, 1) for p in placed]  # [R_i, H_kv, D]
        values = [p[index].value[0].transpose(0, 1) if p else empty.transpose(0, 1) for p in placed]
        key, mask = pad_sequences(keys)
        value, _ = pad_sequences(values)
        layers.append(LayerKV(key.transpose(1, 2), value.transpose(1, 2)))
    return KVReuse(layers, mask)


class VelocityModel(nn.Module):
    """Predicts the velocity of noisy latents under text and reference conditions, differentiably.

    The transformer is a child named `transformer`, so parameter names are the checkpoint's keys behind that prefix.
    """

    def __init__(self, transformer: OmniGen2Transformer, independent_condition: bool = False, condition_timestep: float = 1.0) -> None:
        super().__init__()
        self.transformer = transformer
        self.independent_condition = independent_condition
        self.condition_timestep = condition_timestep

    def forward(
        self,
        noisy: Sequence[torch.Tensor],
        timestep: torch.Tensor,
        text: torch.Tensor,
        text_mask: torch.Tensor,
        references: Sequence[Sequence[ReferenceImage]],
    ) -> list[torch.Tensor]:
        model, latents = self.transformer, list(noisy)
        references = [list(refs) for refs in references]
        if not self.independent_condition:
            return model(latents, timestep, text, text_mask, references)
        layouts, planned = model.plan(latents, text, text_mask, references, None)
        temb = model.embed_time(timestep.to(latents[0].device).expand(len(latents)), latents[0].dtype)
        text_tokens = model.refine_text(text, text_mask)
        noise = model.refine_noise(latents, [layout.noise for layout in layouts], temb)
        hook = condition_hook(model, planned, layouts, self.condition_timestep)
        return model.joint(text_tokens, None, noise, layouts, temb, hook)
