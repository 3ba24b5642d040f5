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
from ..errors import CheckpointMismatchError
from ..ops import storage_cast_operations
from ..transformer import OmniGen2Transformer
from .safetensors_io import load_state_dict, read_meta
from .strict import assign_state_dict, check_dtype

logger = logging.getLogger(__name__)

DETECT_KEYS = ("time_caption_embed.timestep_embedder.linear_1.bias", "ref_image_patch_embedder.weight")
KNOWN_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "transformer.")


def _known_prefix(keys) -> str:
    """The key prefix ComfyUI-style files put before every transformer key ('' when none)."""
    for prefix in KNOWN_PREFIXES:
        if all(key.startswith(prefix) for key in keys):
            return prefix
    return ""


def load_transformer(
    path: str | Path,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    operations=None,
    storage_dtype: torch.dtype | None = None,
) -> OmniGen2Transformer:
    """An OmniGen2Transformer with the checkpoint's weights, in `dtype` on `device`, in eval mode.

    storage_dtype (e.g. torch.float8_e4m3fn) keeps the projection matrices in that dtype, computed in `dtype`, by
    `operations` that cast them per call (ours, or a host's). The model is sized from the file headers and built
    first, so every tensor is read straight into the dtype it keeps (see safetensors_io.load_state_dict).
    """
    check_dtype(dtype, "transformer")
    if storage_dtype is not None and operations is None:
        operations = storage_cast_operations
    path = Path(path)
    stored = read_meta(path)
    prefix = _known_prefix(stored)
    stored = {key[len(prefix):]: tensor for key, tensor in stored.items()}
    absent = [key for key in DETECT_KEYS if key not in stored]
    if absent:
        raise CheckpointMismatchError(
            f"'{path}' is not an OmniGen2 transformer checkpoint (it lacks {absent}). Choose the OmniGen2 "
            "diffusion model file (e.g. omnigen2_fp16.safetensors) or the transformer/ folder of the release."
        )
    config_file = path / "config.json" if path.is_dir() else path.with_name("config.json")
    config = TransformerConfig.from_json(config_file) if path.is_dir() and config_file.is_file() else TransformerConfig.from_state_dict(stored)
    with torch.device("meta"):
        model = OmniGen2Transformer(config, operations=operations, dtype=dtype)
    narrow = set() if storage_dtype is None else {
        f"{name}.weight" for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)
    }
    state_dict = load_state_dict(
        path, dtype=lambda key: storage_dtype if key in narrow else dtype, device=device, strip_prefix=prefix
    )
    assign_state_dict(model, state_dict, str(path))
    logger.info("loaded OmniGen2 transformer from %s: %d layers, hidden %d, %s", path, config.num_layers, config.hidden_size, dtype)
    return model
