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
  by every pass: each text length gets the same keys turned to its sequence ids.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import torch

from .condition import Condition, ReferenceImage, TextCondition
from .guidance import GuidancePass, batchable_groups
from .reference_cache import KVReuse, KVStore, LayerKV, ReferenceFeatureCache
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
    ) -> None:
        self.transformer = transformer
        parameter = next(transformer.parameters())
        self.dtype, self.device = parameter.dtype, parameter.device
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
            cache.check_metadata(condition.fingerprint, self.dtype, self.device, independent_condition, condition_timestep)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, t: torch.Tensor, passes: Sequence[GuidancePass], step: int) -> dict[str, torch.Tensor]:
        N = x.shape[0]
        latents = list(x.to(self.device, self.dtype))
        temb = self.transformer.embed_time(t.to(self.device).expand(N), self.dtype)
        shared: dict[str, object] = {}  # this step's refined noise and references, computed on first need
        velocity: dict[str, torch.Tensor] = {}
        for group in batchable_groups(passes):
            G, names = len(group), tuple(p.name for p in group)
            with_refs = group[0].with_references and bool(self.references)
            embeds = torch.cat([p.text.embeds.expand(N, -1, -1) for p in group]).to(self.device, self.dtype)
            mask = torch.cat([p.text.mask.expand(N, -1) for p in group]).to(self.device)
            refs_per_sample = [self.references] * (N * G) if with_refs else None
            layouts, references = self.transformer.plan(latents * G, embeds, mask, refs_per_sample, self.noise_token_index)
            if "noise" not in shared:
                shared["noise"] = self.transformer.refine_noise(latents, [layout.noise for layout in layouts[:N]], temb)
            text = torch.cat([self._refined_text(p.text).expand(N, -1, -1) for p in group])
            refs, kv = None, None
            if with_refs:
                refs, kv = self._reference_inputs(references[0], layouts[0].text_len, names, N, temb, step, shared)
            out = self.transformer.joint(text, refs, shared["noise"].repeat(G, 1, 1), layouts, temb.repeat(G, 1), kv)
            if isinstance(kv, KVStore):
                self._keep(kv, names, N)
            for name, v in zip(names, torch.stack(out).split(N)):
                velocity[name] = v
        return velocity

    def _refined_text(self, text: TextCondition) -> torch.Tensor:
        """The context refiner's output for one prompt [1, L, hidden], once per run (it depends on the text alone)."""
        if id(text) not in self._texts:  # the TextCondition is kept with it, so its id is never reused meanwhile
            refined = self.transformer.refine_text(text.embeds.to(self.device, self.dtype), text.mask.to(self.device))
            self._texts[id(text)] = (text, refined)
        return self._texts[id(text)][1]

    def _reference_inputs(self, references, text_len, names, N, temb, step, shared):
        """What the joint layers get for the references of a group of passes: (tokens per sample or None, kv hook)."""
        batch = N * len(names)
        if self.independent:
            return None, KVReuse(self._placed_condition(text_len, step, batch, shared))
        keys = [("pass", name) for name in names]
        if self.cache is not None and not self.cache.refresh_due(step, keys):
            layers = [
                LayerKV(torch.cat([self.cache.entries[k][l].key for k in keys]), torch.cat([self.cache.entries[k][l].value for k in keys]))
                for l in range(len(self.transformer.layers))
            ]
            self.tokens_reused += self.reference_len * batch
            return None, KVReuse(layers)
        if "references" not in shared:  # same images, same time: one refinement serves every sample and pass
            shared["references"] = self.transformer.refine_references([references], temb[:1])[0]
        self.tokens_computed += self.reference_len * batch
        store = None if self.cache is None else KVStore(text_len, text_len + self.reference_len)
        return [shared["references"]] * batch, store

    def _keep(self, store: KVStore, names: tuple[str, ...], N: int) -> None:
        """Split a refresh's stored keys/values into one cache entry per pass."""
        for i, name in enumerate(names):
            rows = slice(i * N, (i + 1) * N)
            self.cache.entries[("pass", name)] = [LayerKV(kv.key[rows], kv.value[rows]) for kv in store.layers]

    def _placed_condition(self, text_len: int, step: int, batch: int, shared: dict) -> list[LayerKV]:
        """The condition branch's features at this text length: computed on refresh steps (or every step without a
        cache), turned to each text length once."""
        features = shared.get("condition")
        if features is None and self.cache is not None and not self.cache.refresh_due(step, [CONDITION_KEY]):
            features = self.cache.entries[CONDITION_KEY]
        if features is None:
            features = self.transformer.condition_branch(self.references, self.condition_timestep)
            self.tokens_computed += self.reference_len
            if self.cache is not None:
                self.cache.entries[CONDITION_KEY] = features
        else:
            self.tokens_reused += self.reference_len * batch
        shared["condition"] = features
        if text_len not in features.placed:
            features.placed[text_len] = self.transformer.place_condition(features, text_len)
        return features.placed[text_len]

    def stats(self) -> dict[str, int]:
        return {"reference_tokens_computed": self.tokens_computed, "reference_tokens_reused": self.tokens_reused}


def _to_device(reference: ReferenceImage, device: torch.device, dtype: torch.dtype) -> ReferenceImage:
    """The reference on the transformer's device, its latent in the transformer's dtype (the VAE gives float32)."""
    keep = None if reference.keep_index is None else reference.keep_index.to(device)
    return dataclasses.replace(reference, latent=reference.latent.to(device, dtype), keep_index=keep)
