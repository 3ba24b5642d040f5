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
from .safetensors_io import load_state_dict
from .strict import assign_state_dict, check_dtype

logger = logging.getLogger(__name__)

DETECT_KEYS = ("time_caption_embed.timestep_embedder.linear_1.bias", "ref_image_patch_embedder.weight")
KNOWN_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "transformer.")


def _strip_prefix(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    for prefix in KNOWN_PREFIXES:
        if all(key.startswith(prefix) for key in state_dict):
            return {key[len(prefix):]: value for key, value in state_dict.items()}
    return state_dict


def load_transformer(
    path: str | Path,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    operations=None,
    storage_dtype: torch.dtype | None = None,
) -> OmniGen2Transformer:
    """An OmniGen2Transformer with the checkpoint's weights, in `dtype` on `device`, in eval mode.

    storage_dtype (e.g. torch.float8_e4m3fn) keeps the projection matrices in that dtype, computed in `dtype`, by
    `operations` that cast them per call (ours, or a host's).
    """
    check_dtype(dtype, "transformer")
    if storage_dtype is not None and operations is None:
        operations = storage_cast_operations
    path = Path(path)
    state_dict = _strip_prefix(load_state_dict(path, dtype=dtype, device=device))
    absent = [key for key in DETECT_KEYS if key not in state_dict]
    if absent:
        raise CheckpointMismatchError(
            f"'{path}' is not an OmniGen2 transformer checkpoint (it lacks {absent}). Choose the OmniGen2 "
            "diffusion model file (e.g. omnigen2_fp16.safetensors) or the transformer/ folder of the release."
        )
    config_file = path / "config.json" if path.is_dir() else path.with_name("config.json")
    config = TransformerConfig.from_json(config_file) if path.is_dir() and config_file.is_file() else TransformerConfig.from_state_dict(state_dict)
    with torch.device("meta"):
        model = OmniGen2Transformer(config, operations=operations, dtype=dtype)
    if storage_dtype is not None:
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear) and f"{name}.weight" in state_dict:
                state_dict[f"{name}.weight"] = state_dict[f"{name}.weight"].to(storage_dtype)
    assign_state_dict(model, state_dict, str(path))
    logger.info("loaded OmniGen2 transformer from %s: %d layers, hidden %d, %s", path, config.num_layers, config.hidden_size, dtype)
    return model
