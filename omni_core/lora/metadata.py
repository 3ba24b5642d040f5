"""The safetensors metadata of our LoRA files: every value a string, training facts under fixed names."""

from __future__ import annotations

import json
from typing import Any, Mapping

from ..errors import ModelFileError
from .weights import TrainingFacts

FORMAT_KEY = "format"
FORMAT_NAME = "omni_core_lora"


def metadata_string(value: Any) -> str:
    """A metadata value as safetensors stores it: bools as "true"/"false", lists and dicts as JSON, else str()."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value)
    return str(value)


def _parse(metadata: Mapping[str, str], key: str, kind: type, source: str):
    if metadata.get(key) in (None, "", "null", "None"):
        return None
    text = metadata[key]
    try:
        if kind is bool:
            if text.lower() not in ("true", "false"):
                raise ValueError(text)
            return text.lower() == "true"
        return kind(float(text)) if kind is int else kind(text)
    except ValueError as error:
        raise ModelFileError(
            f"'{source}': metadata {key}={text!r} is not a {kind.__name__}. Rewrite the file with omni_core.lora.save_lora."
        ) from error


def training_facts(metadata: Mapping[str, str], source: str) -> TrainingFacts:
    """The training facts recorded in a file's metadata (absent ones are None)."""
    return TrainingFacts(
        independent_condition=_parse(metadata, "independent_condition", bool, source),
        condition_size=_parse(metadata, "condition_size", int, source),
        position_scale=_parse(metadata, "position_scale", float, source),
    )


def metadata_alpha(metadata: Mapping[str, str], source: str) -> float | None:
    return _parse(metadata, "alpha", float, source)
