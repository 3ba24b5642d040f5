"""LoRA training with peft: adapters injected into the transformer in place (module names unchanged), and the
trained A/B matrices written with `omni_core.lora.save_lora` together with the facts of how they were trained."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from peft import LoraConfig as PeftLoraConfig
from peft import inject_adapter_in_model

from ..lora import save_lora
from ..transformer import OmniGen2Transformer
from .config import ConfigError, LoraConfig, TrainingConfig

ADAPTER = "default"
LORA_FILE = "lora.safetensors"
_KEY = re.compile(rf"^(?P<module>.+)\.lora_(?P<part>[AB])\.{ADAPTER}\.weight$")


def add_lora(transformer: OmniGen2Transformer, config: LoraConfig) -> OmniGen2Transformer:
    """Freeze the transformer and inject trainable LoRA adapters into `config.target_modules` (OmniGen2's own
    fine-tuning initialisation: Gaussian A, zero B, so training starts from the base model exactly)."""
    transformer.requires_grad_(False)
    peft_config = PeftLoraConfig(
        r=config.rank,
        lora_alpha=config.scale_alpha,
        lora_dropout=config.dropout,
        init_lora_weights="gaussian",
        target_modules=list(config.target_modules),
    )
    try:
        inject_adapter_in_model(peft_config, transformer, adapter_name=ADAPTER)
    except ValueError as error:  # peft: no module matched the targets
        raise ConfigError(
            f"lora.target_modules {list(config.target_modules)} match no Linear of the transformer ({error}). Use "
            "names such as to_q, to_k, to_v, to_out.0, linear_1, linear_2, linear_3 (module names of "
            "OmniGen2Transformer)."
        ) from error
    return transformer


def lora_weights(state_dict: dict[str, torch.Tensor], prefix: str = "") -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{module path: (A [rank, in], B [out, rank])} from a state dict of peft LoRA layers (keys behind `prefix`)."""
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state_dict.items():
        match = _KEY.match(key[len(prefix):]) if key.startswith(prefix) else None
        if match:
            parts.setdefault(match["module"], {})[match["part"]] = value
    return {module: (ab["A"], ab["B"]) for module, ab in sorted(parts.items())}


def write_lora(output_dir: Path, weights: dict[str, tuple[torch.Tensor, torch.Tensor]], config: TrainingConfig) -> Path:
    """`output_dir/lora.safetensors` in our format; its metadata records the conditioning it was trained with."""
    assert config.lora is not None
    metadata = {
        "target_modules": list(config.lora.target_modules),
        "independent_condition": config.independent_condition,
        "condition_size": config.condition_size,
        "position_scale": config.position_scale,
    }
    return save_lora(output_dir / LORA_FILE, weights, config.lora.scale_alpha, metadata=metadata)
