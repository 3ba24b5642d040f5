"""Engine results in ComfyUI's conventions: IMAGE tensors, raw-VAE LATENT dicts, and run statistics as JSON for the
front-end extension (web/omnigen2_stats.js)."""

from __future__ import annotations

import math
from typing import Any

import torch

import omni_core

from .devices import output_device


def to_comfy_image(images: torch.Tensor) -> torch.Tensor:
    """Engine images [B, 3, H, W] in 0..1 to ComfyUI IMAGE [B, H, W, 3] float32 on the intermediate device."""
    return images.movedim(1, -1).clamp(0.0, 1.0).to(device=output_device(), dtype=torch.float32).contiguous()


def to_comfy_latent(engine: Any, latents: torch.Tensor) -> dict[str, torch.Tensor]:
    """Engine latents (scaled space) to a ComfyUI LATENT dict in raw VAE space, as VAEDecode / VAEEncode use it."""
    raw = omni_core.latents_to_raw(engine.vae, latents)
    return {"samples": raw.to(device=output_device(), dtype=torch.float32).contiguous()}


def _json_safe(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        value = value.tolist()
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (bool, int, str)):
        return value
    return str(value)


STATS_KEY = "omnigen2_stats"  # the key web/omnigen2_stats.js reads from the sampler's "executed" message


def sampler_ui(stats: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """The `ui` part of the sampler's return: run statistics the front-end extension shows on the node."""
    return {STATS_KEY: [_json_safe(dict(stats))]}
