"""`load_model`: the three OmniGen2 models from a release folder or from ComfyUI-style single files."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Mapping, Sequence

import torch

from ..device_dtype import check_device, cpu_has_bf16_instructions, default_dtype
from ..errors import CheckpointMismatchError, ModelFileError
from ..kernel_choice import KERNEL_DTYPES, current_kernels
from ..lora import LoraSpec
from ..lora.apply import resolve_loras
from ..pipeline import OmniGen2
from .strict import check_dtype
from .text_encoder_loader import load_text_encoder
from .transformer_loader import load_transformer
from .vae_loader import load_vae

COMPONENTS = ("transformer", "vae", "text_encoder")
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent.parent / "default_model"
# The bundled model's text guidance: the best of 1.5-3.5 on unseen training-distribution prompts (docs/training.md);
# the official 5.0 is the released model's.
DEFAULT_MODEL_TEXT_GUIDANCE = 2.5
DEFAULT_MODEL_SIZE = 64  # the bundled model's training size: its output side when none is given (the release: 1024)
# The key of a folder's model_index.json under which a model tuned otherwise than the release declares its sampling
# defaults ({"size": 64, "text_guidance_scale": 2.5} for the bundled model); diffusers ignores keys starting with "_".
FOLDER_DEFAULTS_KEY = "_omni_core_defaults"
# Where a model folder keeps the independent-condition LoRA trained for it (the bundled model has one).
INDEPENDENT_CONDITION_LORA = Path("loras") / "independent_condition.safetensors"
log = logging.getLogger(__name__)


def _release_files(root: Path) -> dict[str, Path]:
    """The component paths of a diffusers-layout release folder, naming every part that is missing."""
    parts = {"transformer": root / "transformer", "vae": root / "vae", "text_encoder": root / "mllm"}
    missing = [f"{name} ({path.name}/)" for name, path in parts.items() if not path.is_dir()]
    if missing:
        raise ModelFileError(
            f"'{root}' is not an OmniGen2 release folder: it lacks {', '.join(missing)}. Point to the folder that "
            "holds transformer/, vae/, mllm/ and processor/, or pass the single files as a dict "
            "{'transformer': ..., 'vae': ..., 'text_encoder': ..., 'tokenizer': ...}."
        )
    return parts


def component_path(path_or_files: str | Path | Mapping[str, str | Path], name: str) -> Path:
    """Where one component's ('transformer', 'vae', 'text_encoder') weights are: in a release folder, or a dict."""
    if isinstance(path_or_files, Mapping):
        return Path(path_or_files[name])
    return _release_files(Path(path_or_files))[name]


def load_model(
    path_or_files: str | Path | Mapping[str, str | Path] | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    text_encoder_dtype: torch.dtype | None = None,
    vae_dtype: torch.dtype | None = None,
    transformer_storage_dtype: torch.dtype | None = None,
    text_encoder_storage_dtype: torch.dtype | None = None,
    loras: Sequence[LoraSpec] = (),
    operations: Mapping[str, SimpleNamespace] | None = None,
) -> OmniGen2:
    """Load OmniGen2 from local files only (safetensors, never pickles).

    `path_or_files` is a release folder (transformer/ vae/ mllm/ processor/ scheduler/), or a mapping with
    'transformer', 'vae' and 'text_encoder' files or folders and an optional 'tokenizer' folder (required for a
    single-file text encoder). None loads the small default model bundled with the package.
    `dtype` None takes the device's default (`device_dtype.default_dtype`: float32 on the CPU, bfloat16 on recent
    GPUs). The MLLM and VAE use `dtype` unless given their own; `transformer_storage_dtype` and
    `text_encoder_storage_dtype` (torch.float8_e4m3fn) store their projection matrices narrower, computed in `dtype`
    (an fp8 transformer file keeps its fp8 projections either way). `loras` [(path, strength), ...] are
    merged into the transformer (see `OmniGen2.with_loras`); their files are checked before the models load.
    `operations` {'transformer' | 'vae' | 'text_encoder': namespace}: a host's layer classes per part (see ops.py);
    parts not named keep ours.
    """
    device = check_device(device)
    if dtype is None:
        dtype = default_dtype(device)
        if dtype == torch.float32 and device.type == "cpu" and cpu_has_bf16_instructions():
            log.info("this CPU computes bfloat16 natively: dtype=torch.bfloat16 may run faster (see device_dtype.py)")
    check_dtype(dtype, "model")
    if device.type == "cpu" and dtype in KERNEL_DTYPES:
        # a new machine measures its kernels now, not inside the first (timed) generation; a forced path that cannot
        # run here fails now, before minutes of loading, naming it
        kernels = current_kernels(dtype)
        if dtype == torch.bfloat16 and "gemm" not in kernels.onednn_paths:
            log.warning(
                "this CPU has no bfloat16 GEMM in oneDNN (no AVX-512): bfloat16 runs on torch's generic kernels, "
                "several times slower than float32, the CPU default (see device_dtype.py)"
            )
    loras = resolve_loras(loras)  # bad LoRA files fail before minutes of loading
    if path_or_files is None:
        path_or_files = DEFAULT_MODEL_DIR
    scheduler_config: dict = {}
    tokenizer = None
    defaults: dict[str, float] = {}  # single files declare none: the official size and guidance
    if isinstance(path_or_files, Mapping):
        missing = [name for name in COMPONENTS if name not in path_or_files]
        if missing:
            raise ModelFileError(f"load_model needs files for {missing}; got only {sorted(path_or_files)}.")
        files = {name: Path(path_or_files[name]) for name in COMPONENTS}
        tokenizer = path_or_files.get("tokenizer")
    else:
        root = Path(path_or_files)
        if not root.is_dir():
            raise ModelFileError(
                f"'{root}' is not a folder. Pass an OmniGen2 release folder, or a dict of single files "
                "{'transformer': ..., 'vae': ..., 'text_encoder': ..., 'tokenizer': ...}."
            )
        files = _release_files(root)
        defaults = folder_defaults(root)  # a bad declaration fails before minutes of loading
        scheduler_file = root / "scheduler" / "scheduler_config.json"
        if scheduler_file.is_file():
            scheduler_config = json.loads(scheduler_file.read_text())
    operations = operations or {}
    transformer = load_transformer(
        files["transformer"], dtype=dtype, device=device, operations=operations.get("transformer"),
        storage_dtype=transformer_storage_dtype,
    )
    vae = load_vae(files["vae"], dtype=vae_dtype or dtype, device=device, operations=operations.get("vae"))
    text_encoder = load_text_encoder(
        files["text_encoder"], tokenizer_path=tokenizer, dtype=text_encoder_dtype or dtype, device=device,
        operations=operations.get("text_encoder"), storage_dtype=text_encoder_storage_dtype,
    )
    if transformer.config.text_feat_dim != text_encoder.hidden_size:
        raise CheckpointMismatchError(
            f"The transformer '{files['transformer']}' reads text features {transformer.config.text_feat_dim} wide "
            f"(text_feat_dim), but the text encoder '{files['text_encoder']}' gives {text_encoder.hidden_size} "
            "(its hidden_size): they belong to different models. Load the text encoder of the transformer's release."
        )
    return OmniGen2(transformer, vae, text_encoder, scheduler_config, **defaults).with_loras(loras)


def folder_defaults(root: Path) -> dict[str, float]:
    """The sampling defaults a model folder declares in its model_index.json (`FOLDER_DEFAULTS_KEY`), as OmniGen2's
    keyword arguments; {} (the official 1024 and 5.0) where it declares none. They travel with the folder: a copy of
    the bundled model, or one trained by make_default_model, keeps its own size and guidance."""
    index = root / "model_index.json"
    if not index.is_file():
        return {}
    try:
        declared = json.loads(index.read_text()).get(FOLDER_DEFAULTS_KEY, {})
    except (OSError, ValueError, AttributeError) as error:
        raise ModelFileError(f"'{index}' is not a readable JSON object ({error}); restore it from the model's release.")
    allowed = {"size": "default_size", "text_guidance_scale": "default_text_guidance"}
    if not isinstance(declared, dict) or set(declared) - set(allowed):
        raise ModelFileError(
            f"'{index}': {FOLDER_DEFAULTS_KEY} must be an object with keys among {sorted(allowed)}; got {declared!r}."
        )
    size, guidance = declared.get("size"), declared.get("text_guidance_scale")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size <= 0 or size % 16):
        raise ModelFileError(f"'{index}': {FOLDER_DEFAULTS_KEY}.size must be a positive multiple of 16; got {size!r}.")
    if guidance is not None and (isinstance(guidance, bool) or not isinstance(guidance, (int, float)) or guidance < 0):
        raise ModelFileError(
            f"'{index}': {FOLDER_DEFAULTS_KEY}.text_guidance_scale must be a number >= 0; got {guidance!r}."
        )
    return {allowed[key]: value for key, value in declared.items()}
