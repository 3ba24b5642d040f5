"""Reference-feature reuse (OminiControl2): per-layer keys and values of reference tokens, kept across steps.

Reference tokens dominate OmniGen2's cost. On a refresh step they run through every joint layer as usual and each
layer's reference keys/values (after qk-norm and RoPE) are stored; on the steps between, only text and noise tokens
run and each layer attends to the stored keys/values as well. With the asymmetric mask (independent condition) the
reference features depend on nothing but the images, so they are exact to reuse; without it, reuse approximates.

One `ReferenceFeatureCache` lives for one sampling run (like ComfyUI's EasyCacheHolder): entries are keyed by
everything that determines them, `clear()` frees them, and the sampler clears it in a `finally`, so a cancelled run
leaves nothing behind.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class LayerKV:
    """Reference keys and values of one joint layer: [B, H_kv, R, D] each."""

    key: torch.Tensor
    value: torch.Tensor


@dataclass(frozen=True)
class ConditionFeatures:
    """The condition branch's output (independent condition): per joint layer the reference keys/values of every
    image, each computed at sequence id 0; `grids` are the images' token grids, in order. `placed` keeps the keys
    turned to each text length's sequence ids (see `OmniGen2Transformer.place_condition`), so it goes with them."""

    grids: tuple
    layers: list[LayerKV]
    placed: dict[int, list[LayerKV]] = field(default_factory=dict)


class KVStore:
    """Attention hook that records the reference span [start, end) of every layer's keys and values."""

    def __init__(self, start: int, end: int) -> None:
        self.start, self.end = start, end
        self.layers: list[LayerKV] = []

    def __call__(self, key, value, mask):
        self.layers.append(LayerKV(key[:, :, self.start : self.end].clone(), value[:, :, self.start : self.end].clone()))
        return key, value, mask


class KVCapture:
    """Attention hook that records every layer's full keys and values (the condition branch: references alone)."""

    def __init__(self) -> None:
        self.layers: list[LayerKV] = []

    def __call__(self, key, value, mask):
        self.layers.append(LayerKV(key, value))
        return key, value, mask


class KVReuse:
    """Attention hook that appends stored reference keys/values to each layer's own (in layer order)."""

    def __init__(self, layers: list[LayerKV]) -> None:
        self.layers = layers
        self.index = 0

    def __call__(self, key, value, mask):
        cached = self.layers[self.index]
        self.index += 1
        B = key.shape[0]
        key = torch.cat([key, cached.key.expand(B, -1, -1, -1)], dim=2)
        value = torch.cat([value, cached.value.expand(B, -1, -1, -1)], dim=2)
        if mask is not None:
            mask = torch.cat([mask, mask.new_ones(B, cached.key.shape[2])], dim=1)
        return key, value, mask


@dataclass
class ReferenceFeatureCache:
    """The stored reference features of one sampling run.

    every_n_steps: recompute on the first step a pass computes in each window of n steps: steps 0, n, 2n, ... when
    every step computes, the next computed one when a step cache skips those (None: every step, i.e. no reuse).
    """

    every_n_steps: int | None
    metadata: tuple = ()
    entries: dict[tuple, list[LayerKV] | ConditionFeatures] = field(default_factory=dict)
    refreshed_at: dict[tuple, int] = field(default_factory=dict)

    def check_metadata(self, *metadata) -> None:
        """Drop every entry when what determines them (condition, dtype, device, model) changed."""
        if metadata != self.metadata:
            self.clear()
            self.metadata = metadata

    def refresh_due(self, step: int, keys: list[tuple]) -> bool:
        if any(key not in self.entries for key in keys):
            return True
        n = self.every_n_steps
        return n is None or any(step // n > self.refreshed_at[key] // n for key in keys)

    def store(self, key: tuple, features: list[LayerKV] | ConditionFeatures, step: int) -> None:
        self.entries[key] = features
        self.refreshed_at[key] = step

    def clear(self) -> None:
        self.entries.clear()
        self.refreshed_at.clear()


@dataclass
class ConditionFeatureStore:
    """Condition-branch features of single reference images, kept across sampling runs: a reflection loop samples
    again with the same original images plus a new one each round, and the independent condition makes each image's
    features depend on nothing but the image, its slot and the model.

    Entries are keyed by (slot, image fingerprint); `metadata` (model, dtype, device, condition timestep) drops them
    all when it changes. The owner clears the store when its loop ends, also on cancel.
    """

    metadata: tuple = ()
    entries: dict[tuple[int, str], ConditionFeatures] = field(default_factory=dict)

    def check_metadata(self, *metadata) -> None:
        if metadata != self.metadata:
            self.entries.clear()
            self.metadata = metadata

    def clear(self) -> None:
        self.entries.clear()


def join_condition_features(parts: list[ConditionFeatures]) -> ConditionFeatures:
    """Per-image features as the features of the whole set, in the given order (keys/values joined along the token
    axis)."""
    layers = [
        LayerKV(torch.cat([p.layers[l].key for p in parts], dim=2), torch.cat([p.layers[l].value for p in parts], dim=2))
        for l in range(len(parts[0].layers))
    ]
    return ConditionFeatures(tuple(grid for p in parts for grid in p.grids), layers)
