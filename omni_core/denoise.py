"""The denoising run every entry point shares: seeded noise, the official time grid, the guided passes over the
transformer with reference reuse and step caching, the Euler loop, and the run's figures.

`OmniGen2.sample` and `repaint` call `denoise`, and so do the benchmarks (on a bare transformer with a synthetic
condition, timing steps through `progress`), so what they measure is what users run.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from .condition import Condition
from .device_dtype import execution_device
from .errors import OmniGen2Error
from .guidance import OFFICIAL_TEXT_GUIDANCE, GuidedVelocity
from .interface import Progress
from .non_finite import explain_non_finite
from .options import SamplingOptions
from .reference_cache import ConditionFeatureStore, ReferenceFeatureCache
from .reference_passes import TransformerPasses
from .sampler import sample_euler
from .schedule import flow_timesteps
from .step_cache import StepCacheRun
from .transformer import OmniGen2Transformer

def initial_noise(seed: int, count: int, channels: int, latent_size: tuple[int, int]) -> torch.Tensor:
    """randn([1, C, h, w]) from a CPU generator seeded seed + i for image i: the same images on every device."""
    return torch.cat(
        [torch.randn([1, channels, *latent_size], generator=torch.Generator().manual_seed(seed + i)) for i in range(count)]
    )


class GuidedRun:
    """A run's guided velocity (`velocity(x, t, step)`, what the sampler integrates) and the per-run state behind it:
    the reference-feature cache and the step cache. `clear()` drops that state; a single step can be timed on it."""

    def __init__(
        self,
        transformer: OmniGen2Transformer,
        condition: Condition,
        options: SamplingOptions,
        *,
        default_text_guidance: float = OFFICIAL_TEXT_GUIDANCE,
        noise_token_index: torch.Tensor | None = None,
        store: ConditionFeatureStore | None = None,
        image_passes: bool | None = None,
    ) -> None:
        independent_condition = options.independent_condition
        if independent_condition is None:
            independent_condition = transformer.config.independent_condition
        self.independent_condition = independent_condition
        self.cache = None if options.cache_per_n_steps is None else ReferenceFeatureCache(options.cache_per_n_steps)
        self.step_cache_run = (
            StepCacheRun(options.step_cache, options.steps, transformer.config.teacache_coefficients)
            if options.step_cache is not None else None
        )
        self.passes = TransformerPasses(
            transformer, condition, self.cache, independent_condition, options.condition_timestep, noise_token_index,
            self.step_cache_run, store,
        )
        self.velocity = GuidedVelocity(
            self.passes,
            condition.positive,
            condition.negative,
            has_references=bool(condition.references) if image_passes is None else image_passes,
            steps=options.steps,
            text_scale=default_text_guidance if options.text_guidance_scale is None else options.text_guidance_scale,
            image_scale=options.image_guidance_scale,
            cfg_range=options.cfg_range,
        )

    def clear(self) -> None:
        if self.cache is not None:
            self.cache.clear()
        if self.step_cache_run is not None:
            self.step_cache_run.clear()

    def stats(self) -> dict[str, Any]:
        steps = self.step_cache_run.stats() if self.step_cache_run is not None else {"step_cache": None}
        return {**self.passes.stats(), **steps}


@torch.no_grad()
def denoise(
    transformer: OmniGen2Transformer,
    condition: Condition,
    latent_size: tuple[int, int],
    options: SamplingOptions,
    progress: Progress | None = None,
    *,
    default_text_guidance: float = OFFICIAL_TEXT_GUIDANCE,
    dynamic_time_shift: bool = True,
    noise_token_index: torch.Tensor | None = None,
    store: ConditionFeatureStore | None = None,
    image_passes: bool | None = None,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Seeded noise [num_images, C, *latent_size] to final latents under `condition`, and the run's figures.

    noise_token_index: only these tokens are noise (repaint). store: condition-branch features kept across runs (see
    `reflect`). image_passes: run image guidance's passes (None: when the condition has references; True without
    references is the benchmarks' text-only baseline of a reference run's passes). Nothing cached outlives the run,
    also when it is cancelled or fails.
    """
    device = execution_device(transformer)
    timesteps = flow_timesteps(options.steps, latent_size[0] * latent_size[1], dynamic_time_shift).to(device)
    noise = initial_noise(options.seed, options.num_images, transformer.config.in_channels, latent_size).to(device)
    run = GuidedRun(
        transformer, condition, options, default_text_guidance=default_text_guidance,
        noise_token_index=noise_token_index, store=store, image_passes=image_passes,
    )
    step_seconds: list[float] = []
    clock = [time.perf_counter()]

    def on_step(info: dict) -> None:
        now = time.perf_counter()
        step_seconds.append(now - clock[0])
        clock[0] = now
        if progress is not None:
            progress(info["i"] + 1, options.steps, info["denoised"])

    try:
        latents = sample_euler(run.velocity, noise, timesteps, callback=on_step)
    finally:  # also on cancel or error: no cached features or step-cache state outlive the run
        run.clear()
    if not torch.isfinite(latents).all():
        raise OmniGen2Error(explain_non_finite(transformer, condition, next(transformer.parameters()).dtype))
    grid_tokens = (latent_size[0] // 2) * (latent_size[1] // 2)
    stats = {
        "steps": options.steps,
        "seconds_per_step": sum(step_seconds) / max(len(step_seconds), 1),
        "noise_tokens": grid_tokens if noise_token_index is None else len(noise_token_index),
        "reference_images": len(condition.references),
        "reference_tokens": sum(ref.num_tokens for ref in condition.references),
        "tokens_saved_by_compaction": sum(ref.full_size_tokens - ref.num_tokens for ref in condition.references),
        "cache_per_n_steps": options.cache_per_n_steps,
        "independent_condition": run.independent_condition,
        **run.stats(),
    }
    return latents, stats
