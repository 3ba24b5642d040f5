"""The models of a training run: the transformer to train (random init from a config, or trained weights), the
frozen text encoder and VAE, and the released layout the trained transformer is written in."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from ..config import TransformerConfig
from ..loading.text_encoder_loader import load_text_encoder
from ..loading.transformer_loader import load_transformer
from ..loading.vae_loader import load_vae
from ..text_encoder import TextEncoder
from ..transformer import OmniGen2Transformer, TransformerBlock
from .config import ModelConfig

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
CLASS_NAME = "OmniGen2Transformer2DModel"


def initialize_weights(model: OmniGen2Transformer) -> OmniGen2Transformer:
    """The official initialisation: Xavier-uniform projections, zero modulation and output layers (every block starts
    as the identity and the model predicts 0), small normal embeddings. Biases zero."""
    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    for block in model.modules():
        if isinstance(block, TransformerBlock) and block.modulation:
            nn.init.zeros_(block.norm1.linear.weight)
            nn.init.zeros_(block.norm1.linear.bias)
    embedder = model.time_caption_embed.timestep_embedder
    for linear in (embedder.linear_1, embedder.linear_2):
        nn.init.normal_(linear.weight, std=0.02)
    nn.init.trunc_normal_(model.time_caption_embed.caption_embedder[1].weight, std=0.02)
    for linear in (model.norm_out.linear_1, model.norm_out.linear_2):
        nn.init.zeros_(linear.weight)
        nn.init.zeros_(linear.bias)
    nn.init.normal_(model.image_index_embedding, std=0.02)
    return model


def build_transformer(config: ModelConfig, independent_condition: bool, seed: int) -> OmniGen2Transformer:
    """The transformer to train, in float32 on the CPU: randomly initialised (seeded) from `transformer_config`, or
    loaded from `transformer` / `<path>/transformer`. Its config records `independent_condition`."""
    if config.transformer_config is not None:
        transformer_config = TransformerConfig.from_json(config.transformer_config)
        transformer_config = dataclasses.replace(transformer_config, independent_condition=independent_condition)
        torch.manual_seed(seed)
        model = initialize_weights(OmniGen2Transformer(transformer_config))
    else:
        model = load_transformer(config.transformer or Path(config.path) / "transformer")
        model.config = dataclasses.replace(model.config, independent_condition=independent_condition)
    return model.train().requires_grad_(True)  # loaded for inference, frozen; a LoRA freezes the base again


def load_frozen(config: ModelConfig, device: torch.device) -> tuple[TextEncoder, nn.Module]:
    """The text encoder and VAE in float32 on `device`, eval, without gradients (they never train)."""
    text_encoder = load_text_encoder(config.text_encoder or config.path, device=device)
    vae = load_vae(config.vae or Path(config.path) / "vae", device=device)
    return text_encoder, vae.eval().requires_grad_(False)


def config_dict(config: TransformerConfig) -> dict:
    """The released config.json: the official keys, plus our own (`independent_condition`,
    `teacache_coefficients`) only when they are set."""
    values = {"_class_name": CLASS_NAME, **dataclasses.asdict(config)}
    if not config.independent_condition:
        values.pop("independent_condition")
    if config.teacache_coefficients is None:
        values.pop("teacache_coefficients")
    return {key: list(value) if isinstance(value, tuple) else value for key, value in values.items()}


def save_transformer(state_dict: dict[str, torch.Tensor], config: TransformerConfig, folder: Path) -> Path:
    """`folder/config.json` + `folder/diffusion_pytorch_model.safetensors`, the release layout `load_model` reads."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {key: value.detach().to("cpu").contiguous() for key, value in state_dict.items()}
    save_file(tensors, folder / WEIGHTS_NAME, metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(config_dict(config), indent=2) + "\n")
    return folder
