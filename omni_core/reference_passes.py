"""Runs a step's guidance passes through the transformer, computing once what they share and reusing reference
features as the run asks.

Shared exactly, always: the refined text of each prompt (the context refiner sees nothing else) is computed once
per run; the refined noise tokens once per step for every pass; the refined reference tokens once per step for
every pass that sees them (see `OmniGen2Transformer`'s stages). Passes with equal text length and reference set run
as one batch.

Three modes for the joint layers of passes that see the reference images:
- plain (no cache): every step runs the reference tokens through every layer, as the official pipeline does;
- reuse (`cache_per_n_steps = n`): each pass stores its reference keys/values on refresh steps and reuses them in
  between; entries are per pass, because without the asymmetric mask reference features depend on the prompt;
- independent condition: reference features come from the condition branch (each image alone, clean timestep),
  computed on refresh steps only (they are step-invariant, so n > steps computes them once and is exact) and shared
  by every pass: each text length gets the same keys turned to its sequence ids. With a `ConditionFeatureStore` as
  well, they are kept per image across runs, and a run computes only the images the store does not hold yet.

A step cache (`step_cache.py`) composes with all three: a pass it skips runs no joint blocks on that step (and so
needs no references; a reuse refresh falls to the pass's next computed step) and gets its estimate of the last
block's output at the noise tokens; the output layers then run on every pass of the group as one batch.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import torch

from .condition import Condition, ReferenceImage, TextCondition, reference_fingerprint
from .device_dtype import execution_device
from .guidance import GuidancePass, batchable_groups
from .lora import lora_fingerprint
from .reference_cache import (
    ConditionFeatures, ConditionFeatureStore, KVReuse, KVStore, LayerKV, ReferenceFeatureCache, condition_branch,
    image_condition_features, join_condition_features, place_condition,
)
from .step_cache import StepCacheRun
from .transformer import OmniGen2Transformer

CONDITION_KEY = ("condition",)


class TransformerPasses:
    """The `PassRunner` of `GuidedVelocity` for one condition and one sampling run."""

    def __init__(
        self,
        transformer: OmniGen2Transformer,
        condition: Condition,
        cache: ReferenceFeatureCache | None,
        independent_condition: bool,
        condition_timestep: float = 1.0,
        noise_token_index: torch.Tensor | None = None,
        step_cache: StepCacheRun | None = None,
        store: ConditionFeatureStore | None = None,
    ) -> None:
        """store: per-image condition-branch features kept across runs; used only with a cache and the independent
        condition (without a cache every step recomputes, as asked)."""
        self.transformer = transformer
        self.step_cache = step_cache
        self.dtype, self.device = next(transformer.parameters()).dtype, execution_device(transformer)
        self.references = [_to_device(ref, self.device, self.dtype) for ref in condition.references]
        self.reference_len = sum(ref.num_tokens for ref in condition.references)
        self.cache = cache
        self.independent = independent_condition
        self.condition_timestep = condition_timestep
        self.noise_token_index = noise_token_index
        self.tokens_computed = 0
        self.tokens_reused = 0
        self._texts: dict[int, tuple[TextCondition, torch.Tensor]] = {}
        if cache is not None:
            cache.check_metadata(
                condition.fingerprint, self.dtype, self.device, independent_condition, condition_timestep,
                lora_fingerprint(transformer),
            )
        self.store = store if cache is not None and independent_condition else None
        if self.store is not None:
            self.store.check_metadata(
                id(transformer), lora_fingerprint(transformer), self.dtype, self.device, condition_timestep
            )

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, t: torch.Tensor, passes: Sequence[GuidancePass], step: int) -> dict[str, torch.Tensor]:
        N = x.shape[0]
        latents = list(x.to(self.device, self.dtype))
        temb = self.transformer.embed_time(t.to(self.device).expand(N), self.dtype)
        shared: dict[str, object] = {}  # this step's refined noise and references, computed on first need
        velocity: dict[str, torch.Tensor] = {}
        for group in batchable_groups(passes):
            if self.step_cache is None:
                layouts, hidden = self._joint_hidden(group, latents, temb, step, shared)
            else:
                layouts, hidden = self._cached_hidden(group, latents, temb, step, shared)
            out = self.transformer.velocity(*hidden, layouts, temb.repeat(len(group), 1))
            for name, v in zip((p.name for p in group), torch.stack(out).split(N)):
                velocity[name] = v
        return velocity

    def _plan(self, group: Sequence[GuidancePass], latents: list[torch.Tensor]):
        """The group's sequence layouts (passes stacked, N samples each), references as (latent, grid) and whether the
        passes see them."""
        N, G = len(latents), len(group)
        with_refs = group[0].with_references and bool(self.references)
        embeds = torch.cat([p.text.embeds.expand(N, -1, -1) for p in group]).to(self.device, self.dtype)
        mask = torch.cat([p.text.mask.expand(N, -1) for p in group]).to(self.device)
        refs_per_sample = [self.references] * (N * G) if with_refs else None
        layouts, references = self.transformer.plan(latents * G, embeds, mask, refs_per_sample, self.noise_token_index)
        return layouts, references, with_refs

    def _noise(self, latents, layouts, temb, shared) -> torch.Tensor:
        """This step's refined noise tokens [N, noise tokens, hidden], once for every pass."""
        if "noise" not in shared:
            shared["noise"] = self.transformer.refine_noise(latents, [layout.noise for layout in layouts[: len(latents)]], temb)
        return shared["noise"]

    def _refined_references(self, references, temb, shared) -> list[torch.Tensor]:
        if "references" not in shared:  # same images, same time: one refinement serves every sample and pass
            shared["references"] = self.transformer.refine_references([references], temb[:1])[0]
        return shared["references"]

    def _joint_hidden(self, group, latents, temb, step, shared):
        """The joint blocks for a group of passes: (layouts, (last block's output, noise rows per sample))."""
        N, names = len(latents), tuple(p.name for p in group)
        layouts, references, with_refs = self._plan(group, latents)
        noise = self._noise(latents, layouts, temb, shared)
        text = torch.cat([self._refined_text(p.text).expand(N, -1, -1) for p in group])
        refs, kv = None, None
        if with_refs:
            refs, kv = self._reference_inputs(references[0], layouts, names, N, temb, step, shared)
        hidden = self.transformer.joint_hidden(text, refs, noise.repeat(len(group), 1, 1), layouts, temb.repeat(len(group), 1), kv)
        if isinstance(kv, KVStore):
            self._keep(kv, names, N, step)
        return layouts, hidden

    def _cached_hidden(self, group, latents, temb, step, shared):
        """The joint blocks' output with the step cache: passes it computes run the blocks (one batch), the others get
        its estimate. Only noise tokens are kept: the output layers read nothing else."""
        N = len(latents)
        layouts, references, with_refs = self._plan(group, latents)
        computing = [p for p in group if self.step_cache.plan(p.name, step, self._measure(p, layouts, references, with_refs, latents, temb, shared))]
        noise = shared.get("noise")  # TeaCache's measure refined it; TaylorSeer's estimate needs no input
        per_pass = {}
        if computing:
            _, (x, rows) = self._joint_hidden(computing, latents, temb, step, shared)
            noise = shared["noise"]
            for p, h in zip(computing, x[:, rows[0]].split(N)):
                self.step_cache.record(p.name, noise, h)
                per_pass[p.name] = h
        for p in group:
            if p.name not in per_pass:
                per_pass[p.name] = self.step_cache.estimate(p.name, noise)
        rows = [slice(0, layouts[0].noise_len)] * len(layouts)
        return layouts, (torch.cat([per_pass[p.name] for p in group]), rows)

    def _measure(self, p, layouts, references, with_refs, latents, temb, shared) -> torch.Tensor | None:
        """TeaCache's measure for one pass: the first joint block's modulated input over the tokens that run through
        the joint blocks every step ([text | references | noise] officially, [text | noise] when the references'
        keys/values come from the reference-feature cache)."""
        if not self.step_cache.measures_input:
            return None
        N = len(latents)
        noise = self._noise(latents, layouts, temb, shared)
        text = self._refined_text(p.text).expand(N, -1, -1)
        refs = None
        if with_refs and self.cache is None and not self.independent:
            refs = [self._refined_references(references[0], temb, shared)] * N
        x = torch.stack(self.transformer.joint_tokens(text, refs, noise, layouts[:N]))
        return self.transformer.first_block_input(x, temb)

    def _refined_text(self, text: TextCondition) -> torch.Tensor:
        """The context refiner's output for one prompt [1, L, hidden], once per run (it depends on the text alone)."""
        if id(text) not in self._texts:  # the TextCondition is kept with it, so its id is never reused meanwhile
            refined = self.transformer.refine_text(text.embeds.to(self.device, self.dtype), text.mask.to(self.device))
            self._texts[id(text)] = (text, refined)
        return self._texts[id(text)][1]

    def _reference_inputs(self, references, layouts, names, N, temb, step, shared):
        """What the joint layers get for the references of a group of passes: (tokens per sample or None, kv hook)."""
        batch = N * len(names)
        if self.independent:
            return None, KVReuse(self._placed_condition(layouts[0].text_len, step, batch, shared))
        keys = [("pass", name) for name in names]
        if self.cache is not None and not self.cache.refresh_due(step, keys):
            layers = [
                LayerKV(torch.cat([self.cache.entries[k][l].key for k in keys]), torch.cat([self.cache.entries[k][l].value for k in keys]))
                for l in range(len(self.transformer.layers))
            ]
            self.tokens_reused += self.reference_len * batch
            return None, KVReuse(layers)
        refined = self._refined_references(references, temb, shared)
        self.tokens_computed += self.reference_len * batch
        store = None if self.cache is None else KVStore(layouts)
        return [refined] * batch, store

    def _keep(self, store: KVStore, names: tuple[str, ...], N: int, step: int) -> None:
        """Split a refresh's stored keys/values into one cache entry per pass."""
        for i, name in enumerate(names):
            rows = slice(i * N, (i + 1) * N)
            self.cache.store(("pass", name), [LayerKV(kv.key[rows], kv.value[rows]) for kv in store.layers], step)

    def _placed_condition(self, text_len: int, step: int, batch: int, shared: dict) -> list[LayerKV]:
        """The condition branch's features at this text length: computed on refresh steps (or every step without a
        cache), turned to each text length once."""
        features = shared.get("condition")
        if features is None and self.cache is not None and not self.cache.refresh_due(step, [CONDITION_KEY]):
            features = self.cache.entries[CONDITION_KEY]
        if features is None:
            features, computed = self._condition_branch()
            self.tokens_computed += computed
            self.tokens_reused += self.reference_len - computed
            if self.cache is not None:
                self.cache.store(CONDITION_KEY, features, step)
        else:
            self.tokens_reused += self.reference_len * batch
        shared["condition"] = features
        if text_len not in features.placed:
            features.placed[text_len] = place_condition(self.transformer, features, text_len)
        return features.placed[text_len]

    def _condition_branch(self) -> tuple[ConditionFeatures, int]:
        """The condition branch's features of this run's images and how many tokens were computed for them: all of
        them, or with a store only the images (at their slots) it does not hold yet."""
        if self.store is None:
            return condition_branch(self.transformer, self.references, self.condition_timestep), self.reference_len
        keys = [(slot, reference_fingerprint(ref)) for slot, ref in enumerate(self.references)]
        missing = [slot for slot, key in enumerate(keys) if key not in self.store.entries]
        if missing:
            computed = image_condition_features(
                self.transformer, [self.references[slot] for slot in missing], self.condition_timestep, missing
            )
            for slot, part in zip(missing, computed):
                self.store.entries[keys[slot]] = part
        features = join_condition_features([self.store.entries[key] for key in keys])
        return features, sum(self.references[slot].num_tokens for slot in missing)

    def stats(self) -> dict[str, int]:
        return {"reference_tokens_computed": self.tokens_computed, "reference_tokens_reused": self.tokens_reused}


def _to_device(reference: ReferenceImage, device: torch.device, dtype: torch.dtype) -> ReferenceImage:
    """The reference on the transformer's device, its latent in the transformer's dtype (the VAE gives float32)."""
    keep = None if reference.keep_index is None else reference.keep_index.to(device)
    return dataclasses.replace(reference, latent=reference.latent.to(device, dtype), keep_index=keep)
