"""`load_model`: the three OmniGen2 models from a release folder or from ComfyUI-style single files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping, Sequence

import torch

from ..errors import ModelFileError
from ..lora import LoraSpec
from ..lora.apply import resolve_loras
from ..pipeline import OmniGen2
from .strict import check_dtype
from .text_encoder_loader import load_text_encoder
from .transformer_loader import load_transformer
from .vae_loader import load_vae

COMPONENTS = ("transformer", "vae", "text_encoder")
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent.parent / "default_model"


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


def load_model(
    path_or_files: str | Path | Mapping[str, str | Path] | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    text_encoder_dtype: torch.dtype | None = None,
    vae_dtype: torch.dtype | None = None,
    transformer_storage_dtype: torch.dtype | None = None,
    loras: Sequence[LoraSpec] = (),
) -> OmniGen2:
    """Load OmniGen2 from local files only (safetensors, never pickles).

    `path_or_files` is a release folder (transformer/ vae/ mllm/ processor/ scheduler/), or a mapping with
    'transformer', 'vae' and 'text_encoder' files or folders and an optional 'tokenizer' folder (required for a
    single-file text encoder). None loads the small default model bundled with the package.
    The MLLM and VAE use `dtype` unless given their own; `transformer_storage_dtype` (torch.float8_e4m3fn) stores
    the transformer's projection matrices narrower, computed in `dtype`. `loras` [(path, strength), ...] are
    merged into the transformer (see `OmniGen2.with_loras`); their files are checked before the models load.
    """
    check_dtype(dtype, "model")
    loras = resolve_loras(loras)  # bad LoRA files fail before minutes of loading
    if path_or_files is None:
        path_or_files = DEFAULT_MODEL_DIR
    scheduler_config: dict = {}
    tokenizer = None
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
        scheduler_file = root / "scheduler" / "scheduler_config.json"
        if scheduler_file.is_file():
            scheduler_config = json.loads(scheduler_file.read_text())
    transformer = load_transformer(files["transformer"], dtype=dtype, device=device, storage_dtype=transformer_storage_dtype)
    vae = load_vae(files["vae"], dtype=vae_dtype or dtype, device=device)
    text_encoder = load_text_encoder(
        files["text_encoder"], tokenizer_path=tokenizer, dtype=text_encoder_dtype or dtype, device=device
    )
    return OmniGen2(transformer, vae, text_encoder, scheduler_config).with_loras(loras)
