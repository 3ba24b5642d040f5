"""`read_lora`: any supported LoRA safetensors file (see key_formats.py) into one `Lora`, or a clear error."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from ..errors import CheckpointMismatchError, ModelFileError
from ..loading.safetensors_io import safetensors_files
from .key_formats import BARE_FORMAT, KOHYA_PREFIX, PREFIXES, file_prefix, kohya_module_paths, split_key
from .metadata import FORMAT_KEY, FORMAT_NAME, metadata_alpha, training_facts
from .peft_config import adapter_config_beside, diffusers_adapter_config, peft_scale
from .weights import Lora, LoraModule

SUPPORTED = (
    "ours/diffusers (transformer.<module>.lora_A/lora_B.weight), PEFT (base_model.model.<module>.lora_A/lora_B.weight), "
    "ComfyUI (diffusion_model.<module> or <module> with .lora_A/.lora_B or .lora_down/.lora_up and .alpha), "
    "kohya (lora_unet_<module>.lora_down/.lora_up.weight and .alpha)"
)


def file_hash(path: Path) -> str:
    """SHA-256 of the file's bytes: what identifies a LoRA's weights in cache keys."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_file(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        with safe_open(str(path), framework="pt") as handle:
            return {key: handle.get_tensor(key) for key in handle.keys()}, dict(handle.metadata() or {})
    except (OSError, SafetensorError) as error:
        raise ModelFileError(f"Cannot read LoRA '{path}' as safetensors ({error}). The file may be truncated.") from error


def _listed(keys: list[str]) -> str:
    """"(count): [first ten, ...]" for an error message."""
    return f"({len(keys)}): [{', '.join(sorted(keys)[:10])}{', ...' if len(keys) > 10 else ''}]"


def _unrecognised(path: Path, keys: list[str], why: str) -> ModelFileError:
    return ModelFileError(f"'{path}' is not a LoRA for OmniGen2's transformer: {why} {_listed(keys)}. Supported: {SUPPORTED}.")


def _group(path: Path, tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, dict[str, torch.Tensor]]:
    """{module name as written: {"down": A, "up": B, "alpha"?: tensor}}, every key accounted for."""
    groups: dict[str, dict[str, torch.Tensor]] = {}
    unknown = []
    for key, tensor in tensors.items():
        parts = split_key(key[len(prefix):])
        if parts is None:
            unknown.append(key)
            continue
        groups.setdefault(parts[0], {})[parts[1]] = tensor
    if unknown:
        raise _unrecognised(path, unknown, "unrecognised keys")
    incomplete = [f"{prefix}{name}" for name, group in groups.items() if not {"down", "up"} <= set(group)]
    if incomplete:
        raise _unrecognised(path, incomplete, "modules lacking their down (A) or up (B) matrix")
    return groups


def _module_scale(path, name, group, rank, alpha, peft_config) -> float:
    """alpha / rank by the first source that has it: the module's own `.alpha`, a PEFT config, the file's metadata
    alpha; with none, 1 (alpha = rank, as PEFT and kohya assume)."""
    if "alpha" in group:
        return float(group["alpha"].float().item()) / rank
    if peft_config is not None:
        return peft_scale(peft_config, name, rank, str(path))
    return 1.0 if alpha is None else alpha / rank


def _peft_config(path: Path, prefix: str, metadata: dict[str, str]) -> dict | None:
    """The PEFT LoraConfig that scales the file's modules: diffusers keeps it in the metadata, PEFT beside the file."""
    if prefix == "transformer.":
        return diffusers_adapter_config(metadata)
    if prefix in ("base_model.model.", ""):
        return adapter_config_beside(path)
    return None


def _module_paths(path: Path, prefix: str, groups: dict) -> dict[str, str]:
    """{name as written: OmniGen2Transformer module path}; only kohya names differ from the paths."""
    if prefix != KOHYA_PREFIX:
        return {name: name for name in groups}
    names = kohya_module_paths(set(groups))
    unmatched = [f"{prefix}{name}" for name in groups if name not in names]
    if unmatched:
        raise CheckpointMismatchError(
            f"'{path}' adapts modules that OmniGen2's transformer does not have {_listed(unmatched)}: the LoRA was made "
            "for another model. Use a LoRA trained on OmniGen2."
        )
    return names


def read_lora(path: str | Path) -> Lora:
    """Read a LoRA file in any supported convention; module names become OmniGen2Transformer paths.

    Only safetensors files are read. Names are checked against the architecture when the LoRA is applied.
    """
    files = safetensors_files(path)
    path = Path(path)
    if len(files) != 1 or files[0] != path:
        raise ModelFileError(f"'{path}' is a folder; pass the LoRA's .safetensors file itself.")
    tensors, metadata = _read_file(path)
    if not tensors:
        raise ModelFileError(f"'{path}' holds no tensors; it is not a LoRA.")
    prefix = file_prefix(list(tensors))
    key_format = PREFIXES.get(prefix, BARE_FORMAT)
    groups = _group(path, tensors, prefix)
    names = _module_paths(path, prefix, groups)
    alpha = metadata_alpha(metadata, str(path))
    if metadata.get(FORMAT_KEY) == FORMAT_NAME:
        key_format = "omni_core"
    peft_config = _peft_config(path, prefix, metadata)
    if peft_config is not None and prefix == "":
        key_format = "peft"  # PEFT's state dict of a model with injected adapters has no prefix
    modules = {}
    for name, group in groups.items():
        down, up = group["down"], group["up"]
        if down.ndim != 2 or up.ndim != 2 or down.shape[0] != up.shape[1]:
            raise ModelFileError(
                f"'{path}': {prefix}{name} has down {tuple(down.shape)} and up {tuple(up.shape)}; a LoRA of a Linear "
                "needs down [rank, in] and up [out, rank] (convolution or LoCon LoRAs are not supported)."
            )
        scale = _module_scale(path, names[name], group, down.shape[0], alpha, peft_config)
        modules[names[name]] = LoraModule(down=down, up=up, scale=scale)
    return Lora(
        path=path, modules=modules, key_format=key_format, content_hash=file_hash(path),
        training=training_facts(metadata, str(path)), metadata=metadata,
    )
