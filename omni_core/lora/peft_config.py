"""The scale PEFT gives each LoRA module, from its LoraConfig (an adapter_config.json, or the JSON diffusers writes
into a LoRA file's metadata): lora_alpha / r, per-module alpha_pattern, rsLoRA's alpha / sqrt(r)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Mapping

from ..errors import ModelFileError

ADAPTER_CONFIG = "adapter_config.json"
DIFFUSERS_METADATA_KEY = "lora_adapter_metadata"


def adapter_config_beside(path: Path) -> dict[str, Any] | None:
    """The PEFT `adapter_config.json` in the LoRA file's folder, if there is one."""
    config_file = path.with_name(ADAPTER_CONFIG)
    if not config_file.is_file():
        return None
    try:
        return json.loads(config_file.read_text())
    except json.JSONDecodeError as error:
        raise ModelFileError(f"'{config_file}' (the PEFT config of '{path.name}') is not valid JSON: {error}.") from error


def diffusers_adapter_config(metadata: Mapping[str, str]) -> dict[str, Any] | None:
    """The LoraConfig diffusers stores in a file's metadata (model-level, or pipeline-level under `transformer.`)."""
    raw = metadata.get(DIFFUSERS_METADATA_KEY)
    if not raw:
        return None
    config = json.loads(raw)
    if "lora_alpha" not in config:
        config = {key[len("transformer."):]: value for key, value in config.items() if key.startswith("transformer.")}
    return config or None


def _pattern_value(patterns: Mapping[str, Any], module: str) -> Any:
    """PEFT's rule for rank_pattern/alpha_pattern: a key matches a module whose name ends in it (as a regex)."""
    for pattern, value in patterns.items():
        if re.match(rf"(.*\.)?({pattern})$", module):
            return value
    return None


def peft_scale(config: Mapping[str, Any], module: str, rank: int, source: str) -> float:
    """The factor PEFT puts on B @ A for `module` under `config`."""
    if config.get("use_dora"):
        raise ModelFileError(f"'{source}' is a DoRA adapter (use_dora); only plain LoRA is supported. Merge it first.")
    alpha = _pattern_value(config.get("alpha_pattern") or {}, module)
    if alpha is None:
        alpha = config.get("lora_alpha", rank)
    return alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
