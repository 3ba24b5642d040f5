"""Read safetensors weights (one file or a sharded folder) into a plain state dict; never unpickle."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from ..errors import ModelFileError

_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def safetensors_files(path: str | Path) -> list[Path]:
    """The safetensors files that make up a checkpoint: the file itself, or every shard of a folder.

    A folder with a `*.safetensors.index.json` lists its shards there; otherwise every `*.safetensors` in it counts.
    """
    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"No such file or folder: '{path}'. Check the path to the OmniGen2 weights.")
    if path.is_file():
        if path.suffix != ".safetensors":
            raise ModelFileError(
                f"'{path}' is not a .safetensors file. Only safetensors weights are loaded (pickled .bin/.pt/.ckpt "
                "files can run code); convert the checkpoint to safetensors first."
            )
        return [path]
    indexes = sorted(path.glob("*.safetensors.index.json"))
    if indexes:
        weight_map = json.loads(indexes[0].read_text())["weight_map"]
        files = [path / name for name in sorted(set(weight_map.values()))]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise ModelFileError(f"'{indexes[0]}' lists shards that are not there: {missing}. Download them again.")
        return files
    files = sorted(path.glob("*.safetensors"))
    if not files:
        pickled = sorted(p.name for p in path.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
        hint = f" It holds {pickled}, which are pickled: convert them to safetensors." if pickled else ""
        raise ModelFileError(f"No .safetensors weights in '{path}'.{hint}")
    return files


def load_state_dict(
    path: str | Path, dtype: torch.dtype | None = None, device: str | torch.device = "cpu", strip_prefix: str = ""
) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint, floating ones cast to `dtype` when given, with `strip_prefix` removed from keys."""
    state_dict: dict[str, torch.Tensor] = {}
    for file in safetensors_files(path):
        try:
            with safe_open(str(file), framework="pt", device=str(device)) as handle:
                for key in handle.keys():
                    tensor = handle.get_tensor(key)
                    if dtype is not None and tensor.dtype in _FLOAT_DTYPES:
                        tensor = tensor.to(dtype)
                    state_dict[key[len(strip_prefix):] if key.startswith(strip_prefix) else key] = tensor
        except (OSError, SafetensorError) as error:
            raise ModelFileError(
                f"Cannot read '{file}' as safetensors ({error}). The file may be truncated or not safetensors."
            ) from error
    return state_dict


def read_keys(path: str | Path) -> list[str]:
    """The tensor names of a checkpoint, without reading the tensors (for telling layouts apart)."""
    keys: list[str] = []
    for file in safetensors_files(path):
        try:
            with safe_open(str(file), framework="pt") as handle:
                keys.extend(handle.keys())
        except (OSError, SafetensorError) as error:
            raise ModelFileError(f"Cannot read '{file}' as safetensors ({error}).") from error
    return keys
