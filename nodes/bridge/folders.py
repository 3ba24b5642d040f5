"""Where model files come from: `models/omnigen2` (diffusers-layout folders) and `models/vlm` (judges) registered
with ComfyUI next to its standard folders, or roots from environment variables outside ComfyUI.

Loader, LoRA and Reflect nodes list their choices and resolve the chosen name to a path here, with an error that says
where to put the files when it is not found.

Inside ComfyUI a name resolves only when it is one of the choices listed here: ComfyUI checks a dropdown's value only
when it is typed, and a linked input (a string from a Primitive through a Switch) could otherwise name any path,
absolute or with `..`. The refusal is the same whether such a path exists or not, so it tells a caller nothing about
the disk. Scripts outside ComfyUI may still give existing absolute paths.
"""

from __future__ import annotations

import os
from typing import Callable

import omni_core
from omni_core.errors import ModelFileError

from .host import IN_COMFYUI, folder_paths, model_management

MODEL_FOLDER_KEY = "omnigen2"  # models/omnigen2: one diffusers-layout folder per model (transformer/ vae/ mllm/ ...)
TRANSFORMER_FOLDER_KEY = "diffusion_models"  # ComfyUI's own folders for the single-file release
TEXT_ENCODER_FOLDER_KEY = "text_encoders"
VAE_FOLDER_KEY = "vae"
LORA_FOLDER_KEY = "loras"
# Outside ComfyUI, extra model roots come from this variable (os.pathsep-separated), e.g. for scripts.
MODEL_DIRS_ENV = "OMNIGEN2_MODEL_DIRS"
JUDGE_FOLDER_KEY = "vlm"  # models/vlm: vision-language model folders (e.g. Qwen2.5-VL-Instruct) the Reflect node can judge with
JUDGE_DIRS_ENV = "OMNIGEN2_JUDGE_DIRS"  # outside ComfyUI, as MODEL_DIRS_ENV
# The model choice that means the small OmniGen2 bundled with the pack (omni_core/default_model), offered first so a
# fresh ComfyUI with no downloads has a model to run.
BUNDLED_MODEL_CHOICE = "bundled: default model"
# The LoRA choice that means the bundled model's independent-condition LoRA (OminiControl2's asymmetric mask, so the
# sampler computes reference features once), offered first by the LoRA node.
BUNDLED_LORA_CHOICE = "bundled: independent condition (default model)"
BUNDLED_LORA = omni_core.DEFAULT_MODEL_DIR / omni_core.INDEPENDENT_CONDITION_LORA
# The tokenizer choice that means "the tokenizer ComfyUI ships for its own Qwen2.5 text encoders".
COMFY_TOKENIZER_CHOICE = "comfyui: qwen25_tokenizer"


def register_folders() -> None:
    """Register `models/omnigen2` and `models/vlm` with ComfyUI (once; a no-op outside ComfyUI). The standard
    folders exist already."""
    if not IN_COMFYUI:
        return
    for key in (MODEL_FOLDER_KEY, JUDGE_FOLDER_KEY):
        folder_paths.add_model_folder_path(key, os.path.join(folder_paths.models_dir, key), is_default=True)


def _unlisted(name: str, what: str, fix: str) -> ModelFileError:
    """The error for a name that is not one of the listed choices: the same words whether a path of that name exists
    or not."""
    return ModelFileError(f"{what} '{name}' is not one of the choices listed. {fix}")


def _script_path(name: str, exists: Callable[[str], bool]) -> bool:
    """Whether `name` is an existing absolute path given by a script: never inside ComfyUI, where only listed names
    resolve."""
    return not IN_COMFYUI and bool(name) and os.path.isabs(name) and exists(name)


def _roots(key: str = MODEL_FOLDER_KEY, env: str = MODEL_DIRS_ENV) -> list[str]:
    if IN_COMFYUI:
        return list(folder_paths.get_folder_paths(key))
    return [p for p in os.environ.get(env, "").split(os.pathsep) if p]


def _folder_names(key: str, env: str, is_folder: Callable[[str], bool]) -> list[str]:
    """The names of the folders directly under the roots of `key` that `is_folder` accepts: a folder node's choices."""
    names = set()
    for root in _roots(key, env):
        if os.path.isdir(root):
            names.update(n for n in os.listdir(root) if is_folder(os.path.join(root, n)))
    return sorted(names)


def _listed_folder(name: str, key: str, env: str, is_folder: Callable[[str], bool]) -> str | None:
    """The path of `name` when it is one of `_folder_names` (the first root that holds it), else None: only a listed
    name resolves, so no absolute path or `..` reaches past the roots."""
    if name not in _folder_names(key, env, is_folder):
        return None
    return next(os.path.join(r, name) for r in _roots(key, env) if is_folder(os.path.join(r, name)))


def is_model_folder(path: str) -> bool:
    """A diffusers-layout OmniGen2 root: it has `model_index.json` or a `transformer/` folder."""
    return os.path.isfile(os.path.join(path, "model_index.json")) or os.path.isdir(os.path.join(path, "transformer"))


def list_model_folders() -> list[str]:
    """The bundled model first, then the diffusers-layout folders found directly under every `omnigen2` root."""
    return [BUNDLED_MODEL_CHOICE, *_folder_names(MODEL_FOLDER_KEY, MODEL_DIRS_ENV, is_model_folder)]


def resolve_model_folder(name: str) -> str:
    """The full path of a model folder chosen from `list_model_folders()` (or an existing absolute path, for
    scripts)."""
    if not name:
        raise ModelFileError("No OmniGen2 model folder chosen. Put a diffusers-layout folder under models/omnigen2.")
    if name == BUNDLED_MODEL_CHOICE:
        return str(omni_core.DEFAULT_MODEL_DIR)
    if _script_path(name, os.path.isdir):
        return name
    found = _listed_folder(name, MODEL_FOLDER_KEY, MODEL_DIRS_ENV, is_model_folder)
    if found is not None:
        return found
    roots = "models/omnigen2" if IN_COMFYUI else (_roots() or f"(none: set {MODEL_DIRS_ENV})")
    raise _unlisted(
        name, "OmniGen2 model folder",
        f"Choose a folder listed from {roots}: download OmniGen2/OmniGen2 (diffusers layout) into "
        "models/omnigen2/<name>/ and refresh, or pick single files with 'Load OmniGen2 (single files)'.",
    )


def is_judge_folder(path: str) -> bool:
    """A transformers model folder (config.json), or an OmniGen2-style root with mllm/ (its MLLM judges)."""
    return os.path.isfile(os.path.join(path, "config.json")) or os.path.isdir(os.path.join(path, "mllm"))


def list_judge_folders() -> list[str]:
    """Names of the model folders directly under every registered `vlm` root."""
    return _folder_names(JUDGE_FOLDER_KEY, JUDGE_DIRS_ENV, is_judge_folder)


def resolve_judge_folder(name: str) -> str:
    """The full path of a judge folder chosen from `list_judge_folders()` (or an existing absolute path, for
    scripts)."""
    if _script_path(name, os.path.isdir):
        return name
    found = _listed_folder(name, JUDGE_FOLDER_KEY, JUDGE_DIRS_ENV, is_judge_folder)
    if found is not None:
        return found
    raise _unlisted(
        name, "Judge folder",
        f"Put a vision-language model folder (e.g. Qwen2.5-VL-7B-Instruct, safetensors with its processor files) into "
        f"models/{JUDGE_FOLDER_KEY}/<name>/, refresh and choose it.",
    )


def list_files(folder_key: str) -> list[str]:
    """Weight files ComfyUI lists for one of its folders (empty outside ComfyUI, where paths are given directly)."""
    if IN_COMFYUI:
        return [f for f in folder_paths.get_filename_list(folder_key) if f.endswith((".safetensors", ".sft"))]
    return []


def resolve_file(folder_key: str, name: str) -> str:
    """The full path of a file chosen from `list_files(folder_key)` (or an existing absolute path, for scripts)."""
    if _script_path(name, os.path.exists):
        return name
    if name in list_files(folder_key):
        path = folder_paths.get_full_path(folder_key, name)
        if path is not None:
            return path
    raise _unlisted(name, f"models/{folder_key} file",
                    f"Put the file into ComfyUI's models/{folder_key} folder, refresh and choose it.")


def list_loras() -> list[str]:
    """The bundled model's independent-condition LoRA first, then the LoRA files of ComfyUI's models/loras."""
    return [BUNDLED_LORA_CHOICE, *list_files(LORA_FOLDER_KEY)]


def resolve_lora(name: str) -> str:
    """The full path of a LoRA chosen from `list_loras()` (or an existing absolute path, for scripts)."""
    if name == BUNDLED_LORA_CHOICE:
        if not BUNDLED_LORA.is_file():
            raise ModelFileError(f"The bundled LoRA {BUNDLED_LORA} is missing: reinstall the pack, or make it with "
                                 "python -m omni_core.training.shapes.make_default_model --output omni_core/default_model.")
        return str(BUNDLED_LORA)
    return resolve_file(LORA_FOLDER_KEY, name)


def list_tokenizers() -> list[str]:
    """Tokenizer sources for the single-file loader: model folders that hold `processor/`, then ComfyUI's own copy."""
    choices = [n for n in list_model_folders() if _processor_dir_of(n) is not None]
    if _comfy_tokenizer_dir() is not None:
        choices.append(COMFY_TOKENIZER_CHOICE)
    return choices


def _processor_dir_of(name: str) -> str | None:
    try:
        folder = resolve_model_folder(name)
    except ModelFileError:
        return None
    for sub in ("processor", "tokenizer"):
        if os.path.isdir(os.path.join(folder, sub)):
            return os.path.join(folder, sub)
    return None


def _comfy_tokenizer_dir() -> str | None:
    if not IN_COMFYUI:
        return None
    # ComfyUI ships the Qwen2.5 tokenizer files for its own OmniGen2 / Qwen-Image text encoders, in comfy/.
    comfy_dir = os.path.dirname(os.path.abspath(model_management.__file__))
    path = os.path.join(comfy_dir, "text_encoders", "qwen25_tokenizer")
    return path if os.path.isdir(path) else None


def resolve_tokenizer(name: str) -> str:
    """The tokenizer folder for a choice from `list_tokenizers()` (or an existing folder path, for scripts)."""
    if name == COMFY_TOKENIZER_CHOICE and _comfy_tokenizer_dir() is not None:
        return _comfy_tokenizer_dir()
    if _script_path(name, os.path.isdir):
        return name
    found = _processor_dir_of(name) if name else None
    if found is None:
        raise _unlisted(
            name, "Tokenizer source",
            "The single-file text encoder holds no tokenizer: choose a model folder with a processor/ subfolder under "
            "models/omnigen2, or ComfyUI's qwen25_tokenizer.",
        )
    return found
