"""Loader nodes: an OmniGen2 diffusers folder from models/omnigen2, or the single files from ComfyUI's folders."""

from __future__ import annotations

from . import bridge

_DTYPE_TOOLTIP = (
    "Weight dtype. auto: what the device handles best (bf16 on recent GPUs, fp32 on the CPU). fp8_e4m3fn stores the "
    "transformer's and the text encoder's projections in 8 bits (about half the VRAM of bf16) and computes in bf16; "
    "fp8 and scaled fp8 transformer files stay in 8 bits whatever is chosen."
)


class LoadOmniGen2:
    TITLE = "Load OmniGen2"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model_folder": (bridge.list_model_folders(), {
                    "tooltip": "A diffusers-layout OmniGen2 folder (transformer/ vae/ mllm/ processor/ scheduler/) "
                               "under models/omnigen2, or the small model bundled with the pack (first; needs no "
                               "download)."}),
                "weight_dtype": (bridge.WEIGHT_DTYPES, {"default": "auto", "tooltip": _DTYPE_TOOLTIP}),
            }
        }

    RETURN_TYPES = (bridge.MODEL_TYPE,)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The OmniGen2 transformer, VAE and Qwen2.5-VL text encoder, managed by ComfyUI's memory manager.",)
    FUNCTION = "load"
    CATEGORY = bridge.CATEGORY
    DESCRIPTION = "Loads an OmniGen2 model (the OmniGen2/OmniGen2 diffusers release) from models/omnigen2."

    def load(self, model_folder, weight_dtype):
        return (bridge.load_model(bridge.resolve_model_folder(model_folder), weight_dtype),)


class LoadOmniGen2SingleFiles(LoadOmniGen2):
    TITLE = "Load OmniGen2 (single files)"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "transformer": (bridge.list_files(bridge.TRANSFORMER_FOLDER_KEY), {
                    "tooltip": "The OmniGen2 transformer as one file in models/diffusion_models "
                               "(e.g. omnigen2_fp16.safetensors)."}),
                "text_encoder": (bridge.list_files(bridge.TEXT_ENCODER_FOLDER_KEY), {
                    "tooltip": "The Qwen2.5-VL-3B text encoder in models/text_encoders "
                               "(e.g. qwen_2.5_vl_fp16.safetensors)."}),
                "vae": (bridge.list_files(bridge.VAE_FOLDER_KEY), {
                    "tooltip": "The FLUX VAE in models/vae (ae.safetensors; BFL or diffusers key layout)."}),
                "tokenizer": (bridge.list_tokenizers(), {
                    "tooltip": "Where the Qwen2.5 tokenizer comes from (the single text encoder file has none): a "
                               "models/omnigen2 folder with processor/, or the copy ComfyUI ships (it has no <|img|> "
                               "token, so OmniGen2 Chat's respond = auto needs the processor/ folder)."}),
                "weight_dtype": (bridge.WEIGHT_DTYPES, {"default": "auto", "tooltip": _DTYPE_TOOLTIP}),
            }
        }

    DESCRIPTION = "Loads OmniGen2 from ComfyUI's single files: diffusion_models, text_encoders and vae."

    def load(self, transformer, text_encoder, vae, tokenizer, weight_dtype):
        files = {
            "transformer": bridge.resolve_file(bridge.TRANSFORMER_FOLDER_KEY, transformer),
            "vae": bridge.resolve_file(bridge.VAE_FOLDER_KEY, vae),
            "text_encoder": bridge.resolve_file(bridge.TEXT_ENCODER_FOLDER_KEY, text_encoder),
            "tokenizer": bridge.resolve_tokenizer(tokenizer),
        }
        return (bridge.load_model(files, weight_dtype),)
