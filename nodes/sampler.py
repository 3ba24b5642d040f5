"""The sampling nodes: OmniGen2's Euler flow sampler with dual guidance, cfg range and reference-feature caching,
and repainting a masked region with it."""

from __future__ import annotations

from omni_core.guidance import OFFICIAL_TEXT_GUIDANCE
from omni_core.image_processing import MAX_OUTPUT_SIDE
from omni_core.options import SamplingOptions
from omni_core.step_cache import STEP_CACHE_CHOICES, TaylorSeer, TeaCache

from . import bridge

DEFAULTS = SamplingOptions()

# Widgets both samplers show, in the order the Cached Sampler has always had (saved workflows list values by order).
SEED_STEPS_WIDGETS = {
    "seed": ("INT", {
        "default": DEFAULTS.seed, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True,
        "tooltip": "Noise seed. The noise is drawn on the CPU, so a seed gives the same image on any "
                   "device."}),
    "steps": ("INT", {"default": DEFAULTS.steps, "min": 1, "max": 1000, "tooltip": "Sampling steps (official: 50)."}),
}
SIZE_WIDGETS = {
    "width": ("INT", {
        "default": 0, "min": 0, "max": MAX_OUTPUT_SIDE, "step": 16,
        "tooltip": "Output width; 0 = automatic: one reference image sets the size (edits), otherwise "
                   "1024 (the bundled model: 64, its training size) scaled to max_pixels."}),
    "height": ("INT", {
        "default": 0, "min": 0, "max": MAX_OUTPUT_SIDE, "step": 16,
        "tooltip": "Output height; 0 = automatic (see width)."}),
}
GUIDANCE_CACHE_WIDGETS = {
    "text_guidance": ("FLOAT", {
        "default": OFFICIAL_TEXT_GUIDANCE, "min": 1.0, "max": 20.0, "step": 0.1, "round": 0.01,
        "tooltip": "How strongly the prompt steers the image (official: 5.0). 1 = no text guidance."}),
    "image_guidance": ("FLOAT", {
        "default": DEFAULTS.image_guidance_scale, "min": 1.0, "max": 10.0, "step": 0.1, "round": 0.01,
        "tooltip": "How closely the result follows the reference images (official: 2.0; edits 1.2-2.0, "
                   "in-context 2.5-3.0). Ignored without reference images."}),
    "cfg_range_start": ("FLOAT", {
        "default": DEFAULTS.cfg_range[0], "min": 0.0, "max": 1.0, "step": 0.05,
        "tooltip": "Guidance is applied from this fraction of the steps..."}),
    "cfg_range_end": ("FLOAT", {
        "default": DEFAULTS.cfg_range[1], "min": 0.0, "max": 1.0, "step": 0.05,
        "tooltip": "...up to this fraction; later steps run one pass only (0.6 saves about 20%)."}),
    "cache_per_n_steps": ("INT", {
        "default": 0, "min": 0, "max": 1000,
        "tooltip": "Reference-feature cache: recompute the reference images' keys/values every n steps and "
                   "reuse them in between (n >= steps: compute once). 0 = off, exact official results."}),
}
BATCH_SIZE_WIDGET = {
    "batch_size": ("INT", {"default": DEFAULTS.num_images, "min": 1, "max": 16, "tooltip": "Images per run (seeds seed, seed+1, ...)."}),
}
INDEPENDENT_CONDITION_WIDGET = {
    "independent_condition": (list(bridge.INDEPENDENT_CONDITION), {
        "default": "auto",
        "tooltip": "joint: every token sees every token (official OmniGen2). independent: each reference "
                   "image sees only itself, at a clean timestep (OminiControl2's asymmetric mask): with "
                   "caching its features are computed once per run, exactly - use it with models or "
                   "LoRAs trained that way. auto: what the loaded model was trained with."}),
}

# Step caching, last in every sampler's widgets (saved workflows list values by order, so new widgets go at the end).
STEP_CACHE_WIDGETS = {
    "step_cache": (list(STEP_CACHE_CHOICES), {
        "default": "none",
        "tooltip": "Skip the transformer on some steps and estimate its output (official OmniGen2 options). "
                   "teacache: skips while the input changed little (official 0.05: about 1.3x). taylorseer: "
                   "computes the first 5 steps, then one in every interval and predicts the rest (up to 2x). "
                   "Combines with the reference cache. none = every step computes, exact."}),
    "teacache_threshold": ("FLOAT", {
        "default": TeaCache.threshold, "min": 0.0, "max": 2.0, "step": 0.01, "round": 0.001,
        "tooltip": "TeaCache: how much change to accumulate before computing a step again (official 0.05; "
                   "higher is faster and less exact; calibrated for the released model)."}),
    "taylorseer_order": ("INT", {
        "default": TaylorSeer.order, "min": 0, "max": 8,
        "tooltip": "TaylorSeer: order of the Taylor series that predicts skipped steps (official 4; 0 = reuse "
                   "the last computed output)."}),
    "taylorseer_interval": ("INT", {
        "default": TaylorSeer.interval, "min": 1, "max": 50,
        "tooltip": "TaylorSeer: after the first 5 steps, compute one step in every interval (official 3; 1 = "
                   "every step)."}),
}


def sampler_outputs(model, result) -> dict:
    """IMAGE and LATENT of a result, and the stats the web extension shows on the node."""
    outputs = (bridge.to_comfy_image(result.images), bridge.to_comfy_latent(model.engine, result.latents))
    return {"ui": bridge.sampler_ui(result.stats), "result": outputs}


class OmniGen2CachedSampler:
    TITLE = "OmniGen2 Cached Sampler"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (bridge.MODEL_TYPE, {"tooltip": "The model from Load OmniGen2."}),
                "condition": (bridge.CONDITION_TYPE, {"tooltip": "From OmniGen2 Condition Encode (or Compact)."}),
                **SEED_STEPS_WIDGETS,
                **SIZE_WIDGETS,
                **GUIDANCE_CACHE_WIDGETS,
                **BATCH_SIZE_WIDGET,
                **INDEPENDENT_CONDITION_WIDGET,
                **STEP_CACHE_WIDGETS,
            }
        }

    RETURN_TYPES = ("IMAGE", "LATENT")
    OUTPUT_TOOLTIPS = ("The generated images.", "The same images as a LATENT in ComfyUI's raw FLUX-VAE space.")
    FUNCTION = "sample"
    CATEGORY = bridge.CATEGORY
    DESCRIPTION = (
        "Samples OmniGen2 images with text and image guidance, a guidance step range, optional reuse of the "
        "reference images' features across steps and optional step caching (TeaCache, TaylorSeer). Shows steps, "
        "reused tokens, skipped steps and time per step on the node."
    )

    def sample(self, model, condition, **widgets):
        model = bridge.check_model(model)
        options = bridge.sampling_options(widgets)
        with model.on_device("transformer", "vae") as device:
            progress = bridge.progress_callback(options.steps, device)
            return sampler_outputs(model, model.engine.sample(condition, options, progress=progress))


class OmniGen2Repaint:
    TITLE = "OmniGen2 Repaint"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (bridge.MODEL_TYPE, {"tooltip": "The model from Load OmniGen2."}),
                "condition": (bridge.CONDITION_TYPE, {
                    "tooltip": "From OmniGen2 Condition Encode: the prompt describes the change and sees the picture "
                               "as image 1; the condition's own reference images become images 2..5."}),
                "image": ("IMAGE", {"tooltip": "The picture to repaint (one image)."}),
                "mask": ("MASK", {"tooltip": "1 where to repaint, 0 where to keep (e.g. Load Image's mask, painted in "
                                             "the mask editor); the picture's size."}),
                **SEED_STEPS_WIDGETS,
                **GUIDANCE_CACHE_WIDGETS,
                **BATCH_SIZE_WIDGET,
                **INDEPENDENT_CONDITION_WIDGET,
                **STEP_CACHE_WIDGETS,
            }
        }

    RETURN_TYPES = ("IMAGE", "LATENT")
    OUTPUT_TOOLTIPS = (
        "The picture with the masked region regenerated; every pixel outside the mask is the input's.",
        "The repainted canvas as a LATENT in ComfyUI's raw FLUX-VAE space.",
    )
    FUNCTION = "repaint"
    CATEGORY = bridge.CATEGORY
    DESCRIPTION = (
        "Regenerates the masked region of a picture with OmniGen2. Token integration: the rest of the picture enters "
        "as reference tokens and only the masked tokens are denoised, so a small mask costs a fraction of a full "
        "edit; the result is stitched back, leaving everything outside the mask untouched."
    )

    def repaint(self, model, condition, image, mask, **widgets):
        model = bridge.check_model(model)
        canvas, region = bridge.single_image(image, "image"), bridge.single_mask(mask, "mask")
        options = bridge.sampling_options(widgets)
        with model.on_device("transformer", "vae") as device:
            progress = bridge.progress_callback(options.steps, device)
            return sampler_outputs(model, model.engine.repaint(condition, canvas, region, options, progress=progress))
