"""One micro-batch from its items: cached frozen features plus this step's random draws (times, noise, dropout).

Every sample draws from its own generator seeded by (run seed, micro-step, position in the global batch), so the
draws do not depend on how the global batch is split over processes, and a resumed run draws what an uninterrupted
one would have.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Sequence

import torch

from ..condition import ReferenceImage
from ..packing import pad_sequences
from .config import TrainingConfig
from .data import TrainingItem
from .features import FrozenFeatures
from .objective import interpolate, training_timesteps


@dataclass
class Batch:
    """Transformer inputs and velocity targets of a micro-batch on one process."""

    noisy: list[torch.Tensor]
    timestep: torch.Tensor
    targets: list[torch.Tensor]
    text: torch.Tensor
    text_mask: torch.Tensor
    references: list[list[ReferenceImage]]


def sample_generator(seed: int, micro_step: int, position: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + micro_step) * 4099 + position)


def _randn_like(tensor: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return torch.randn(tensor.shape, generator=generator)


def assemble_batch(
    items: Sequence[TrainingItem],
    positions: Sequence[int],
    micro_step: int,
    features: FrozenFeatures,
    config: TrainingConfig,
    device: torch.device | str = "cpu",
) -> Batch:
    """The batch of `items`, which sit at `positions` of micro-step `micro_step`'s global batch, on `device` (drawn
    on the CPU, so the draws do not depend on the device)."""
    data = config.data
    sampled = data.latent_sampling == "sample"
    noisy, texts, references, normals, tokens = [], [], [], [], []
    for item, position in zip(items, positions):
        generator = sample_generator(config.train.seed, micro_step, position)
        drop_prompt, drop_condition = torch.rand(2, generator=generator).tolist()
        normals.append(torch.randn(1, generator=generator))
        output = features.output(item)
        data_latent = output.draw(_randn_like(output.mean, generator) if sampled else None)
        noise = _randn_like(data_latent, generator)
        texts.append(features.prompt("" if drop_prompt < data.prompt_dropout else item.instruction))
        refs = []
        if drop_condition >= data.condition_dropout:
            for posterior in features.references(item):
                refs.append(posterior.as_reference(posterior.draw(_randn_like(posterior.mean, generator) if sampled else None)))
        references.append(refs)
        noisy.append((data_latent, noise))
        tokens.append((data_latent.shape[1] // 2) * (data_latent.shape[2] // 2))
    timestep = training_timesteps(torch.cat(normals), tokens, config.timesteps)
    pairs = [interpolate(x1, x0, t) for (x1, x0), t in zip(noisy, timestep)]
    text, mask = pad_sequences(texts)
    if mask is None:
        mask = torch.ones(text.shape[:2], dtype=torch.bool)
    return Batch(
        noisy=[x.to(device) for x, _ in pairs],
        timestep=timestep.to(device),
        targets=[y.to(device) for _, y in pairs],
        text=text.to(device),
        text_mask=mask.to(device, torch.int64),
        references=[[dataclasses.replace(ref, latent=ref.latent.to(device)) for ref in refs] for refs in references],
    )
