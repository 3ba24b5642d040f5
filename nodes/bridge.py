"""The one place that knows whether the pack runs inside ComfyUI, and every convention at that boundary.

Inside ComfyUI this module imports `folder_paths`, `comfy.model_management`, `comfy.model_patcher`, `comfy.utils`
and `latent_preview`; nothing else in the pack does. Outside ComfyUI (tests, scripts) the same functions run on the
CPU with plain torch: model files are given as paths, progress is a no-op unless asked for, and a cancel request is a
flag set by `request_interrupt()`.

What lives here, in order: host detection; model folders (`models/omnigen2` plus ComfyUI's standard folders); weight
dtypes; the model handle that takes part in ComfyUI's memory management; input conversion (IMAGE rows, sizes, guidance
ranges); progress, previews and cancel; output conversion (IMAGE, raw-VAE LATENT, stats for the front-end).
"""

from __future__ import annotations

import copy
import inspect
import math
import os
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch

import omni_core
from omni_core.condition import MAX_REFERENCE_IMAGES
from omni_core.errors import InvalidInputError, ModelFileError
from omni_core.lora import Lora, check_loras_fit, lora_stack, resolve_loras, shallow_transformer

try:  # ComfyUI puts these on sys.path before it loads custom nodes; anywhere else they are absent.
    import comfy.model_management as model_management
    import comfy.model_patcher as model_patcher
    import comfy.utils as comfy_utils
    import folder_paths
except ImportError:
    IN_COMFYUI = False
    model_management = model_patcher = comfy_utils = folder_paths = None
else:
    IN_COMFYUI = True


# Socket types the pack adds to ComfyUI's graph; the core ones (IMAGE, LATENT, INT, ...) are ComfyUI's.
MODEL_TYPE = "OMNIGEN2_MODEL"
CONDITION_TYPE = "OMNIGEN2_CONDITION"
CATEGORY = "OmniGen2"

# ---------------------------------------------------------------------------------------------------------------------
# Model folders
# ---------------------------------------------------------------------------------------------------------------------

MODEL_FOLDER_KEY = "omnigen2"  # models/omnigen2: one diffusers-layout folder per model (transformer/ vae/ mllm/ ...)
TRANSFORMER_FOLDER_KEY = "diffusion_models"  # ComfyUI's own folders for the single-file release
TEXT_ENCODER_FOLDER_KEY = "text_encoders"
VAE_FOLDER_KEY = "vae"
LORA_FOLDER_KEY = "loras"
# Outside ComfyUI, extra model roots come from this variable (os.pathsep-separated), e.g. for scripts.
MODEL_DIRS_ENV = "OMNIGEN2_MODEL_DIRS"
# The model choice that means the small OmniGen2 bundled with the pack (omni_core/default_model), offered first so a
# fresh ComfyUI with no downloads has a model to run.
BUNDLED_MODEL_CHOICE = "bundled: default model"
# The tokenizer choice that means "the tokenizer ComfyUI ships for its own Qwen2.5 text encoders".
COMFY_TOKENIZER_CHOICE = "comfyui: qwen25_tokenizer"


def register_folders() -> None:
    """Register `models/omnigen2` with ComfyUI (once; a no-op outside ComfyUI). The standard folders exist already."""
    if not IN_COMFYUI:
        return
    folder_paths.add_model_folder_path(
        MODEL_FOLDER_KEY, os.path.join(folder_paths.models_dir, MODEL_FOLDER_KEY), is_default=True
    )


def _model_roots() -> list[str]:
    if IN_COMFYUI:
        return list(folder_paths.get_folder_paths(MODEL_FOLDER_KEY))
    return [p for p in os.environ.get(MODEL_DIRS_ENV, "").split(os.pathsep) if p]


def is_model_folder(path: str) -> bool:
    """A diffusers-layout OmniGen2 root: it has `model_index.json` or a `transformer/` folder."""
    return os.path.isfile(os.path.join(path, "model_index.json")) or os.path.isdir(os.path.join(path, "transformer"))


def list_model_folders() -> list[str]:
    """The bundled model first, then the diffusers-layout folders found directly under every `omnigen2` root."""
    names = set()
    for root in _model_roots():
        if os.path.isdir(root):
            names.update(n for n in os.listdir(root) if is_model_folder(os.path.join(root, n)))
    return [BUNDLED_MODEL_CHOICE, *sorted(names)]


def resolve_model_folder(name: str) -> str:
    """The full path of a model folder chosen by name (or given as an existing absolute path, for scripts)."""
    if not name:
        raise ModelFileError("No OmniGen2 model folder chosen. Put a diffusers-layout folder under models/omnigen2.")
    if name == BUNDLED_MODEL_CHOICE:
        return str(omni_core.DEFAULT_MODEL_DIR)
    if os.path.isabs(name) and os.path.isdir(name):
        return name
    for root in _model_roots():
        candidate = os.path.join(root, name)
        if os.path.isdir(candidate):
            return candidate
    roots = _model_roots() or [f"(none: set {MODEL_DIRS_ENV})"]
    raise ModelFileError(
        f"OmniGen2 model folder '{name}' not found in {roots}. Download OmniGen2/OmniGen2 (diffusers layout) into "
        "models/omnigen2/<name>/ or pick single files with 'Load OmniGen2 (single files)'."
    )


def list_files(folder_key: str) -> list[str]:
    """Weight files ComfyUI lists for one of its folders (empty outside ComfyUI, where paths are given directly)."""
    if IN_COMFYUI:
        return [f for f in folder_paths.get_filename_list(folder_key) if f.endswith((".safetensors", ".sft"))]
    return []


def resolve_file(folder_key: str, name: str) -> str:
    """The full path of a file chosen from a ComfyUI folder (or an existing absolute path, for scripts)."""
    if name and os.path.isabs(name) and os.path.exists(name):
        return name
    if IN_COMFYUI and name:
        path = folder_paths.get_full_path(folder_key, name)
        if path is not None:
            return path
    raise ModelFileError(f"'{name}' not found in ComfyUI's models/{folder_key} folder. Put the file there and refresh.")


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
    if name and os.path.isabs(name) and os.path.isdir(name):
        return name
    found = _processor_dir_of(name) if name else None
    if found is None:
        raise ModelFileError(
            f"No tokenizer for '{name}'. The single-file text encoder holds no tokenizer: choose a model folder with a "
            "processor/ subfolder under models/omnigen2, or ComfyUI's qwen25_tokenizer."
        )
    return found


# ---------------------------------------------------------------------------------------------------------------------
# Devices and weight dtypes
# ---------------------------------------------------------------------------------------------------------------------

WEIGHT_DTYPES = ("auto", "bf16", "fp16", "fp32", "fp8_e4m3fn")
_NAMED_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def load_device() -> torch.device:
    """Where sampling runs: ComfyUI's torch device, or the CPU outside ComfyUI."""
    return model_management.get_torch_device() if IN_COMFYUI else torch.device("cpu")


def offload_device() -> torch.device:
    """Where weights wait between runs: ComfyUI's offload device, or the CPU outside ComfyUI."""
    return model_management.unet_offload_device() if IN_COMFYUI else torch.device("cpu")


def output_device() -> torch.device:
    """Where IMAGE and LATENT outputs live (ComfyUI's intermediate device; the CPU outside it)."""
    return model_management.intermediate_device() if IN_COMFYUI else torch.device("cpu")


@dataclass(frozen=True)
class WeightDtypes:
    """The dtype weights are loaded in (`compute`) and, for fp8, the narrower dtype transformer weights are stored in."""

    compute: torch.dtype
    storage: torch.dtype | None = None  # None: stored as computed


def weight_dtypes(choice: str) -> WeightDtypes:
    """Resolve the loader's weight dtype choice. 'auto' asks ComfyUI what the device handles (fp32 on the CPU)."""
    if choice not in WEIGHT_DTYPES:
        raise InvalidInputError(f"weight_dtype '{choice}' is not one of {WEIGHT_DTYPES}.")
    if choice == "fp8_e4m3fn":
        return WeightDtypes(torch.bfloat16, torch.float8_e4m3fn)
    if choice != "auto":
        return WeightDtypes(_NAMED_DTYPES[choice])
    if not IN_COMFYUI:
        return WeightDtypes(torch.float32)
    device = load_device()
    if model_management.should_use_bf16(device):
        return WeightDtypes(torch.bfloat16)
    if model_management.should_use_fp16(device):
        return WeightDtypes(torch.float16)
    return WeightDtypes(torch.float32)


# ---------------------------------------------------------------------------------------------------------------------
# The model handle passed between nodes
# ---------------------------------------------------------------------------------------------------------------------

PARTS = ("transformer", "vae", "text_encoder")


@dataclass(eq=False)
class OmniGen2Model:
    """What travels on an OMNIGEN2_MODEL socket: the engine model, plus ComfyUI patchers for its three modules.

    Inside ComfyUI each module is wrapped in a `ModelPatcher`, so `comfy.model_management` loads it to the GPU when a
    node needs it (`on_device`) and offloads it when another model needs the memory, like its own models.
    """

    engine: Any
    source: str
    patchers: dict[str, Any] = field(default_factory=dict)

    @contextmanager
    def on_device(self, *parts: str) -> Iterator[torch.device]:
        """Load the named modules where computation runs for the duration of a node's work; yields that device."""
        if IN_COMFYUI and self.patchers:
            model_management.load_models_gpu([self.patchers[p] for p in parts], force_full_load=True)
            yield self.patchers[parts[0]].load_device
        else:
            yield next(part_module(self.engine, parts[0]).parameters()).device


def part_module(engine: Any, part: str) -> torch.nn.Module:
    """The torch module behind one part of the engine (the text encoder wraps its MLLM with the tokenizer)."""
    module = getattr(engine, part)
    return module if isinstance(module, torch.nn.Module) else module.mllm


class _ManagedPart(torch.nn.Module):
    """A plain holder for one engine module, handed to ComfyUI's `ModelPatcher`.

    The patcher writes bookkeeping attributes (`device`, `model_loaded_weight_memory`, ...) onto its model; diffusers
    and transformers models have a read-only `device` property, so they get this holder instead of being touched.
    """

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.module = module
        self.device = next(module.parameters()).device


# One holder class per part, so ComfyUI's log says what it loads ("Requested to load OmniGen2Transformer").
_MANAGED = {p: type("OmniGen2" + p.title().replace("_", ""), (_ManagedPart,), {}) for p in PARTS}


def _part_dtypes(dtypes: WeightDtypes) -> dict[str, torch.dtype]:
    """Text encoder and VAE dtypes next to the transformer's; inside ComfyUI the VAE follows its VAE dtype rule."""
    if not IN_COMFYUI:
        return {}
    # bf16 or fp32 only, as ComfyUI's own FLUX VAE: in fp16 the FLUX VAE overflows (dark or black images).
    vae = model_management.vae_dtype(model_management.vae_device(), [torch.bfloat16, torch.float32])
    return {"text_encoder_dtype": dtypes.compute, "vae_dtype": vae}


def _part_devices(part: str) -> tuple[torch.device, torch.device]:
    """(load, offload) devices ComfyUI assigns to this kind of model (its --cpu-vae etc. options apply)."""
    if part == "text_encoder":
        return model_management.text_encoder_device(), model_management.text_encoder_offload_device()
    if part == "vae":
        return model_management.vae_device(), model_management.vae_offload_device()
    return model_management.get_torch_device(), model_management.unet_offload_device()


def load_model(source: str | dict[str, str], dtype_choice: str) -> OmniGen2Model:
    """Load an OmniGen2 model from a folder or single files, in the chosen dtypes, ready for ComfyUI memory management."""
    dtypes = weight_dtypes(dtype_choice)
    engine = omni_core.load_model(
        source, device=offload_device(), dtype=dtypes.compute, transformer_storage_dtype=dtypes.storage,
        **_part_dtypes(dtypes),
    )
    patchers = {}
    if IN_COMFYUI:
        patchers = {
            p: model_patcher.ModelPatcher(_MANAGED[p](part_module(engine, p)), *_part_devices(p)) for p in PARTS
        }
    label = source if isinstance(source, str) else ", ".join(f"{k}={os.path.basename(v)}" for k, v in source.items())
    return OmniGen2Model(engine=engine, source=label, patchers=patchers)


def comfy_lora_patches(lora: Lora) -> dict[str, Any]:
    """The LoRA as ComfyUI weight patches on the transformer's ModelPatcher (keys of `_ManagedPart`'s state dict),
    made by ComfyUI's own LoRA loader from the file's modules under their OmniGen2 names."""
    import comfy.lora

    state_dict, to_load = {}, {}
    for name, module in lora.modules.items():
        state_dict.update({
            f"{name}.lora_up.weight": module.up,
            f"{name}.lora_down.weight": module.down,
            f"{name}.alpha": torch.tensor(module.scale * module.rank),  # ComfyUI scales by alpha / rank
        })
        to_load[name] = f"module.{name}.weight"
    return comfy.lora.load_lora(state_dict, to_load, log_missing=False)


def model_with_lora(model: OmniGen2Model, path: str, strength: float) -> OmniGen2Model:
    """A new model handle with one more LoRA; `model` (which ComfyUI may have cached for other nodes) is unchanged.

    Outside ComfyUI the engine merges it into a copy of the weights it changes (`OmniGen2.with_loras`). Inside, the
    transformer's ModelPatcher is cloned and given the LoRA as weight patches, as ComfyUI's own LoRA loader does:
    ComfyUI merges them when it loads the model and restores the weights when another clone needs them, so the
    weights exist once. The engine then gets a transformer object over the same modules that carries the LoRA's
    config default and cache fingerprint.
    """
    label = f"{model.source} + {os.path.basename(path)}@{strength:g}"
    if not model.patchers:
        return OmniGen2Model(engine=model.engine.with_loras([(path, strength)]), source=label)
    stack = lora_stack(model.engine.transformer)
    added = resolve_loras([(path, strength)])
    check_loras_fit(stack.base, added)
    engine = copy.copy(model.engine)
    engine.transformer = shallow_transformer(stack.base, stack.applied + added)
    patcher = model.patchers["transformer"].clone()
    for entry in added:
        patcher.add_patches(comfy_lora_patches(entry.lora), entry.strength)
    return OmniGen2Model(engine=engine, source=label, patchers={**model.patchers, "transformer": patcher})


def check_model(model: Any, input_name: str = "model") -> OmniGen2Model:
    if not isinstance(model, OmniGen2Model):
        raise InvalidInputError(
            f"'{input_name}' must come from a Load OmniGen2 node; got {type(model).__name__}."
        )
    return model


# ---------------------------------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------------------------------



def collect_images(**inputs: Any) -> list[torch.Tensor] | None:
    """Reference images from IMAGE sockets, in socket order, every row of a batch counting as one image.

    Each IMAGE is float [B, H, W, 3] in 0..1; the engine takes its [H, W, 3] rows.
    """
    images: list[torch.Tensor] = []
    for name, value in inputs.items():
        if value is None:
            continue
        if not isinstance(value, torch.Tensor):
            got = f"a dict with keys {sorted(value)}" if isinstance(value, dict) else type(value).__name__
            raise InvalidInputError(f"'{name}' must be an IMAGE (float tensor [B, H, W, 3]); got {got}.")
        if value.ndim == 3:
            value = value.unsqueeze(0)
        if value.ndim != 4 or value.shape[-1] != 3 or not value.is_floating_point():
            raise InvalidInputError(
                f"'{name}' must be an IMAGE (float tensor [B, H, W, 3]); got {value.dtype} tensor of shape "
                f"{tuple(value.shape)}."
            )
        _, height, width, _ = value.shape
        if height < 1 or width < 1:
            raise InvalidInputError(f"'{name}' is empty: {width}x{height} pixels. Give an image of at least 16x16.")
        images.extend(value.unbind(0))
    if len(images) > MAX_REFERENCE_IMAGES:
        raise InvalidInputError(
            f"{len(images)} reference images given (batches count image by image); OmniGen2 takes at most "
            f"{MAX_REFERENCE_IMAGES}. Remove some or combine them into one picture."
        )
    return images or None


def single_image(image: Any, name: str) -> torch.Tensor:
    """One picture [H, W, 3] from an IMAGE socket that must hold exactly one."""
    images = collect_images(**{name: image}) or []
    if len(images) != 1:
        raise InvalidInputError(f"'{name}' holds a batch of {len(images)} images; give one (e.g. through Image From Batch).")
    return images[0]


def single_mask(mask: Any, name: str) -> torch.Tensor:
    """One mask [H, W] from a MASK socket ([H, W] or [1, H, W]); values are checked by the engine."""
    if not isinstance(mask, torch.Tensor) or mask.ndim not in (2, 3):
        got = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise InvalidInputError(f"'{name}' must be a MASK (float tensor [B, H, W]); got {got}.")
    if mask.ndim == 3 and mask.shape[0] != 1:
        raise InvalidInputError(f"'{name}' holds a batch of {mask.shape[0]} masks; give one.")
    return mask.reshape(mask.shape[-2:])


def output_size(width: int, height: int) -> dict[str, int | None]:
    """Width and height for the engine: 0 means automatic (the official pipeline's rule), for each side."""
    for name, value in (("width", width), ("height", height)):
        if value < 0 or (value and value % 16):
            raise InvalidInputError(f"{name}={value}: use 0 (automatic) or a positive multiple of 16.")
    return {"width": width or None, "height": height or None}


def image_limits(max_pixels: int, max_side: int) -> dict[str, int]:
    """The reference-image size limits, checked: both must leave room for at least one 16 x 16 patch."""
    if max_pixels < 256 or max_side < 16:
        raise InvalidInputError(
            f"max_pixels={max_pixels}, max_input_image_side_length={max_side}: reference images are resized to fit "
            "these, so use at least 256 pixels and a side of 16 (defaults 1048576 and 1024)."
        )
    return {"max_pixels": max_pixels, "max_input_image_side_length": max_side}


def cfg_range(start: float, end: float) -> tuple[float, float]:
    if not 0.0 <= start <= end <= 1.0:
        raise InvalidInputError(f"cfg range {start}..{end}: need 0 <= start <= end <= 1 (fractions of the steps).")
    return (start, end)


def cache_steps(n: int) -> int | None:
    """cache_per_n_steps for the engine: 0 turns reference caching off (every step recomputes, as officially)."""
    if n < 0:
        raise InvalidInputError(f"cache_per_n_steps={n}: use 0 (off) or a positive number of steps.")
    return n or None


REFERENCE_ATTENTION = {"auto": None, "joint": False, "independent": True}  # widget choice -> independent_condition


def independent_condition(choice: str) -> bool | None:
    """The sampler's reference_attention choice as the engine's `independent_condition` (None: the model's own)."""
    if choice not in REFERENCE_ATTENTION:
        raise InvalidInputError(f"reference_attention={choice!r}: choose one of {', '.join(REFERENCE_ATTENTION)}.")
    return REFERENCE_ATTENTION[choice]


def engine_call(function: Callable[..., Any], *args: Any, **options: Any) -> Any:
    """Call an engine method with the options that are set; None means "the engine's default".

    An option the engine does not take (an older omni_core) but the user set is an error naming it, never ignored.
    """
    options = {k: v for k, v in options.items() if v is not None}
    parameters = inspect.signature(function).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        unknown = sorted(k for k in options if k not in parameters)
        if unknown:
            raise InvalidInputError(
                f"this omni_core version does not support {unknown}; update the pack or leave them at 0 (off)."
            )
    return function(*args, **options)


# ---------------------------------------------------------------------------------------------------------------------
# Progress, previews and cancel
# ---------------------------------------------------------------------------------------------------------------------


class Interrupted(Exception):
    """Raised from the progress callback outside ComfyUI after `request_interrupt()`; the engine aborts cleanly."""


_interrupt = threading.Event()


def request_interrupt() -> None:
    """Cancel the running sampler at its next step (outside ComfyUI; inside it, ComfyUI's Cancel button does this)."""
    _interrupt.set()


def check_interrupted() -> None:
    """Raise if the user cancelled: ComfyUI's own exception inside ComfyUI, `Interrupted` outside."""
    if IN_COMFYUI:
        model_management.throw_exception_if_processing_interrupted()
    elif _interrupt.is_set():
        _interrupt.clear()
        raise Interrupted("OmniGen2 sampling cancelled")


def _previewer(device: torch.device) -> Any:
    import comfy.latent_formats
    import latent_preview

    # OmniGen2 samples in the FLUX VAE's scaled space, the space ComfyUI's Flux latent format previews.
    return latent_preview.get_previewer(device, comfy.latent_formats.Flux())


def progress_callback(
    total: int, device: torch.device | None = None, on_step: Callable[[int, int], None] | None = None
) -> Callable[[int, int, torch.Tensor | None], None]:
    """The engine's `progress(step, total, latents)`: ComfyUI's progress bar with a latent preview, and cancel."""
    bar = comfy_utils.ProgressBar(total) if IN_COMFYUI else None
    previewer = _previewer(device or load_device()) if IN_COMFYUI else None

    def progress(step: int, total: int, latents: torch.Tensor | None) -> None:
        if on_step is not None:
            on_step(step, total)
        if bar is not None:
            preview = None
            if previewer is not None and latents is not None:
                preview = previewer.decode_latent_to_preview_image("JPEG", latents[:1].float())
            bar.update_absolute(step, total, preview)
        check_interrupted()

    return progress


# ---------------------------------------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------------------------------------


def to_comfy_image(images: torch.Tensor) -> torch.Tensor:
    """Engine images [B, 3, H, W] in 0..1 to ComfyUI IMAGE [B, H, W, 3] float32 on the intermediate device."""
    return images.movedim(1, -1).clamp(0.0, 1.0).to(device=output_device(), dtype=torch.float32).contiguous()


def to_comfy_latent(engine: Any, latents: torch.Tensor) -> dict[str, torch.Tensor]:
    """Engine latents (scaled space) to a ComfyUI LATENT dict in raw VAE space, as VAEDecode / VAEEncode use it."""
    raw = omni_core.latents_to_raw(engine.vae, latents)
    return {"samples": raw.to(device=output_device(), dtype=torch.float32).contiguous()}


def _json_safe(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        value = value.tolist()
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (bool, int, str)):
        return value
    return str(value)


STATS_KEY = "omnigen2_stats"  # the key web/omnigen2_stats.js reads from the sampler's "executed" message


def sampler_ui(stats: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """The `ui` part of the sampler's return: run statistics the front-end extension shows on the node."""
    return {STATS_KEY: [_json_safe(dict(stats))]}
