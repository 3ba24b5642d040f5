"""What a LoRA file holds once read, whatever its key convention: per module the low-rank pair and its scale."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch


@dataclass(frozen=True, eq=False)  # tensors: identity, not element-wise, equality
class LoraModule:
    """One adapted Linear: down (A) [rank, in], up (B) [out, rank] and the factor on B @ A (alpha / rank)."""

    down: torch.Tensor
    up: torch.Tensor
    scale: float

    @property
    def rank(self) -> int:
        return self.down.shape[0]

    @property
    def delta_shape(self) -> tuple[int, int]:
        """The shape of the weight this pair adapts: [out, in]."""
        return (self.up.shape[0], self.down.shape[1])

    def delta(self, strength: float = 1.0, device: torch.device | str | None = None) -> torch.Tensor:
        """(strength * scale) * B @ A in float32 on `device`: the change this LoRA makes to the weight."""
        up, down = (t.to(device=device, dtype=torch.float32) for t in (self.up, self.down))
        return (strength * self.scale) * (up @ down)


@dataclass(frozen=True)
class TrainingFacts:
    """How the LoRA was trained, where the file says so (None: not recorded). `independent_condition` becomes the
    default conditioning mode of a model the LoRA is applied to."""

    independent_condition: bool | None = None
    condition_size: int | None = None
    position_scale: float | None = None


@dataclass(frozen=True, eq=False)
class Lora:
    """A LoRA read from `path`: modules keyed by their name in OmniGen2Transformer (e.g. `layers.0.attn.to_q`).

    `key_format` names the convention the file used; `content_hash` (SHA-256 of the file) identifies its weights in
    cache keys; `metadata` is the file's safetensors metadata as stored.
    """

    path: Path
    modules: dict[str, LoraModule]
    key_format: str
    content_hash: str
    training: TrainingFacts = TrainingFacts()
    metadata: dict[str, str] = field(default_factory=dict)
