"""Conditioning nodes: encode a prompt and reference images once; shrink the reference tokens for speed."""

from __future__ import annotations

from omni_core.options import DEFAULT_MAX_PIXELS, DEFAULT_MAX_SIDE

from . import bridge

IMAGE_INPUTS = tuple(f"image_{i}" for i in range(1, 6))  # the optional IMAGE sockets (Chat and Reflect share them)
_IMAGE_TOOLTIP = ("Optional reference image {i} (image {i} in the prompt). Every row of a batch counts as one image; "
                  "at most 5 images in total.")

# Shared with the Chat node (saved workflows list widget values by order: keep it).
NEGATIVE_PROMPT_WIDGET = {
    "negative_prompt": ("STRING", {
        "multiline": True, "dynamicPrompts": True, "default": "",
        "tooltip": "What to avoid. Empty is the official default."}),
}
IMAGE_LIMIT_WIDGETS = {
    "max_pixels": ("INT", {
        "default": DEFAULT_MAX_PIXELS, "min": 256, "max": 4096 * 4096, "step": 256,
        "tooltip": "Reference images larger than this many pixels are scaled down (aspect kept); also "
                   "caps the automatic output size."}),
    "max_input_image_side_length": ("INT", {
        "default": DEFAULT_MAX_SIDE, "min": 16, "max": 4096, "step": 16,
        "tooltip": "Reference images whose longer side exceeds this are scaled down."}),
}


class OmniGen2ConditionEncode:
    TITLE = "OmniGen2 Condition Encode"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (bridge.MODEL_TYPE, {"tooltip": "The model from Load OmniGen2."}),
                "prompt": ("STRING", {
                    "multiline": True, "dynamicPrompts": True, "default": "",
                    "tooltip": "What to generate, or the edit instruction; refer to references as 'image 1' ..."}),
                **NEGATIVE_PROMPT_WIDGET,
                **IMAGE_LIMIT_WIDGETS,
            },
            "optional": {f"image_{i}": ("IMAGE", {"tooltip": _IMAGE_TOOLTIP.format(i=i)}) for i in range(1, 6)},
        }

    RETURN_TYPES = (bridge.CONDITION_TYPE,)
    RETURN_NAMES = ("condition",)
    OUTPUT_TOOLTIPS = ("The encoded prompt, negative prompt and reference latents, reusable by several samplers.",)
    FUNCTION = "encode"
    CATEGORY = bridge.CATEGORY
    DESCRIPTION = (
        "Encodes the prompt with OmniGen2's Qwen2.5-VL and up to 5 reference images with its VAE. No images: "
        "text-to-image; one image: instruction edit; several: in-context generation."
    )

    def encode(self, model, prompt, negative_prompt, max_pixels, max_input_image_side_length, **images):
        model = bridge.check_model(model)
        references = bridge.collect_images(**{k: images.get(k) for k in sorted(images)})
        options = bridge.sampling_options(
            {"max_pixels": max_pixels, "max_input_image_side_length": max_input_image_side_length}
        )
        with model.on_device("text_encoder", "vae"):
            condition = model.engine.encode(prompt, negative_prompt, references, options)
        return (condition,)


def compact_widgets(condition_scale: float) -> dict:
    """The compact-condition widgets (OminiControl2's fewer reference tokens), with the node's default scale."""
    return {
        "condition_scale": ("FLOAT", {
            "default": condition_scale, "min": 0.125, "max": 1.0, "step": 0.125,
            "tooltip": "Encode reference tokens at this fraction of their size (0.5: a quarter of the tokens); "
                       "their positions are stretched back so they still cover the whole image. 1 = off."}),
        "prune_ratio": ("FLOAT", {
            "default": 0.0, "min": 0.0, "max": 0.9, "step": 0.05,
            "tooltip": "Drop this fraction of the reference tokens that carry the least information. 0 = off."}),
    }


class OmniGen2CompactCondition:
    TITLE = "OmniGen2 Compact Condition"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (bridge.MODEL_TYPE, {"tooltip": "The model from Load OmniGen2 (its VAE re-encodes the "
                                                         "references smaller)."}),
                "condition": (bridge.CONDITION_TYPE, {"tooltip": "A condition from OmniGen2 Condition Encode."}),
                **compact_widgets(condition_scale=0.5),
            }
        }

    RETURN_TYPES = (bridge.CONDITION_TYPE,)
    RETURN_NAMES = ("condition",)
    OUTPUT_TOOLTIPS = ("A new condition with fewer reference tokens; the input condition is left unchanged.",)
    FUNCTION = "compact"
    CATEGORY = bridge.CATEGORY
    DESCRIPTION = (
        "OminiControl2-style compact conditions: fewer reference tokens, so each step costs less. Approximate; "
        "best with Cached Sampler for multi-image in-context generation."
    )

    def compact(self, model, condition, condition_scale, prune_ratio):
        model = bridge.check_model(model)
        with model.on_device("vae"):
            compact = model.engine.compact_condition(condition, condition_scale=condition_scale, prune_ratio=prune_ratio)
        return (compact,)
