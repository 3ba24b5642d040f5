"""Images in [-1, 1] to the transformer's latent space and back through a diffusers `AutoencoderKL`.

Owns three things the raw VAE leaves to callers: the latent normalisation z = (mean - shift_factor) * scaling_factor,
the compute dtype (an fp16 VAE with `force_upcast` runs in float32, because the FLUX VAE overflows fp16 and decodes
black or dark images), and input checks that name the bad shape. Results are float32 on the input's device.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from diffusers import AutoencoderKL

from .device_dtype import execution_device
from .errors import InvalidInputError

_Step = Callable[[AutoencoderKL, torch.Tensor], torch.Tensor]


class _Bound(torch.nn.Module):
    """`step(vae, x)` as a module forward, so `torch.func.functional_call` can run it on swapped-in weights."""

    def __init__(self, vae: AutoencoderKL, step: _Step) -> None:
        super().__init__()
        self.vae = vae
        self.step = step

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.step(self.vae, x)


def _raw_encode(vae: AutoencoderKL, images: torch.Tensor) -> torch.Tensor:
    return vae.encode(images).latent_dist.mean  # the posterior mean: deterministic, no sampling


def _raw_posterior(vae: AutoencoderKL, images: torch.Tensor) -> torch.Tensor:
    posterior = vae.encode(images).latent_dist
    return torch.cat([posterior.mean, posterior.std], dim=1)


def _raw_decode(vae: AutoencoderKL, latents: torch.Tensor) -> torch.Tensor:
    return vae.decode(latents).sample


def _run(vae: AutoencoderKL, step: _Step, x: torch.Tensor) -> torch.Tensor:
    """`step(vae, x)` in the VAE's dtype, or on float32 copies of fp16 weights when `force_upcast` asks for it.

    The copies live for this call only: the module keeps its fp16 weights, so memory returns after the call and
    nothing has to be cast back (even if the step raises or is interrupted).
    """
    if vae.dtype == torch.float16 and vae.config.force_upcast:
        weights = {f"vae.{name}": tensor.float() for name, tensor in vae.named_parameters()}
        out = torch.func.functional_call(_Bound(vae, step), weights, (x.to(execution_device(vae), torch.float32),))
    else:
        out = step(vae, x.to(execution_device(vae), vae.dtype))
    return out.float()


def _check(tensor: torch.Tensor, what: str, channels: int, multiple: int = 1) -> None:
    """Raise InvalidInputError unless `tensor` is finite float [B, channels, H, W] with H, W divisible by `multiple`."""
    if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
        found = tensor.dtype if isinstance(tensor, torch.Tensor) else type(tensor).__name__
        raise InvalidInputError(f"{what} must be a float tensor; got {found}. Convert it to float first.")
    if tensor.ndim != 4 or tensor.shape[1] != channels:
        raise InvalidInputError(
            f"{what} must be [B, {channels}, H, W] (channels first); got shape {tuple(tensor.shape)}. "
            "ComfyUI IMAGE tensors are [B, H, W, C]: permute them with .movedim(-1, 1)."
        )
    height, width = tensor.shape[2:]
    if height % multiple or width % multiple:
        raise InvalidInputError(
            f"{what} height and width must be multiples of {multiple}; got shape {tuple(tensor.shape)}. "
            f"Resize or crop to a multiple of {multiple} (OmniGen2 uses multiples of 16)."
        )
    if not torch.isfinite(tensor).all():
        raise InvalidInputError(f"{what} of shape {tuple(tensor.shape)} contain NaN or infinite values.")


@torch.no_grad()
def encode_to_latents(vae: AutoencoderKL, images: torch.Tensor) -> torch.Tensor:
    """Latents the transformer sees, (posterior mean - shift_factor) * scaling_factor, for images [B, 3, H, W] in
    [-1, 1] with H and W multiples of the VAE's downsampling factor (8 for FLUX). Float32, on the images' device.
    """
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    _check(images, "images", vae.config.in_channels, factor)
    mean = _run(vae, _raw_encode, images)
    return ((mean - (vae.config.shift_factor or 0.0)) * vae.config.scaling_factor).to(images.device)


@torch.no_grad()
def encode_to_latent_distribution(vae: AutoencoderKL, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The posterior in the transformer's latent space: (mean, std), each [B, C, H/8, W/8], float32. Training draws
    mean + std * noise each step, as the official training samples the posterior; `encode_to_latents` is the mean."""
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    _check(images, "images", vae.config.in_channels, factor)
    mean, std = _run(vae, _raw_posterior, images).to(images.device).chunk(2, dim=1)
    scale = vae.config.scaling_factor
    return (mean - (vae.config.shift_factor or 0.0)) * scale, std * scale


def latents_to_raw(vae: AutoencoderKL, latents: torch.Tensor) -> torch.Tensor:
    """Transformer latents to the VAE's raw space (ComfyUI's LATENT convention): latents / scale + shift, float32."""
    return latents.float() / vae.config.scaling_factor + (vae.config.shift_factor or 0.0)


@torch.no_grad()
def decode_latents(vae: AutoencoderKL, latents: torch.Tensor) -> torch.Tensor:
    """Images [B, 3, 8h, 8w], nominally in [-1, 1] but unclamped, from transformer latents [B, C, h, w]
    (latents / scaling_factor + shift_factor, then decode). Float32, on the latents' device.
    """
    _check(latents, "latents", vae.config.latent_channels)
    raw = latents_to_raw(vae, latents)
    # Unclamped, as the official pipeline resizes before it clamps: clamping first would change resized pixels.
    return _run(vae, _raw_decode, raw).to(latents.device)
