"""The chat node: OmniGen2's dual path in one node. The MLLM sees the images and answers; it draws when it asks to."""

from __future__ import annotations

import torch

from omni_core import chat

from . import bridge
from .condition import IMAGE_INPUTS, IMAGE_LIMIT_WIDGETS, NEGATIVE_PROMPT_WIDGET, compact_widgets
from .sampler import (
    BATCH_SIZE_WIDGET, GUIDANCE_CACHE_WIDGETS, INDEPENDENT_CONDITION_WIDGET, SEED_STEPS_WIDGETS, SIZE_WIDGETS,
    STEP_CACHE_WIDGETS,
)

# What the IMAGE output holds when the turn only answered: a black 64 x 64 picture. Every IMAGE consumer (Save
# Image, Preview Image, ...) needs at least one row, and a copy of an input image would pass for a drawing.
TEXT_ONLY_IMAGE_SIZE = 64

_IMAGE_TOOLTIP = ("Optional image {i}: the MLLM sees it as <img{i}>, and a drawing uses it as reference image {i} "
                  "('image {i}' in the prompt). Every row of a batch counts as one image; at most 5 images in total.")


def text_only_image() -> torch.Tensor:
    """The IMAGE a turn without a drawing returns (see TEXT_ONLY_IMAGE_SIZE)."""
    return bridge.to_comfy_image(torch.zeros(1, 3, TEXT_ONLY_IMAGE_SIZE, TEXT_ONLY_IMAGE_SIZE))


class OmniGen2Chat:
    TITLE = "OmniGen2 Chat"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (bridge.MODEL_TYPE, {"tooltip": "The model from Load OmniGen2."}),
                "prompt": ("STRING", {
                    "multiline": True, "dynamicPrompts": True, "default": "",
                    "tooltip": "What to ask about the images, or what to draw; refer to them as 'image 1' ..."}),
                **NEGATIVE_PROMPT_WIDGET,
                "respond": (list(chat.RESPONSES), {
                    "default": "auto",
                    "tooltip": "auto: draw when the model's answer starts with <|img|> (the official chat), "
                               "else answer in text. text: answer only. image: always draw."}),
                "max_new_tokens": ("INT", {
                    "default": 256, "min": 0, "max": 4096,
                    "tooltip": "Longest answer in tokens (official: 256). 0 only with respond = image: draw "
                               "without an answer."}),
                **SEED_STEPS_WIDGETS,
                **SIZE_WIDGETS,
                **GUIDANCE_CACHE_WIDGETS,
                **BATCH_SIZE_WIDGET,
                **INDEPENDENT_CONDITION_WIDGET,
                **IMAGE_LIMIT_WIDGETS,
                **compact_widgets(condition_scale=1.0),  # off unless asked: a drawing then uses fewer reference tokens
                **STEP_CACHE_WIDGETS,
            },
            "optional": {name: ("IMAGE", {"tooltip": _IMAGE_TOOLTIP.format(i=i)}) for i, name in enumerate(IMAGE_INPUTS, 1)},
        }

    OUTPUT_NODE = True  # its answer shows on the node (web/omnigen2_stats.js), so it runs with nothing downstream
    RETURN_TYPES = ("STRING", "IMAGE")
    RETURN_NAMES = ("answer", "image")
    OUTPUT_TOOLTIPS = (
        "The model's answer (an answer that drew starts with <|img|>).",
        f"The drawing; when the turn only answered, a black {TEXT_ONLY_IMAGE_SIZE}x{TEXT_ONLY_IMAGE_SIZE} image, so "
        "Save Image downstream still works.",
    )
    FUNCTION = "chat"
    CATEGORY = bridge.CATEGORY
    DESCRIPTION = (
        "OmniGen2's dual path: Qwen2.5-VL sees the images and answers; when it answers with <|img|> (or respond = "
        "image) the transformer draws from that conversation, with the Cached Sampler's guidance and caching. Use it "
        "to ask about images, or to draw from what the model understood of them."
    )

    def chat(self, model, prompt, negative_prompt, respond, max_new_tokens, **widgets):
        model = bridge.check_model(model)
        shown = bridge.collect_images(**{name: widgets.pop(name) for name in IMAGE_INPUTS if name in widgets})
        options = bridge.sampling_options(widgets)
        with model.on_device("text_encoder", "vae"):
            # the answer's tokens on the progress bar, and Cancel between them
            answer_progress = bridge.progress_callback(max_new_tokens) if max_new_tokens else None
            turn = chat.take_turn(model.engine, prompt, shown, negative_prompt, respond, max_new_tokens, options,
                                  answer_progress)
        if turn.condition is None:
            result, image = chat.finish_turn(model.engine, turn), text_only_image()
        else:
            with model.on_device("transformer", "vae") as device:
                progress = bridge.progress_callback(options.steps, device)
                result = chat.finish_turn(model.engine, turn, options, progress)
            image = bridge.to_comfy_image(result.images)
        return {"ui": bridge.sampler_ui({**result.stats, "answer": result.text}), "result": (result.text, image)}
