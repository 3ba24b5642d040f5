"""LoRA files and loading: our format round trip, PEFT / diffusers / kohya / ComfyUI conventions, applying LoRAs
to a model without touching the shared one, cache keying, and the OmniGen2 LoRA node."""

import json

import pytest
import torch
from safetensors import safe_open

from omni_core.errors import InvalidInputError
from omni_core.lora import read_lora, save_lora


def _weights(seed: int = 0, rank: int = 4) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Random LoRA pairs (non-zero B) for a few Linears of the tiny transformer (hidden 96, kv 48, ffn 384)."""
    g = torch.Generator().manual_seed(seed)
    shapes = {"layers.0.attn.to_q": (96, 96), "layers.1.attn.to_k": (48, 96), "layers.1.feed_forward.linear_2": (96, 384)}
    return {m: (torch.randn(rank, i, generator=g), torch.randn(o, rank, generator=g)) for m, (o, i) in shapes.items()}


def test_our_format_round_trip(tmp_path):
    weights = _weights()
    path = save_lora(tmp_path / "ours.safetensors", weights, alpha=8.0,
                     metadata={"independent_condition": True, "condition_size": 512, "position_scale": 2.0})
    with safe_open(str(path), framework="pt") as handle:
        keys, metadata = set(handle.keys()), handle.metadata()
    assert keys == {f"transformer.{m}.lora_{ab}.weight" for m in weights for ab in "AB"}
    assert metadata["format"] == "omni_core_lora" and metadata["rank"] == "4" and float(metadata["alpha"]) == 8.0
    assert metadata["independent_condition"] == "true"
    assert json.loads(metadata["target_modules"]) == ["attn.to_k", "attn.to_q", "feed_forward.linear_2"]
    lora = read_lora(path)
    assert lora.key_format == "omni_core" and set(lora.modules) == set(weights)
    for module, (down, up) in weights.items():
        assert torch.equal(lora.modules[module].down, down) and torch.equal(lora.modules[module].up, up)
        assert lora.modules[module].scale == 2.0
    assert (lora.training.independent_condition, lora.training.condition_size, lora.training.position_scale) == (True, 512, 2.0)


def test_save_lora_rejects_bad_weights(tmp_path):
    down, up = _weights()["layers.0.attn.to_q"]
    with pytest.raises(InvalidInputError, match="layers.0.attn.to_q"):
        save_lora(tmp_path / "bad.safetensors", {"layers.0.attn.to_q": (down, up[:, :3])}, alpha=4)
    with pytest.raises(InvalidInputError, match=".safetensors"):
        save_lora(tmp_path / "bad.pt", {"layers.0.attn.to_q": (down, up)}, alpha=4)
