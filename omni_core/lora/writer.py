"""`save_lora`: the one writer of our LoRA file format (training calls it; see the package docstring)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors.torch import save_file

from ..errors import InvalidInputError
from .metadata import FORMAT_KEY, FORMAT_NAME, metadata_string

PREFIX = "transformer."


def _target_modules(module_paths) -> list[str]:
    """The adapted kinds of layer, e.g. "attn.to_q", from full paths such as "layers.3.attn.to_q"."""
    kinds = set()
    for path in module_paths:
        parts = path.split(".")
        kinds.add(".".join(parts[2:]) if len(parts) > 2 and parts[1].isdigit() else path)
    return sorted(kinds)


def save_lora(
    path: str | Path,
    weights: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
    alpha: float,
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Write a LoRA: `weights` maps module paths of OmniGen2Transformer to (A [rank, in], B [out, rank]).

    The file scales B @ A by alpha / rank. `metadata` adds strings (training facts: independent_condition,
    condition_size, position_scale, target_modules, ...); format, rank and alpha are always written.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise InvalidInputError(f"LoRA path '{path}' must end in .safetensors (the only format LoRAs are saved in).")
    if not weights:
        raise InvalidInputError("save_lora got no weights: pass {module path: (lora_A, lora_B)} for at least one module.")
    tensors: dict[str, torch.Tensor] = {}
    ranks = set()
    for module, (down, up) in weights.items():
        if down.ndim != 2 or up.ndim != 2 or down.shape[0] != up.shape[1]:
            raise InvalidInputError(
                f"LoRA weights of '{module}': A must be [rank, in] and B [out, rank], got A {tuple(down.shape)} and "
                f"B {tuple(up.shape)}."
            )
        ranks.add(down.shape[0])
        tensors[f"{PREFIX}{module}.lora_A.weight"] = down.detach().to("cpu").contiguous()
        tensors[f"{PREFIX}{module}.lora_B.weight"] = up.detach().to("cpu").contiguous()
    if len(ranks) != 1:
        raise InvalidInputError(f"LoRA modules have different ranks {sorted(ranks)}; one file holds one rank.")
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not alpha > 0:
        raise InvalidInputError(f"LoRA alpha must be a number > 0 (scale = alpha / rank), got {alpha!r}.")
    strings = {key: metadata_string(value) for key, value in (metadata or {}).items() if value is not None}
    strings.setdefault("target_modules", json.dumps(_target_modules(weights)))
    strings.update({FORMAT_KEY: FORMAT_NAME, "rank": str(ranks.pop()), "alpha": str(float(alpha))})
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=strings)
    return path
