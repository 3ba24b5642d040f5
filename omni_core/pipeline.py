"""OmniGen2 end to end: prompts and images to a condition, a condition to images. The API nodes, CLI and tests use.

`encode_condition` runs the MLLM and the VAE encoder once; `sample` can then be called many times (new seeds,
sizes, steps) without re-encoding. `generate` is both in one call with the official pipeline's defaults.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, Sequence

import torch

from .chat import ChatResult, run_chat
from .compact import compact_condition
from .condition import Condition, ReferenceImage, check_reference_count
from .denoise import denoise
from .device_dtype import execution_device
from .errors import InvalidInputError
from .guidance import OFFICIAL_TEXT_GUIDANCE
from .interface import GenerationResult, Progress
from .image_processing import ImageLike, check_output_size, image_array, postprocess, preprocess_reference, to_pil
from .judges import resolve_judge
from .lora import LoraSpec, transformer_with_loras
from .options import DEFAULT_MAX_PIXELS, DEFAULT_MAX_SIDE, SamplingOptions
from .reference_cache import ConditionFeatureStore
from .reflection import ReflectionResult, RoundCallback, reflect
from .repaint import original_pixels, stitch_latents, stitch_pixels, to_mask, token_mask
from .text_encoder import TextEncoder
from .transformer import OmniGen2Transformer
from .vae import decode_latents, encode_to_latents

DEFAULT_SIZE = 1024  # the official default_sample_size 128 x VAE factor 8
LATENT_FACTOR = 8


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

    def with_loras(self, loras: Sequence[LoraSpec], replace: bool = False) -> "OmniGen2":
        """A new model with `loras` [(path, strength), ...] merged into a copy of the weights they change, on top of
        the LoRAs this one has (replace=True: instead of them; [] then gives the model without LoRAs, bit for bit).
        This model is not changed. See omni_core/lora/."""
        return self.with_transformer(transformer_with_loras(self.transformer, loras, replace))

    def with_transformer(self, transformer: OmniGen2Transformer) -> "OmniGen2":
        """A new model handle over `transformer`, sharing the VAE, the text encoder and the defaults with this one."""
        result = copy.copy(self)
        result.transformer = transformer
        return result

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
        max_pixels: int = DEFAULT_MAX_PIXELS,
        max_input_image_side_length: int = DEFAULT_MAX_SIDE,
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
        options: SamplingOptions | None = None,
        *,
        progress: Progress | None = None,
        **changes: Any,
    ) -> ChatResult:
        """The dual path: the MLLM, shown the images, answers; it draws when the answer starts with `<|img|>`
        (respond "auto"), never ("text") or always ("image"), with `options` (fields of `SamplingOptions` may be given
        as keywords). See chat.py."""
        options = SamplingOptions.of(options, **changes)
        return run_chat(self, prompt, images, negative_prompt, respond, max_new_tokens, options, progress)

    @torch.no_grad()
    def compact_condition(self, condition: Condition, condition_scale: float = 1.0, prune_ratio: float = 0.0) -> Condition:
        """The condition with fewer reference tokens: re-encoded at `condition_scale` and/or pruned (see compact.py)."""
        return compact_condition(
            condition, lambda pixels: encode_to_latents(self.vae, pixels.to(self.device)), condition_scale, prune_ratio
        )

    def compacted(self, condition: Condition, options: SamplingOptions) -> Condition:
        """The condition as `options` ask an entry point that encodes it to use it: compacted when asked."""
        if options.condition_scale == 1.0 and not options.prune_ratio:
            return condition
        return self.compact_condition(condition, options.condition_scale, options.prune_ratio)

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
        options: SamplingOptions | None = None,
        *,
        progress: Progress | None = None,
        condition_features: ConditionFeatureStore | None = None,
        **changes: Any,
    ) -> GenerationResult:
        """Denoise `options.num_images` latents from seeded noise under `condition` and decode them.

        options: a `SamplingOptions`, or its fields as keywords (see options.py for each). The output size follows
        `output_size`; max_pixels bounds it (default: the condition's, as given to `encode_condition`); the fields
        that shape encoding do nothing here. progress(step, steps, denoised) after each step; raising in it cancels.
        condition_features: with caching and the independent condition, keeps each reference image's
        condition-branch features across calls (see `reflect`).
        """
        options = SamplingOptions.of(options, **changes)
        (sample_h, sample_w), delivered = self.output_size(
            condition, options.width, options.height, options.max_pixels_or(condition.max_pixels), options.align_res
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
        options: SamplingOptions | None = None,
        *,
        progress: Progress | None = None,
        **changes: Any,
    ) -> GenerationResult:
        """Regenerate the masked region (mask 1) of `image` under `condition` (from `encode_condition`: the prompt,
        in which the canvas is image 1, and up to 4 further references, images 2..5).

        Token integration: the canvas outside the mask is reference image 1 (its known tokens only) and only the
        masked tokens are noise; pixels outside the mask come back exactly as given (see repaint.py). The canvas is
        sized like a reference image: options.max_pixels (default: the condition's) and max_input_image_side_length;
        the output has the picture's size (width, height and align_res do nothing here).
        """
        options = SamplingOptions.of(options, **changes)
        array = image_array(image, "image")
        original = to_pil(array, "image")
        soft_mask = to_mask(mask, (original.height, original.width))
        check_reference_count(len(condition.references), detail=" in the condition", reserved_for="the canvas (image 1)")
        pixels = preprocess_reference(
            original, options.max_pixels_or(condition.max_pixels), options.max_input_image_side_length, name="image"
        )
        canvas = encode_to_latents(self.vae, pixels.to(self.device))[0]
        repainted = token_mask(soft_mask, tuple(pixels.shape[-2:]))
        noise_index = repainted.flatten().nonzero()[:, 0]
        known_index = (~repainted).flatten().nonzero()[:, 0]
        if len(noise_index) == 0:
            raise InvalidInputError("mask selects no region to repaint (it is empty or too thin); paint the area to change.")
        canvas_reference = ReferenceImage(canvas, tuple(pixels.shape[-2:]), keep_index=known_index, pixels=pixels)
        known = (canvas_reference,) if len(known_index) else ()
        condition = dataclasses.replace(condition, references=known + condition.references, fingerprint="")
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
        """`denoise` with this model's transformer, defaults and schedule."""
        return denoise(
            self.transformer, condition, latent_size, options, progress,
            default_text_guidance=self.default_text_guidance,
            dynamic_time_shift=self.scheduler_config.get("dynamic_time_shift", True),
            noise_token_index=noise_token_index, store=store,
        )

    def encode(
        self, prompt: str, negative_prompt: str | None, images: Sequence[ImageLike] | None, options: SamplingOptions
    ) -> Condition:
        """`encode_condition` with the encoding fields of `options`, compacted when they ask for it."""
        condition = self.encode_condition(
            prompt, negative_prompt, images, options.encoding_max_pixels, options.max_input_image_side_length
        )
        return self.compacted(condition, options)

    def generate(
        self,
        prompt: str,
        negative_prompt: str | None = None,
        images: Sequence[ImageLike] | None = None,
        options: SamplingOptions | None = None,
        *,
        progress: Progress | None = None,
        **changes: Any,
    ) -> GenerationResult:
        """Text-to-image, editing or in-context generation in one call: `encode` then `sample` with `options` (or
        its fields as keywords)."""
        options = SamplingOptions.of(options, **changes)
        return self.sample(self.encode(prompt, negative_prompt, images, options), options, progress=progress)

    def reflect(
        self,
        prompt: str | Condition,
        images: Sequence[ImageLike] | None = None,
        max_rounds: int = 3,
        judge: Any = None,
        negative_prompt: str | None = None,
        options: SamplingOptions | None = None,
        *,
        on_round: RoundCallback | None = None,
        progress: Progress | None = None,
        **changes: Any,
    ) -> ReflectionResult:
        """Generate, let a judge look at the result, regenerate with its correction until it is satisfied or
        `max_rounds` ran (see reflection.py). judge: None (this model's MLLM, see judges.py), a local
        vision-language model folder, or a callable judge(question, images) -> str. options: as `generate`'s."""
        options = SamplingOptions.of(options, **changes)
        judge = resolve_judge(self.text_encoder, judge)
        return reflect(self, prompt, images, max_rounds, judge, negative_prompt, options, on_round, progress)
