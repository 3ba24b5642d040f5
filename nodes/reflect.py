"""The reflection node: generate, let a judge look at the result, regenerate with its correction (omni_core/reflection.py)."""

from __future__ import annotations

import torch

from omni_core.errors import InvalidInputError

from . import bridge
from .condition import _IMAGE_TOOLTIP, IMAGE_INPUTS, IMAGE_LIMIT_WIDGETS, NEGATIVE_PROMPT_WIDGET
from .sampler import (
    GUIDANCE_CACHE_WIDGETS, INDEPENDENT_CONDITION_WIDGET, SEED_STEPS_WIDGETS, SIZE_WIDGETS, STEP_CACHE_WIDGETS,
)

OWN_MLLM = "own MLLM"  # the judge choice that means the loaded model's Qwen2.5-VL (omni_core/judges.py)


class OmniGen2Reflect:
    TITLE = "OmniGen2 Reflect"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (bridge.MODEL_TYPE, {"tooltip": "The model from Load OmniGen2."}),
                "prompt": ("STRING", {
                    "multiline": True, "dynamicPrompts": True, "default": "",
                    "tooltip": "The instruction (refer to the image inputs as 'image 1' ...). Leave it empty when a "
                               "condition is connected: the condition's prompt is the instruction then."}),
                **NEGATIVE_PROMPT_WIDGET,
                "max_rounds": ("INT", {
                    "default": 3, "min": 1, "max": 10,
                    "tooltip": "At most this many generations. Each round is judged; the loop stops early when the "
                               "judge is satisfied or names nothing to fix."}),
                "judge": ([OWN_MLLM, *bridge.list_judge_folders()], {
                    "default": OWN_MLLM,
                    "tooltip": f"Who looks at each result: the model's own Qwen2.5-VL ({OWN_MLLM}), or a "
                               f"vision-language model folder under models/{bridge.JUDGE_FOLDER_KEY} (Qwen2-VL family, "
                               "e.g. Qwen2.5-VL-7B-Instruct), loaded for the run."}),
                **SEED_STEPS_WIDGETS,
                **SIZE_WIDGETS,
                **GUIDANCE_CACHE_WIDGETS,
                **INDEPENDENT_CONDITION_WIDGET,
                **IMAGE_LIMIT_WIDGETS,
                **STEP_CACHE_WIDGETS,
            },
            "optional": {
                "condition": (bridge.CONDITION_TYPE, {
                    "tooltip": "Instead of prompt + images: a condition from OmniGen2 Condition Encode (or Compact)."}),
                **{name: ("IMAGE", {"tooltip": _IMAGE_TOOLTIP.format(i=i)}) for i, name in enumerate(IMAGE_INPUTS, 1)},
            },
        }

    RETURN_TYPES = ("IMAGE", "IMAGE", "STRING")
    RETURN_NAMES = ("image", "rounds", "transcript")
    OUTPUT_TOOLTIPS = (
        "The last round's image.",
        "Every round's image in order, as one batch (all rounds have round 1's size).",
        "Per round the instruction used, the judge's answer, its verdict and correction, and why the loop stopped.",
    )
    FUNCTION = "reflect"
    CATEGORY = bridge.CATEGORY
    DESCRIPTION = (
        "OmniGen2's reflection: generates, shows the result to a judge with the instruction, and regenerates with "
        "the judge's correction and the previous result as one more reference image, until the judge is satisfied "
        "or max_rounds. Each round costs one generation plus one judge answer."
    )

    def reflect(self, model, prompt, negative_prompt, max_rounds, judge, condition=None, **widgets):
        model = bridge.check_model(model)
        images = bridge.collect_images(**{name: widgets.pop(name, None) for name in IMAGE_INPUTS})
        source = _source(condition, prompt, negative_prompt, images)
        options = bridge.sampling_options(widgets)
        judge_folder = None if judge == OWN_MLLM else bridge.resolve_judge_folder(judge)
        with model.on_device("transformer", "vae", "text_encoder") as device:
            on_round, progress = bridge.round_progress(max_rounds, options.steps, device)
            result = model.engine.reflect(
                **source, max_rounds=max_rounds, judge=judge_folder, options=options, on_round=on_round,
                progress=progress,
            )
        stats = {**result.rounds[-1].stats, "rounds": len(result.rounds), "stop_reason": result.stop_reason}
        rounds = torch.cat([r.image for r in result.rounds])
        outputs = (bridge.to_comfy_image(result.final), bridge.to_comfy_image(rounds), result.transcript())
        return {"ui": bridge.sampler_ui(stats), "result": outputs}


def _source(condition, prompt: str, negative_prompt: str, images) -> dict:
    """What to reflect on, as `reflect` takes it: a condition, or a prompt with its images."""
    if condition is not None:
        if prompt.strip() or images:
            raise InvalidInputError(
                "a condition is connected: it brings the prompt and the images, so clear 'prompt' and disconnect "
                "the image inputs (or disconnect the condition)."
            )
        return {"prompt": condition}
    if not prompt.strip():
        raise InvalidInputError("enter a prompt, or connect a condition from OmniGen2 Condition Encode.")
    return {"prompt": prompt, "negative_prompt": negative_prompt, "images": images}
