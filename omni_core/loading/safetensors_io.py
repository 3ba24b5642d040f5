"""Read safetensors weights (one file or a sharded folder) into a plain state dict; never unpickle."""

from __future__ import annotations

import json
from pathlib import Path
from typing import BinaryIO, Callable, Optional, Union

import torch
from safetensors import SafetensorError, safe_open

from ..errors import ModelFileError


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


DtypeRule = Union[torch.dtype, Callable[[str], Optional[torch.dtype]], None]

# safetensors' dtype names (its format spec) for the tensors this package reads
_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2, "I64": torch.int64, "I32": torch.int32,
    "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
}


def load_state_dict(
    path: str | Path, dtype: DtypeRule = None, device: str | torch.device = "cpu", strip_prefix: str = ""
) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint, with `strip_prefix` removed from keys.

    `dtype`: one dtype for every floating tensor, or a function of the (stripped) key giving the tensor's dtype (None:
    as stored). Tensors kept as stored are the file's mapping itself (no copy). A tensor to convert is read from the
    file into one staging buffer and converted from there: converting from the mapping would leave the source pages
    resident until the file closes (2x the weights at peak, fp16 into bf16), and a fresh buffer per tensor fragments
    the heap about as badly; this way the peak is the converted weights plus the largest source tensor.
    """
    rule = dtype if callable(dtype) else (lambda key: dtype)
    state_dict: dict[str, torch.Tensor] = {}
    for file in safetensors_files(path):
        try:
            with safe_open(str(file), framework="pt", device=str(device)) as handle, open(file, "rb") as raw:
                data_start, header = _header(raw)
                converted = {}
                for key in handle.keys():
                    name = key[len(strip_prefix):] if key.startswith(strip_prefix) else key
                    stored, wanted = _DTYPES.get(header[key]["dtype"]), rule(name)
                    if wanted is None or stored is None or stored == wanted or not stored.is_floating_point:
                        state_dict[name] = handle.get_tensor(key)
                    else:
                        converted[key] = (name, wanted)
                sizes = [end - begin for begin, end in (header[key]["data_offsets"] for key in converted)]
                staging = torch.empty(max(sizes, default=0), dtype=torch.uint8)
                for key, (name, wanted) in converted.items():
                    state_dict[name] = _read(raw, data_start, header[key], staging).to(device, wanted)
        except (OSError, SafetensorError, ValueError, KeyError) as error:
            raise ModelFileError(
                f"Cannot read '{file}' as safetensors ({error}). The file may be truncated or not safetensors."
            ) from error
    return state_dict


def _header(raw: BinaryIO) -> tuple[int, dict]:
    """(offset where tensor data starts, {name: {dtype, shape, data_offsets}}) of an open safetensors file."""
    raw.seek(0)
    size = int.from_bytes(raw.read(8), "little")
    header = json.loads(raw.read(size))
    header.pop("__metadata__", None)
    return 8 + size, header


def _read(raw: BinaryIO, data_start: int, entry: dict, staging: torch.Tensor) -> torch.Tensor:
    """One tensor read from the file (not the mapping) into the front of `staging`, viewed in its stored dtype."""
    begin, end = entry["data_offsets"]
    buffer = staging[: end - begin]
    raw.seek(data_start + begin)
    if raw.readinto(buffer.numpy()) != end - begin:
        raise ValueError(f"the file ends inside tensor data ({end - begin} bytes expected)")
    return buffer.view(_DTYPES[entry["dtype"]]).reshape(entry["shape"])


def read_meta(path: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint as a meta tensor (name, shape, dtype) from the file headers, without its data:
    for telling layouts apart and sizing a model before reading weights."""
    tensors: dict[str, torch.Tensor] = {}
    for file in safetensors_files(path):
        try:
            with open(file, "rb") as raw:
                _, header = _header(raw)
            for key, entry in header.items():
                tensors[key] = torch.empty(entry["shape"], dtype=_DTYPES.get(entry["dtype"], torch.uint8), device="meta")
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise ModelFileError(f"Cannot read '{file}' as safetensors ({error}).") from error
    return tensors
