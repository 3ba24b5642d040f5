"""Load the OmniGen2 transformer from a diffusers `transformer/` folder or a ComfyUI single file.

The layout is told apart by its keys, as ComfyUI's model detection does: OmniGen2 owns
`time_caption_embed.timestep_embedder.linear_1.bias` and `ref_image_patch_embedder.weight`. A config.json beside the
weights is used when present and checked against the tensors; a single file's config is inferred from its shapes.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from ..config import TransformerConfig
from ..errors import CheckpointMismatchError, InvalidInputError
from ..ops import storage_cast_operations
from ..transformer import OmniGen2Transformer
from .quantized import (
    FP8, QUANT_SUFFIXES, check_quant_formats, comfy_quant_entry, dequantized, fp8_weight_names, is_bookkeeping,
    weight_scales,
)
from .safetensors_io import load_state_dict, read_meta
from .strict import assign_state_dict, check_dtype, check_state_dict

logger = logging.getLogger(__name__)

DETECT_KEYS = ("time_caption_embed.timestep_embedder.linear_1.bias", "ref_image_patch_embedder.weight")
KNOWN_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "transformer.")


def _known_prefix(keys) -> str:
    """The key prefix ComfyUI-style files put before every transformer key ('' when none)."""
    for prefix in KNOWN_PREFIXES:
        if all(key.startswith(prefix) for key in keys):
            return prefix
    return ""


def _file_tensors(path: Path) -> tuple[str, dict[str, torch.Tensor]]:
    """(key prefix, {key without it: meta tensor}) of a transformer checkpoint, checked to be OmniGen2's."""
    stored = read_meta(path)
    prefix = _known_prefix(stored)
    stored = {key[len(prefix):]: tensor for key, tensor in stored.items()}
    absent = [key for key in DETECT_KEYS if key not in stored]
    if absent:
        raise CheckpointMismatchError(
            f"'{path}' is not an OmniGen2 transformer checkpoint (it lacks {absent}). Choose the OmniGen2 "
            "diffusion model file (e.g. omnigen2_fp16.safetensors) or the transformer/ folder of the release."
        )
    return prefix, stored


def file_storage_dtype(path: str | Path) -> torch.dtype | None:
    """FP8 when the checkpoint stores the blocks' projections in fp8 (plain or scaled), else None; from headers only."""
    _, stored = _file_tensors(Path(path))
    narrow = fp8_weight_names({key: t.shape for key, t in stored.items()})
    return FP8 if narrow and all(stored[key].dtype == FP8 for key in narrow) else None


def file_is_scaled(path: str | Path) -> bool:
    """Whether the checkpoint is one of ComfyUI's scaled fp8 files (its fp8 projections carry scales)."""
    _, stored = _file_tensors(Path(path))
    return bool(set(weight_scales(stored)) & fp8_weight_names({key: t.shape for key, t in stored.items()}))


def load_transformer(
    path: str | Path,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    operations=None,
    storage_dtype: torch.dtype | None = None,
) -> OmniGen2Transformer:
    """An OmniGen2Transformer with the checkpoint's weights, in `dtype` on `device`, in eval mode.

    storage_dtype (torch.float8_e4m3fn) keeps the blocks' projection matrices in that dtype (quantized.py says which),
    computed in `dtype` by `operations` that cast them per call (ours, or a host's). An fp8 file (plain e4m3fn, or
    ComfyUI's scaled fp8: each scaled weight keeps its scale) keeps its fp8 projections whatever `storage_dtype`; its
    other layers are read into `dtype`. The model is sized from the file headers and built first, so every tensor is
    read straight into the dtype it keeps (see safetensors_io.load_state_dict).
    """
    check_dtype(dtype, "transformer")
    path = Path(path)
    prefix, stored = _file_tensors(path)
    scales = weight_scales(stored)
    weights = {key: t for key, t in stored.items() if not is_bookkeeping(key) and key not in scales.values()}
    narrow = fp8_weight_names({key: t.shape for key, t in weights.items()})
    storage_dtype = storage_dtype or file_storage_dtype(path)
    if storage_dtype is None:
        narrow = set()
    if storage_dtype is not None and operations is None:
        operations = storage_cast_operations
    config_file = path / "config.json" if path.is_dir() else path.with_name("config.json")
    config = TransformerConfig.from_json(config_file) if path.is_dir() and config_file.is_file() else TransformerConfig.from_state_dict(weights)
    with torch.device("meta"):
        model = OmniGen2Transformer(config, operations=operations, dtype=dtype)
    kept_scales = {key: scale for key, scale in scales.items() if key in narrow}
    host_reads_scales = getattr(operations, "reads_quantized", False)
    if kept_scales and not host_reads_scales and operations is not storage_cast_operations:
        raise InvalidInputError(
            f"'{path}' is a scaled fp8 file: load it with the engine's own layers (operations=None) or with layer "
            "classes that read ComfyUI's quantized weights (`reads_quantized`)."
        )

    def read_dtype(key: str) -> torch.dtype | None:
        if key in narrow:
            return storage_dtype
        return None if is_bookkeeping(key) or key in scales.values() or key in scales else dtype

    state_dict = load_state_dict(path, dtype=read_dtype, device=device, strip_prefix=prefix)
    check_quant_formats(state_dict, str(path))
    state_dict = {key: value for key, value in state_dict.items() if not is_bookkeeping(key)}
    _place_scales(model, state_dict, scales, kept_scales, dtype, host_reads_scales)
    if host_reads_scales and kept_scales:
        _load_into_host_layers(model, config, state_dict, dtype, path)
    else:
        assign_state_dict(model, state_dict, str(path))
    logger.info("loaded OmniGen2 transformer from %s: %d layers, hidden %d, %s", path, config.num_layers, config.hidden_size, dtype)
    return model


def _place_scales(model, state_dict, scales: dict[str, str], kept: dict[str, str], dtype, host_reads: bool) -> None:
    """Each scaled weight of a scaled-fp8 file, in place: one kept in fp8 keeps its scale (a `weight_scale` buffer of
    our layer, or the per-layer form ComfyUI's quantized layers read), any other is dequantized into `dtype`."""
    for key, scale_key in scales.items():
        scale = state_dict.pop(scale_key).float().reshape(())
        layer = key[: -len(".weight")]
        if key not in kept:  # a layer kept in the compute dtype
            state_dict[key] = dequantized(state_dict[key], scale, dtype)
            continue
        state_dict[f"{layer}.weight_scale"] = scale
        if host_reads:
            state_dict[f"{layer}.comfy_quant"] = comfy_quant_entry()
        else:
            model.get_submodule(layer).register_buffer("weight_scale", torch.empty((), device="meta"))


def _load_into_host_layers(model, config: TransformerConfig, state_dict, dtype, path: Path) -> None:
    """Names and shapes checked against our own layers, then the host's quantized layers read their entries."""
    with torch.device("meta"):
        expected = OmniGen2Transformer(config, dtype=dtype).state_dict()
    weights = {key: value for key, value in state_dict.items() if not key.endswith(QUANT_SUFFIXES)}
    check_state_dict({k: tuple(v.shape) for k, v in expected.items()}, weights,
                     f"'{path}' does not fit the OmniGen2Transformer it is loaded into", "Check the file.")
    model.load_state_dict(state_dict, strict=True, assign=True)
    model.eval().requires_grad_(False)
