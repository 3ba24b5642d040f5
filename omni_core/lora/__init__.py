"""LoRAs for OmniGen2's transformer: our file format, reading the formats people have, applying them to a model.

Our format (what training writes): safetensors with `transformer.<module path>.lora_A.weight` [rank, in] and
`transformer.<module path>.lora_B.weight` [out, rank], <module path> a Linear of OmniGen2Transformer (e.g.
`layers.0.attn.to_q`), and string metadata `format` = "omni_core_lora", `rank`, `alpha` (scale = alpha / rank),
`target_modules` (JSON list) and the training facts `independent_condition`, `condition_size`, `position_scale`.
"""

from .apply import (
    AppliedLora,
    LoraSpec,
    LoraStack,
    check_loras_fit,
    lora_fingerprint,
    lora_stack,
    resolve_loras,
    shallow_transformer,
    transformer_with_loras,
)
from .reader import read_lora
from .weights import Lora, LoraModule, TrainingFacts
from .writer import save_lora

__all__ = [
    "AppliedLora",
    "Lora",
    "LoraModule",
    "LoraSpec",
    "LoraStack",
    "TrainingFacts",
    "check_loras_fit",
    "lora_fingerprint",
    "lora_stack",
    "read_lora",
    "resolve_loras",
    "save_lora",
    "shallow_transformer",
    "transformer_with_loras",
]
