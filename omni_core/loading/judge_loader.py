"""A local transformers vision-language model folder (e.g. Qwen2.5-VL-Instruct) as a reflection judge, loaded with
transformers' Auto classes from local files only (safetensors, no hub).

Layouts: a model folder (config.json + safetensors) holding its processor files, or beside a `processor/` folder
(the OmniGen2 release's `mllm/` + `processor/`), or a release root with both. Images are shown to the model the way
the chat path shows them to OmniGen2's own MLLM (`TextEncoder.generate`: `<|image_pad|>` expanded by the image
processor's merge size), so the model must be of the Qwen2-VL family; anything else is rejected by name.
transformers' own processor classes are not used: for Qwen-VL they need torchvision (see `TextEncoder`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer

from ..errors import ModelFileError
from ..text_encoder import IMAGE_PAD, TextEncoder
from .strict import check_dtype

log = logging.getLogger(__name__)

TOKENIZER_FILES = ("tokenizer.json", "vocab.json")
IMAGE_PROCESSOR_FILE = "preprocessor_config.json"


def locate_judge_folder(path: str | Path) -> tuple[Path, Path]:
    """(model folder, processor folder) of a judge folder in any accepted layout, or a ModelFileError naming what is
    missing: the folder, its config, its vision tower, its processor."""
    path = Path(path)
    if not path.is_dir():
        raise ModelFileError(f"Judge folder '{path}' does not exist. Pass a local vision-language model folder.")
    if (path / "mllm").is_dir() and not (path / "config.json").is_file():
        path = path / "mllm"
    if not (path / "config.json").is_file():
        raise ModelFileError(
            f"'{path}' holds no config.json, so it is not a transformers model folder. Pass the folder of a "
            "vision-language model such as Qwen2.5-VL-Instruct."
        )
    config = AutoConfig.from_pretrained(str(path), local_files_only=True)
    if getattr(config, "vision_config", None) is None:
        raise ModelFileError(
            f"'{path}' is a {config.model_type} model without a vision tower (its config has no vision_config): it "
            "cannot look at the result. Choose a vision-language model such as Qwen2.5-VL-Instruct."
        )
    candidates = [path, path.parent / "processor"]
    processor = next((folder for folder in candidates if (folder / IMAGE_PROCESSOR_FILE).is_file()), None)
    if processor is None:
        raise ModelFileError(
            f"'{path}' has no processor: no {IMAGE_PROCESSOR_FILE} in it or in a processor/ folder beside it, so "
            "images cannot be prepared for the model. Copy the model's processor files (preprocessor_config.json, "
            "tokenizer files, chat template) into the folder."
        )
    if not any((processor / name).is_file() for name in TOKENIZER_FILES):
        raise ModelFileError(
            f"The processor folder '{processor}' has no tokenizer ({' or '.join(TOKENIZER_FILES)}). Copy the model's "
            "tokenizer files there."
        )
    if not list(path.glob("*.safetensors")):
        raise ModelFileError(f"'{path}' has no .safetensors weights (other formats are never loaded).")
    return path, processor


def load_judge_folder(
    path: str | Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> TextEncoder:
    """The vision-language model of a judge folder with its tokenizer and image processor, ready to answer about
    images (`TextEncoder.generate`)."""
    check_dtype(dtype, "judge")
    model_dir, processor_dir = locate_judge_folder(path)
    tokenizer = AutoTokenizer.from_pretrained(str(processor_dir), local_files_only=True)
    image_processor = AutoImageProcessor.from_pretrained(str(processor_dir), local_files_only=True)
    if IMAGE_PAD not in tokenizer.get_vocab() or not hasattr(image_processor, "merge_size"):
        raise ModelFileError(
            f"The processor in '{processor_dir}' is not of the Qwen2-VL family (no {IMAGE_PAD} token or no merge "
            "size): the judge shows images the way Qwen2-VL / Qwen2.5-VL take them. Choose such a model."
        )
    try:
        model = AutoModelForImageTextToText.from_pretrained(
            str(model_dir), local_files_only=True, use_safetensors=True, dtype=dtype
        )
    except ValueError as error:  # a config transformers cannot build an image-text-to-text model from
        raise ModelFileError(f"'{model_dir}' cannot be loaded as a vision-language model: {error}") from error
    tokenizer.padding_side = "right"
    log.info("Loaded judge %s (%s) from %s", type(model).__name__, dtype, model_dir)
    return TextEncoder(model.to(device), tokenizer, image_processor)
