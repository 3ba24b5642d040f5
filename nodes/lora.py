"""The OmniGen2 LoRA node: a model in, the same model with one more LoRA out (the input is left as it was)."""

from __future__ import annotations

from . import bridge


class OmniGen2LoRA:
    TITLE = "OmniGen2 LoRA"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (bridge.MODEL_TYPE, {"tooltip": "The OmniGen2 model to add the LoRA to (it is not changed)."}),
                "lora_name": (bridge.list_loras(), {
                    "tooltip": "A LoRA for OmniGen2's transformer in models/loras: ours, PEFT, diffusers, ComfyUI or "
                               "kohya key names (safetensors only); first, the bundled model's independent-condition "
                               "LoRA."}),
                "strength": ("FLOAT", {
                    "default": 1.0, "min": -10.0, "max": 10.0, "step": 0.01,
                    "tooltip": "How much of the LoRA to add: 0 leaves the model as it is, negative values subtract it."}),
            }
        }

    RETURN_TYPES = (bridge.MODEL_TYPE,)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The model with the LoRA applied; chain several LoRA nodes to combine LoRAs.",)
    FUNCTION = "apply"
    CATEGORY = bridge.CATEGORY
    DESCRIPTION = (
        "Applies a LoRA to OmniGen2's transformer. A LoRA trained with independent_condition makes the asymmetric "
        "reference mask the sampler's 'auto' choice."
    )

    def apply(self, model, lora_name, strength):
        path = bridge.resolve_lora(lora_name)
        return (bridge.model_with_lora(bridge.check_model(model), path, strength),)
