"""Load the FLUX VAE as a diffusers `AutoencoderKL`: from a diffusers `vae/` folder, one diffusers-key file, or
ComfyUI's BFL-layout `ae.safetensors`, strictly (every key and shape accounted for) and without doubling memory.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import torch
from diffusers import AutoencoderKL

from ..errors import CheckpointMismatchError, ModelFileError
from ..ops import adopt_operations
from .safetensors_io import load_state_dict
from .strict import assign_state_dict, check_dtype
from .vae_bfl import BFL, convert_bfl_vae, detect_vae_layout

# Released FLUX.1 VAE config: the source of every field tensor shapes cannot tell (scaling, shift, norm groups).
FLUX_VAE_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "flux_vae.json"

# Their length follows block_out_channels; their names are not visible in the tensors, so config.json keeps its own.
_BLOCK_TYPE_FIELDS = ("down_block_types", "up_block_types")


def _shape(state_dict: dict[str, torch.Tensor], key: str) -> torch.Size:
    if key not in state_dict:
        raise CheckpointMismatchError(
            f"The VAE checkpoint has no '{key}', which every AutoencoderKL has. The file is incomplete or not a VAE."
        )
    return state_dict[key].shape


def _indices(keys: list[str], prefix: str) -> list[int]:
    """The distinct numbers N in keys starting `prefix` + 'N.', sorted."""
    return sorted({int(key[len(prefix):].split(".", 1)[0]) for key in keys if key.startswith(prefix)})


def infer_vae_config(state_dict: dict[str, torch.Tensor]) -> dict:
    """The `AutoencoderKL` config fields that a diffusers-key state dict's tensor shapes fix."""
    keys = list(state_dict)
    levels = _indices(keys, "encoder.down_blocks.")
    if not levels:
        raise CheckpointMismatchError("The VAE checkpoint has no 'encoder.down_blocks.N' keys: it is not a VAE.")
    return {
        "in_channels": _shape(state_dict, "encoder.conv_in.weight")[1],
        "out_channels": _shape(state_dict, "decoder.conv_out.weight")[0],
        "latent_channels": _shape(state_dict, "decoder.conv_in.weight")[1],
        "block_out_channels": [_shape(state_dict, f"encoder.down_blocks.{i}.resnets.0.conv1.weight")[0]
                               for i in levels],
        "layers_per_block": len(_indices(keys, "encoder.down_blocks.0.resnets.")),
        "down_block_types": ["DownEncoderBlock2D"] * len(levels),
        "up_block_types": ["UpDecoderBlock2D"] * len(levels),
        "use_quant_conv": "quant_conv.weight" in state_dict,
        "use_post_quant_conv": "post_quant_conv.weight" in state_dict,
        "mid_block_add_attention": "encoder.mid_block.attentions.0.to_q.weight" in state_dict,
    }


def _read_config(path: Path) -> dict:
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ModelFileError(
            f"Cannot read '{path}' as JSON ({error}). Download the VAE's config.json again."
        ) from error
    class_name = config.get("_class_name", "AutoencoderKL")
    if class_name != "AutoencoderKL":
        raise CheckpointMismatchError(
            f"'{path}' describes a {class_name}, not an AutoencoderKL. Point to the FLUX VAE's vae/ folder."
        )
    return {name: value for name, value in config.items() if not name.startswith("_")}


def _resolve_config(path: Path, state_dict: dict[str, torch.Tensor]) -> dict:
    """The config to build: the folder's config.json (checked against the tensors) or FLUX defaults + shapes."""
    inferred = infer_vae_config(state_dict)
    config_file = path / "config.json"
    if not (path.is_dir() and config_file.is_file()):
        return {**_read_config(FLUX_VAE_CONFIG), **inferred}
    config = _read_config(config_file)
    wrong = [
        f"{name}: config.json says {config[name]}, the tensors say {value}"
        for name, value in inferred.items()
        if name in config and name not in _BLOCK_TYPE_FIELDS and config[name] != value
    ]
    if wrong:
        raise CheckpointMismatchError(
            f"'{config_file}' does not match the weights beside it ({'; '.join(wrong)}). "
            "Download the config.json and weights of the same VAE."
        )
    return {**inferred, **config}


def load_vae(
    path: str | Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
    operations: SimpleNamespace | None = None,
) -> AutoencoderKL:
    """The VAE at `path` (a diffusers `vae/` folder, a diffusers-key file or a BFL `ae.safetensors`), in eval mode.

    The module is built on the meta device and takes the loaded tensors themselves (`assign=True`), so the weights
    are held once. Parameters do not require grad. `operations`: a host's layer classes (see ops.adopt_operations).
    """
    check_dtype(dtype, "VAE")
    path = Path(path)
    state_dict = load_state_dict(path, dtype=dtype, device=device)
    source = str(path)
    if detect_vae_layout(state_dict) == BFL:
        state_dict = convert_bfl_vae(state_dict)
        source += " (BFL layout, shown under the diffusers names it converts to)"
    config = _resolve_config(path, state_dict)
    with torch.device("meta"):
        vae = AutoencoderKL.from_config(config)
    if operations is not None:
        adopt_operations(vae, operations)
    hint = "The file is incomplete, damaged or not the FLUX VAE."
    return assign_state_dict(vae, state_dict, source, hint)
