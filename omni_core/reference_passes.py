"""Runs batches of guidance passes through the transformer, reusing reference features as the run asks.

Three modes for passes that see the reference images:
- plain (no cache): every step runs the reference tokens, as the official pipeline does;
- reuse (`cache_per_n_steps = n`): each pass stores its reference keys/values on refresh steps and reuses them in
  between; entries are per pass, because without the asymmetric mask reference features depend on the prompt;
- independent condition: reference features come from the condition branch (each image alone, clean timestep),
  shared by every pass with the same text length (the references' position ids start after the text), computed
  on refresh steps only (they are step-invariant, so n > steps computes them once and is exact).
"""

from __future__ import annotations

import dataclasses

import torch

from .condition import Condition, ReferenceImage
from .reference_cache import KVReuse, KVStore, LayerKV, ReferenceFeatureCache
from .transformer import OmniGen2Transformer


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
        self.references = [_to_device(ref, self.device) for ref in condition.references]
        self.reference_len = sum(ref.num_tokens for ref in condition.references)
        self.cache = cache
        self.independent = independent_condition
        self.condition_timestep = condition_timestep
        self.noise_token_index = noise_token_index
        self.tokens_computed = 0
        self.tokens_reused = 0
        if cache is not None:
            cache.check_metadata(condition.fingerprint, self.dtype, self.device, independent_condition, condition_timestep)

    def __call__(self, latents, t, embeds, mask, with_references, names, step):
        N = latents.shape[0]
        args = (latents.to(self.dtype), t.expand(N).to(self.dtype), embeds.to(self.device, self.dtype), mask.to(self.device))
        run = lambda refs, kv=None: self.transformer(*args, refs, reference_kv=kv, noise_token_index=self.noise_token_index)
        if not (with_references and self.references):
            return run(None)
        refs = [self.references] * N
        if self.independent:
            return run(refs, KVReuse(self._condition_branch(embeds.shape[1], step, N)))
        if self.cache is None:
            self.tokens_computed += self.reference_len * N
            return run(refs)
        keys = [("pass", name) for name in names]
        if self.cache.refresh_due(step, keys):
            text_len = embeds.shape[1]
            store = KVStore(text_len, text_len + self.reference_len)
            out = run(refs, store)
            per_pass = N // len(names)
            for i, key in enumerate(keys):
                rows = slice(i * per_pass, (i + 1) * per_pass)
                self.cache.entries[key] = [LayerKV(kv.key[rows], kv.value[rows]) for kv in store.layers]
            self.tokens_computed += self.reference_len * N
            return out
        layers = [
            LayerKV(torch.cat([self.cache.entries[k][l].key for k in keys]), torch.cat([self.cache.entries[k][l].value for k in keys]))
            for l in range(len(self.transformer.layers))
        ]
        self.tokens_reused += self.reference_len * N
        return run(refs, KVReuse(layers))

    def _condition_branch(self, text_len: int, step: int, batch: int) -> list[LayerKV]:
        key = ("independent", text_len)
        if self.cache is not None and not self.cache.refresh_due(step, [key]):
            self.tokens_reused += self.reference_len * batch
            return self.cache.entries[key]
        features = self.transformer.reference_features(self.references, text_len, self.condition_timestep)
        if self.cache is not None:
            self.cache.entries[key] = features
        self.tokens_computed += self.reference_len
        return features

    def stats(self) -> dict[str, int]:
        return {"reference_tokens_computed": self.tokens_computed, "reference_tokens_reused": self.tokens_reused}


def _to_device(reference: ReferenceImage, device: torch.device) -> ReferenceImage:
    keep = None if reference.keep_index is None else reference.keep_index.to(device)
    return dataclasses.replace(reference, latent=reference.latent.to(device), keep_index=keep)
