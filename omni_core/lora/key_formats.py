"""The key conventions LoRA files come in, mapped to module paths of OmniGen2Transformer.

A key is <prefix><module><suffix>. Prefixes: `transformer.` (ours and diffusers), `base_model.model.` (PEFT),
`diffusion_model.` and none (what ComfyUI's loader accepts for OmniGen2, whose module names are ours), `lora_unet_`
(kohya: the module path with `_` for `.`). Suffixes: lora_A/lora_B (PEFT, diffusers), lora_down/lora_up (kohya,
ComfyUI), either with `.weight` or PEFT's `.default.weight`, and `.alpha` (kohya's per-module alpha).
"""

from __future__ import annotations

from functools import lru_cache

import torch

from ..config import TransformerConfig

PREFIXES = {"transformer.": "diffusers", "base_model.model.": "peft", "diffusion_model.": "comfyui", "lora_unet_": "kohya"}
BARE_FORMAT = "comfyui"  # unprefixed module names
DOWN_SUFFIXES = (".lora_A.weight", ".lora_A.default.weight", ".lora_down.weight")
UP_SUFFIXES = (".lora_B.weight", ".lora_B.default.weight", ".lora_up.weight")
ALPHA_SUFFIX = ".alpha"
KOHYA_PREFIX = "lora_unet_"


def file_prefix(keys: list[str]) -> str:
    """The prefix every key shares (one of PREFIXES), or "" when they have none in common."""
    for prefix in PREFIXES:
        if all(key.startswith(prefix) for key in keys):
            return prefix
    return ""


def split_key(key: str) -> tuple[str, str] | None:
    """(module, role) with role "down", "up" or "alpha" for a LoRA key without its prefix; None if unrecognised."""
    for role, suffixes in (("down", DOWN_SUFFIXES), ("up", UP_SUFFIXES), ("alpha", (ALPHA_SUFFIX,))):
        for suffix in suffixes:
            if key.endswith(suffix) and len(key) > len(suffix):
                return key[: -len(suffix)], role
    return None


@lru_cache(maxsize=8)
def linear_module_paths(num_layers: int, num_refiner_layers: int) -> tuple[str, ...]:
    """The names of every Linear in an OmniGen2Transformer with that many blocks (built on the meta device: the
    names do not depend on widths)."""
    from ..transformer import OmniGen2Transformer  # the transformer module is heavy; only kohya names need it

    config = TransformerConfig(
        hidden_size=24, num_attention_heads=1, num_kv_heads=1, axes_dim_rope=(8, 8, 8), multiple_of=8,
        num_layers=num_layers, num_refiner_layers=num_refiner_layers, text_feat_dim=8,
    )
    with torch.device("meta"):
        model = OmniGen2Transformer(config)
    return tuple(name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear))


def kohya_module_paths(names: set[str]) -> dict[str, str]:
    """Module paths for kohya names (`layers_0_attn_to_q` -> `layers.0.attn.to_q`); names that fit no module of
    OmniGen2 are left out. `_` is ambiguous (to_q, feed_forward), so names are looked up among the model's own."""
    block_indices = [int(part) for name in names for part in name.split("_") if part.isdigit()]
    depth = max(block_indices, default=0) + 1
    table = {path.replace(".", "_"): path for path in linear_module_paths(depth, depth)}
    return {name: table[name] for name in names if name in table}
