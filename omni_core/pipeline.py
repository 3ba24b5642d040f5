"""OmniGen2 end to end: prompts and images to a condition, a condition to images. The API nodes, CLI and tests use.

`encode_condition` runs the MLLM and the VAE encoder once; `sample` can then be called many times (new seeds,
sizes, steps) without re-encoding. `generate` is both in one call with the official pipeline's defaults.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from .chat import ChatResult, run_chat
from .compact import compact_condition
from .condition import Condition, ReferenceImage, check_reference_count
from .device_dtype import execution_device
from .errors import InvalidInputError, OmniGen2Error
from .guidance import OFFICIAL_TEXT_GUIDANCE, GuidedVelocity
from .lora import LoraSpec, apply_loras
from .non_finite import explain_non_finite
from .image_processing import ImageLike, check_output_size, image_array, postprocess, preprocess_reference, to_pil
from .judges import resolve_judge
from .reference_cache import ConditionFeatureStore, ReferenceFeatureCache
from .repaint import original_pixels, stitch_latents, stitch_pixels, to_mask, token_mask
from .reference_passes import TransformerPasses
from .reflection import ReflectionResult, RoundCallback, reflect
from .sampler import sample_euler
from .step_cache import StepCache, StepCacheRun
from .schedule import flow_timesteps
from .text_encoder import TextEncoder
from .transformer import OmniGen2Transformer
from .vae import decode_latents, encode_to_latents

DEFAULT_SIZE = 1024  # the official default_sample_size 128 x VAE factor 8
LATENT_FACTOR = 8
Progress = Callable[[int, int, torch.Tensor], None]  # (step, steps, denoised estimate [B, C, h, w]) after each step


@dataclass
class GenerationResult:
    """images [B, 3, H, W] in [0, 1]; latents [B, C, H/8, W/8] in the transformer's (scaled) space; run figures."""

    images: torch.Tensor
    latents: torch.Tensor
    stats: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SamplingOptions:
    """How to sample, as `sample` and `repaint` take it (see `OmniGen2.sample` for each field)."""

    steps: int
    text_guidance_scale: float
    image_guidance_scale: float
    cfg_range: tuple[float, float]
    seed: int
    num_images: int
    cache_per_n_steps: int | None
    independent_condition: bool | None
    condition_timestep: float = 1.0
    step_cache: StepCache | None = None


def initial_noise(seed: int, count: int, channels: int, latent_size: tuple[int, int]) -> torch.Tensor:
    """randn([1, C, h, w]) from a CPU generator seeded seed + i for image i: the same images on every device."""
    return torch.cat(
        [torch.randn([1, channels, *latent_size], generator=torch.Generator().manual_seed(seed + i)) for i in range(count)]
    )


def _check_guidance(text_guidance_scale: float, image_guidance_scale: float, cfg_range: Sequence[float]) -> tuple[float, float]:
    for name, value in (("text_guidance_scale", text_guidance_scale), ("image_guidance_scale", image_guidance_scale)):
        if not isinstance(value, (int, float)) or value != value or value < 0:
            raise InvalidInputError(f"{name} must be a number >= 0 (1 disables it), got {value!r}.")
    if len(cfg_range) != 2 or not 0.0 <= cfg_range[0] <= cfg_range[1] <= 1.0:
        raise InvalidInputError(f"cfg_range must be (start, end) with 0 <= start <= end <= 1, got {tuple(cfg_range)}.")
    return float(cfg_range[0]), float(cfg_range[1])


class OmniGen2:
    """The three models of OmniGen2 and the official generation procedure over them."""

    def __init__(
        self,
        transformer: OmniGen2Transformer,
        vae: torch.nn.Module,
        text_encoder: TextEncoder,
        scheduler_config: dict[str, Any] | None = None,
        default_size: int = DEFAULT_SIZE,
        default_text_guidance: float = OFFICIAL_TEXT_GUIDANCE,
    ) -> None:
        """The defaults are the official ones unless a model was tuned otherwise (the bundled one: 64, 2.5).
        default_size: the output side when no size is given and no single reference sets it (the official 1024, where
        a model trained at 64 x 64 draws nothing); default_text_guidance: the text guidance when none is given (the
        official 5.0, too strong for a small model)."""
        self.transformer = transformer
        self.vae = vae
        self.text_encoder = text_encoder
        self.scheduler_config = {"num_train_timesteps": 1000, "dynamic_time_shift": True, **(scheduler_config or {})}
        self.default_size = default_size
        self.default_text_guidance = default_text_guidance

    def text_guidance(self, text_guidance_scale: float | None) -> float:
        """The text guidance asked for, or this model's default."""
        return self.default_text_guidance if text_guidance_scale is None else text_guidance_scale

    def with_loras(self, loras: Sequence[LoraSpec], replace: bool = False) -> "OmniGen2":
        """A new model with `loras` [(path, strength), ...] merged into a copy of the weights they change, on top of
        the LoRAs this one has (replace=True: instead of them; [] then gives the model without LoRAs, bit for bit).
        This model is not changed. See omni_core/lora/."""
        return apply_loras(self, loras, replace)

    @property
    def device(self) -> torch.device:
        return execution_device(self.transformer)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.transformer.parameters()).dtype

    @torch.no_grad()
    def encode_condition(
        self,
        prompt: str,
        negative_prompt: str | None = None,
        images: Sequence[ImageLike] | None = None,
        max_pixels: int = 1024 * 1024,
        max_input_image_side_length: int = 1024,
    ) -> Condition:
        """Encode the prompts with the MLLM and each reference image with the VAE (posterior mean)."""
        if not isinstance(prompt, str):
            raise InvalidInputError(f"prompt must be a string, got {type(prompt).__name__}.")
        references = self.encode_references(images, max_pixels, max_input_image_side_length)
        return Condition(
            positive=self.text_encoder.encode_prompt(prompt),
            negative=self.text_encoder.encode_negative(negative_prompt),
            references=references,
            max_pixels=max_pixels,
        )

    @torch.no_grad()
    def encode_references(
        self, images: Sequence[ImageLike] | None, max_pixels: int, max_input_image_side_length: int
    ) -> tuple[ReferenceImage, ...]:
        """Each reference image resized by the official rule and VAE-encoded (posterior mean)."""
        images = list(images or [])
        check_reference_count(len(images))  # before any encoding work
        references = []
        for j, image in enumerate(images):
            pixels = preprocess_reference(image, max_pixels, max_input_image_side_length, name=f"image {j + 1}")
            latent = encode_to_latents(self.vae, pixels.to(self.device))[0]
            references.append(ReferenceImage(latent=latent, pixel_size=tuple(pixels.shape[-2:]), pixels=pixels))
        return tuple(references)

    def chat(
        self,
        prompt: str,
        images: Sequence[ImageLike] | None = None,
        negative_prompt: str | None = "",
        respond: str = "auto",
        max_new_tokens: int = 256,
        **settings: Any,
    ) -> ChatResult:
        """The dual path: the MLLM, shown the images, answers; it draws when the answer starts with `<|img|>`
        (respond "auto"), never ("text") or always ("image"). `settings` are `generate`'s (see chat.py)."""
        return run_chat(self, prompt, images, negative_prompt, respond, max_new_tokens, **settings)

    @torch.no_grad()
    def compact_condition(self, condition: Condition, condition_scale: float = 1.0, prune_ratio: float = 0.0) -> Condition:
        """The condition with fewer reference tokens: re-encoded at `condition_scale` and/or pruned (see compact.py)."""
        return compact_condition(
            condition, lambda pixels: encode_to_latents(self.vae, pixels.to(self.device)), condition_scale, prune_ratio
        )

    def output_size(
        self, condition: Condition, width: int | None, height: int | None, max_pixels: int, align_res: bool | None
    ) -> tuple[tuple[int, int], tuple[int, int]]:
        """(sampled (H, W), delivered (H, W)) by the official rules.

        With exactly one reference and align_res (by default: when no size is given) the output takes the
        reference's processed size; otherwise the requested size (default `default_size`, officially 1024) scaled to
        max_pixels and floored to multiples of 16 is sampled, and the decoded image is resized back to the requested
        size.
        """
        if align_res is None:
            align_res = width is None and height is None
        if align_res and len(condition.references) == 1:
            size = tuple(condition.references[0].pixel_size)
            return size, size
        requested = (self.default_size if height is None else height, self.default_size if width is None else width)
        return check_output_size(requested[0], requested[1], max_pixels), requested

    @torch.no_grad()
    def sample(
        self,
        condition: Condition,
        width: int | None = None,
        height: int | None = None,
        steps: int = 50,
        text_guidance_scale: float | None = None,
        image_guidance_scale: float = 2.0,
        cfg_range: Sequence[float] = (0.0, 1.0),
        seed: int = 0,
        num_images: int = 1,
        max_pixels: int | None = None,
        align_res: bool | None = None,
        progress: Progress | None = None,
        cache_per_n_steps: int | None = None,
        independent_condition: bool | None = None,
        condition_timestep: float = 1.0,
        step_cache: StepCache | None = None,
        condition_features: ConditionFeatureStore | None = None,
    ) -> GenerationResult:
        """Denoise `num_images` latents from seeded noise under `condition` and decode them.

        text_guidance_scale None: the model's default (`default_text_guidance`: the official 5.0, the bundled model's
        2.5). max_pixels bounds the sampled size (default: the condition's, as given to `encode_condition`).
        cache_per_n_steps: compute reference features on steps 0, n, 2n, ... and reuse them in between (None: no
        reuse; n > steps: once). independent_condition: references attend only to themselves at
        `condition_timestep` (OminiControl2's asymmetric mask; exact to reuse); default: what the model was trained
        with (`transformer.config.independent_condition`). condition_features: with caching and the independent
        condition, keeps each reference image's condition-branch features across calls (see `reflect`).
        step_cache: None (every step computes), `TeaCache(...)` or `TaylorSeer(...)` from omni_core.step_cache: guidance
        passes skip the joint blocks on some steps and estimate them (see step_cache.py); composes with the above.
        """
        max_pixels = condition.max_pixels if max_pixels is None else max_pixels
        (sample_h, sample_w), delivered = self.output_size(condition, width, height, max_pixels, align_res)
        options = SamplingOptions(
            steps, self.text_guidance(text_guidance_scale), image_guidance_scale, tuple(cfg_range), seed,
            num_images, cache_per_n_steps, independent_condition, condition_timestep, step_cache,
        )
        latent_size = (sample_h // LATENT_FACTOR, sample_w // LATENT_FACTOR)
        latents, stats = self._denoise(condition, latent_size, options, progress, store=condition_features)
        images = postprocess(decode_latents(self.vae, latents), delivered)
        return GenerationResult(images=images, latents=latents, stats={**stats, "sampled_size": [sample_h, sample_w]})

    @torch.no_grad()
    def repaint(
        self,
        condition: Condition,
        image: ImageLike,
        mask,
        steps: int = 50,
        text_guidance_scale: float | None = None,
        image_guidance_scale: float = 2.0,
        cfg_range: Sequence[float] = (0.0, 1.0),
        seed: int = 0,
        num_images: int = 1,
        max_pixels: int | None = None,
        max_input_image_side_length: int = 1024,
        progress: Progress | None = None,
        cache_per_n_steps: int | None = None,
        independent_condition: bool | None = None,
        step_cache: StepCache | None = None,
    ) -> GenerationResult:
        """Regenerate the masked region (mask 1) of `image` under `condition` (from `encode_condition`: the prompt,
        in which the canvas is image 1, and up to 4 further references, images 2..5).

        Token integration: the canvas outside the mask is reference image 1 (its known tokens only) and only the
        masked tokens are noise; pixels outside the mask come back exactly as given (see repaint.py). The canvas is
        sized like a reference image: max_pixels (default: the condition's) and max_input_image_side_length.
        """
        array = image_array(image, "image")
        original = to_pil(array, "image")
        soft_mask = to_mask(mask, (original.height, original.width))
        check_reference_count(len(condition.references), detail=" in the condition", reserved_for="the canvas (image 1)")
        max_pixels = condition.max_pixels if max_pixels is None else max_pixels
        pixels = preprocess_reference(original, max_pixels, max_input_image_side_length, name="image")
        canvas = encode_to_latents(self.vae, pixels.to(self.device))[0]
        repainted = token_mask(soft_mask, tuple(pixels.shape[-2:]))
        noise_index = repainted.flatten().nonzero()[:, 0]
        known_index = (~repainted).flatten().nonzero()[:, 0]
        if len(noise_index) == 0:
            raise InvalidInputError("mask selects no region to repaint (it is empty or too thin); paint the area to change.")
        canvas_reference = ReferenceImage(canvas, tuple(pixels.shape[-2:]), keep_index=known_index, pixels=pixels)
        known = (canvas_reference,) if len(known_index) else ()
        condition = dataclasses.replace(condition, references=known + condition.references, fingerprint="")
        options = SamplingOptions(
            steps, self.text_guidance(text_guidance_scale), image_guidance_scale, tuple(cfg_range), seed,
            num_images, cache_per_n_steps, independent_condition, step_cache=step_cache,
        )
        latents, stats = self._denoise(condition, tuple(canvas.shape[-2:]), options, progress, noise_index)
        latents = stitch_latents(canvas, latents, repainted)
        decoded = postprocess(decode_latents(self.vae, latents), (original.height, original.width))
        images_out = stitch_pixels(original_pixels(array, original), decoded, soft_mask)
        stats = {**stats, "canvas_tokens": repainted.numel(), "sampled_size": list(pixels.shape[-2:])}
        return GenerationResult(images=images_out, latents=latents, stats=stats)

    def _denoise(
        self,
        condition: Condition,
        latent_size: tuple[int, int],
        options: SamplingOptions,
        progress: Progress | None,
        noise_token_index: torch.Tensor | None = None,
        store: ConditionFeatureStore | None = None,
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """The sampling loop shared by `sample` and `repaint`: seeded noise to final latents, and the run's figures."""
        cfg_range = _check_guidance(options.text_guidance_scale, options.image_guidance_scale, options.cfg_range)
        steps, cache_per_n_steps, num_images = options.steps, options.cache_per_n_steps, options.num_images
        if cache_per_n_steps is not None and (not isinstance(cache_per_n_steps, int) or cache_per_n_steps < 1):
            raise InvalidInputError(f"cache_per_n_steps must be a whole number >= 1 or None, got {cache_per_n_steps!r}.")
        independent_condition = options.independent_condition
        if independent_condition is None:
            independent_condition = self.transformer.config.independent_condition
        if not isinstance(num_images, int) or num_images < 1:
            raise InvalidInputError(f"num_images must be a whole number >= 1, got {num_images!r}.")
        timesteps = flow_timesteps(
            steps, latent_size[0] * latent_size[1], self.scheduler_config.get("dynamic_time_shift", True)
        ).to(self.device)
        noise = initial_noise(options.seed, num_images, self.transformer.config.in_channels, latent_size).to(self.device)
        cache = ReferenceFeatureCache(cache_per_n_steps) if cache_per_n_steps is not None else None
        step_cache = (
            StepCacheRun(options.step_cache, steps, self.transformer.config.teacache_coefficients)
            if options.step_cache is not None else None
        )
        passes = TransformerPasses(
            self.transformer, condition, cache, independent_condition, options.condition_timestep, noise_token_index,
            step_cache, store,
        )
        velocity = GuidedVelocity(
            passes,
            condition.positive,
            condition.negative,
            has_references=bool(condition.references),
            steps=steps,
            text_scale=options.text_guidance_scale,
            image_scale=options.image_guidance_scale,
            cfg_range=cfg_range,
        )
        step_seconds: list[float] = []
        clock = [time.perf_counter()]

        def on_step(info: dict) -> None:
            now = time.perf_counter()
            step_seconds.append(now - clock[0])
            clock[0] = now
            if progress is not None:
                progress(info["i"] + 1, steps, info["denoised"])

        try:
            latents = sample_euler(velocity, noise, timesteps, callback=on_step)
        finally:  # also on cancel or error: no cached features or step-cache state outlive the run
            if cache is not None:
                cache.clear()
            if step_cache is not None:
                step_cache.clear()
        if not torch.isfinite(latents).all():
            raise OmniGen2Error(explain_non_finite(self.transformer, condition, self.dtype))
        grid_tokens = (latent_size[0] // 2) * (latent_size[1] // 2)
        stats = {
            "steps": steps,
            "seconds_per_step": sum(step_seconds) / max(len(step_seconds), 1),
            "noise_tokens": grid_tokens if noise_token_index is None else len(noise_token_index),
            "reference_images": len(condition.references),
            "reference_tokens": sum(ref.num_tokens for ref in condition.references),
            "tokens_saved_by_compaction": sum(ref.full_size_tokens - ref.num_tokens for ref in condition.references),
            "cache_per_n_steps": cache_per_n_steps,
            "independent_condition": independent_condition,
            **passes.stats(),
            **(step_cache.stats() if step_cache is not None else {"step_cache": None}),
        }
        return latents, stats

    def generate(
        self,
        prompt: str,
        negative_prompt: str | None = None,
        images: Sequence[ImageLike] | None = None,
        width: int | None = None,
        height: int | None = None,
        steps: int = 50,
        text_guidance_scale: float | None = None,
        image_guidance_scale: float = 2.0,
        cfg_range: Sequence[float] = (0.0, 1.0),
        max_pixels: int = 1024 * 1024,
        max_input_image_side_length: int = 1024,
        seed: int = 0,
        num_images: int = 1,
        align_res: bool | None = None,
        progress: Progress | None = None,
        cache_per_n_steps: int | None = None,
        independent_condition: bool | None = None,
        step_cache: StepCache | None = None,
    ) -> GenerationResult:
        """Text-to-image, editing or in-context generation in one call (see `encode_condition` and `sample`)."""
        condition = self.encode_condition(prompt, negative_prompt, images, max_pixels, max_input_image_side_length)
        return self.sample(
            condition,
            width=width,
            height=height,
            steps=steps,
            text_guidance_scale=text_guidance_scale,
            image_guidance_scale=image_guidance_scale,
            cfg_range=cfg_range,
            seed=seed,
            num_images=num_images,
            max_pixels=max_pixels,
            align_res=align_res,
            progress=progress,
            cache_per_n_steps=cache_per_n_steps,
            independent_condition=independent_condition,
            step_cache=step_cache,
        )

    def reflect(
        self,
        prompt: str | Condition,
        images: Sequence[ImageLike] | None = None,
        max_rounds: int = 3,
        judge: Any = None,
        on_round: RoundCallback | None = None,
        **settings: Any,
    ) -> ReflectionResult:
        """Generate, let a judge look at the result, regenerate with its correction until it is satisfied or
        `max_rounds` ran (see reflection.py). judge: None (this model's MLLM, see judges.py), a local
        vision-language model folder, or a callable judge(question, images) -> str. settings: `generate`'s."""
        return reflect(self, prompt, images, max_rounds, resolve_judge(self, judge), on_round=on_round, **settings)

