"""Reference-feature reuse (OminiControl2): per-layer keys and values of reference tokens, kept across steps.

Reference tokens dominate OmniGen2's cost. On a refresh step they run through every joint layer as usual and each
layer's reference keys/values (after qk-norm and RoPE) are stored; on the steps between, only text and noise tokens
run and each layer attends to the stored keys/values as well. With the asymmetric mask (independent condition) the
reference features depend on nothing but the images, so they are exact to reuse; without it, reuse approximates.
The condition branch computes them from the transformer's public stages: each image alone at sequence id 0 (shared
by its tokens, so it cancels in their attention); `place_condition` turns the keys to where it sits after a text.

One `ReferenceFeatureCache` lives for one sampling run (like ComfyUI's EasyCacheHolder): entries are keyed by
everything that determines them, `clear()` frees them, and the sampler clears it in a `finally`, so a cancelled run
leaves nothing behind.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from .condition import ReferenceImage
from .errors import InvalidInputError
from .layout import SampleLayout, TokenGrid
from .rope import apply_rotation
from .transformer import KVHook, OmniGen2Transformer


@dataclass
class LayerKV:
    """Reference keys and values of one joint layer: [B, H_kv, R, D] each."""

    key: torch.Tensor
    value: torch.Tensor


@dataclass(frozen=True)
class ConditionFeatures:
    """The condition branch's output (independent condition): per joint layer the reference keys/values of every
    image, each computed at sequence id 0; `grids` are the images' token grids, in order. `placed` keeps the keys
    turned to each text length's sequence ids (see `place_condition`), so it goes with them."""

    grids: tuple
    layers: list[LayerKV]
    placed: dict[int, list[LayerKV]] = field(default_factory=dict)


class KVStore(KVHook):
    """Records every layer's keys and values of the reference span, which must be the same in every sample of the
    batch (same text length and references)."""

    def __init__(self, layouts: Sequence[SampleLayout]) -> None:
        spans = {(layout.text_len, layout.text_len + layout.reference_len) for layout in layouts}
        if len(spans) != 1:
            raise InvalidInputError(
                "reference caching needs the same text length and references in every sample of a batch; "
                f"got spans {sorted(spans)}"
            )
        [(self.start, self.end)] = spans
        self.layers: list[LayerKV] = []

    def __call__(self, layer, key, value, mask):
        self.layers.append(LayerKV(key[:, :, self.start : self.end].clone(), value[:, :, self.start : self.end].clone()))
        return key, value, mask


class KVReuse(KVHook):
    """Appends given reference keys/values to each layer's own: per layer [1 or B, H_kv, R, D], with a key mask [B, R]
    when samples have their own, right-padded, references (training's batches). Stateless, so a checkpointed block
    may run it again."""

    supplies_references = True

    def __init__(self, layers: list[LayerKV], mask: torch.Tensor | None = None) -> None:
        self.layers, self.mask = layers, mask

    def __call__(self, layer, key, value, mask):
        given, B = self.layers[layer], key.shape[0]
        if mask is not None or self.mask is not None:
            own = mask if mask is not None else key.new_ones(B, key.shape[2], dtype=torch.bool)
            mask = torch.cat([own, self.mask if self.mask is not None else own.new_ones(B, given.key.shape[2])], dim=1)
        key = torch.cat([key, given.key.to(key.dtype).expand(B, -1, -1, -1)], dim=2)
        return key, torch.cat([value, given.value.to(value.dtype).expand(B, -1, -1, -1)], dim=2), mask


class KVCapture(KVHook):
    """Records every layer's full keys and values (references alone), again in place when a checkpoint recomputes."""

    def __init__(self) -> None:
        self.layers: dict[int, LayerKV] = {}

    def __call__(self, layer, key, value, mask):
        self.layers[layer] = LayerKV(key, value)
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
    """Per-image features as those of the whole set, in the given order (keys/values joined along the token axis)."""
    layers = [
        LayerKV(torch.cat([p.layers[l].key for p in parts], dim=2), torch.cat([p.layers[l].value for p in parts], dim=2))
        for l in range(len(parts[0].layers))
    ]
    return ConditionFeatures(tuple(grid for p in parts for grid in p.grids), layers)


@torch.no_grad()
def condition_branch(
    transformer: OmniGen2Transformer, references: Sequence[torch.Tensor | ReferenceImage], condition_timestep: float = 1.0
) -> ConditionFeatures:
    """The condition branch's features of a sample's reference images: each joint layer's keys/values of their tokens
    when every image attends only to itself at the fixed `condition_timestep` (1 = clean)."""
    parts = image_condition_features(transformer, references, condition_timestep)
    return join_condition_features(parts) if parts else ConditionFeatures((), [])


@torch.no_grad()
def image_condition_features(
    transformer: OmniGen2Transformer, references: Sequence[torch.Tensor | ReferenceImage], condition_timestep: float = 1.0,
    slots: Sequence[int] | None = None,
) -> list[ConditionFeatures]:
    """`condition_branch` per image, each image run as a batch of its own: in one padded batch the other images'
    sizes would change its round-off, and caches keep these features per image (`ConditionFeatureStore`), so an
    image's features must be the same bit for bit whichever images come with it. `slots`: each image's place among
    the sample's references (its image index embedding; default 0, 1, ...), so some images of a set run alone."""
    refs = [transformer.reference_input(ref, f"references[{j}]") for j, ref in enumerate(references)]
    slots = range(len(refs)) if slots is None else slots
    return [condition_features(transformer, [[ref]], condition_timestep, [slot])[0] for ref, slot in zip(refs, slots)]


def condition_features(
    transformer: OmniGen2Transformer, references: Sequence[Sequence[tuple[torch.Tensor, TokenGrid]]],
    condition_timestep: float = 1.0, slots: Sequence[int] | None = None,
) -> list[ConditionFeatures]:
    """`condition_branch` for a batch, differentiably (training): per sample its images (latent, grid) as `plan`
    returns them -> per sample its ConditionFeatures (no layers for a sample without images). Every image of every
    sample is one row of a single batch; `slots[j]` is the j-th image's slot in every sample."""
    images = [image for sample in references for image in sample]
    if not images:
        return [ConditionFeatures((), []) for _ in references]
    device, dtype = images[0][0].device, images[0][0].dtype
    temb = transformer.embed_time(torch.full((1,), condition_timestep, device=device), dtype).expand(len(images), -1)
    x, mask, rotation = transformer.reference_batch(references, temb, slots)
    capture = KVCapture()
    # the last layer's keys/values are all that is read: it runs no query rows (no attention, no feed-forward)
    transformer.joint_blocks(x, rotation, mask, temb, capture, last_rows=slice(0, 0))
    layers = [capture.layers[index] for index in range(len(transformer.layers))]
    features, first = [], 0
    for sample in references:
        grids = tuple(grid for _, grid in sample)
        rows = range(first, first + len(grids))
        first += len(grids)
        join = lambda t: torch.cat([t[row, :, : grid.num_tokens] for row, grid in zip(rows, grids)], dim=1)[None]
        features.append(ConditionFeatures(grids, [LayerKV(join(kv.key), join(kv.value)) for kv in layers] if grids else []))
    return features


def place_condition(transformer: OmniGen2Transformer, features: ConditionFeatures, text_len: int) -> list[LayerKV]:
    """The condition branch's keys rotated to the images' sequence ids after `text_len` text tokens (values do not
    depend on position). Returns per joint layer [1, H_kv, R, D]."""
    device = features.layers[0].key.device
    layout = SampleLayout(text_len, features.grids, TokenGrid(0, 0))
    ids = torch.cat(layout.reference_positions(device))
    ids[:, 1:] = 0  # the sequence angle only: row and column angles are already in the keys
    turn = transformer.rope(ids[None])
    return [LayerKV(apply_rotation(kv.key.transpose(1, 2), turn).transpose(1, 2), kv.value) for kv in features.layers]
