"""A small diffusers AutoencoderKL for the synthetic shapes, trained from scratch in a few CPU minutes.

    python -m omni_core.training.shapes.vae --data data/shapes/train.jsonl --output model/vae [--steps 1000]

Same family as OmniGen2's FLUX VAE (16 latent channels, 4 blocks: downsampling factor 8, the pipeline's
LATENT_FACTOR) but narrow. After training, `shift_factor` and `scaling_factor` are set from the posterior means of
the training images, so the latents the transformer sees (mean - shift) * scale have mean 0 and std 1, as
`omni_core.vae.encode_to_latents` applies them.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL
from PIL import Image

VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4,
    block_out_channels=[16, 32, 64, 64],
    layers_per_block=1,
    latent_channels=16,
    norm_num_groups=4,
    sample_size=64,
    use_quant_conv=False,
    use_post_quant_conv=False,
    mid_block_add_attention=False,
    force_upcast=True,
)
KL_WEIGHT = 1e-5  # keeps the posterior near a unit Gaussian without blurring flat colours
INITIAL_LOG_VARIANCE = -8.0  # the posterior starts nearly deterministic: unit noise on tiny latents would hide them


def jsonl_images(jsonl: Path) -> list[Path]:
    """Every distinct image (inputs and outputs) a jsonl file names, resolved against the file's folder."""
    names = []
    for line in Path(jsonl).read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            names += [*row.get("input_images", []), row["output_image"]]
    return [Path(jsonl).parent / name for name in dict.fromkeys(names)]


def load_pixels(paths: list[Path]) -> torch.Tensor:
    """Images [N, 3, H, W] in [-1, 1] (the pipeline's VAE input range)."""
    arrays = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])
    return torch.from_numpy(arrays).permute(0, 3, 1, 2).float() / 127.5 - 1.0


@torch.no_grad()
def latent_statistics(vae: AutoencoderKL, pixels: torch.Tensor, batch_size: int = 64) -> tuple[float, float]:
    """(shift, scale): the posterior means' overall mean and 1 / std over `pixels`."""
    means = torch.cat([vae.encode(pixels[i : i + batch_size]).latent_dist.mean for i in range(0, len(pixels), batch_size)])
    return float(means.mean()), float(1.0 / means.std())


def train_vae(data: Path, output: Path, steps: int = 1000, batch_size: int = 8, learning_rate: float = 2e-3,
              seed: int = 0, max_images: int = 2000, log_every: int = 20, start: Path | None = None) -> AutoencoderKL:
    """Train on the images of `data` (a jsonl file), save to `output` (diffusers layout, safetensors), return it.
    `start`: a VAE folder to continue from instead of random weights."""
    torch.manual_seed(seed)
    paths = jsonl_images(data)[:max_images]
    pixels = load_pixels(paths)
    if start is not None:
        vae = AutoencoderKL.from_pretrained(start).train()
    else:
        vae = AutoencoderKL(**VAE_CONFIG)
        with torch.no_grad():
            vae.encoder.conv_out.bias[VAE_CONFIG["latent_channels"] :] = INITIAL_LOG_VARIANCE
    optimizer = torch.optim.AdamW(vae.parameters(), lr=learning_rate, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    generator = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    for step in range(1, steps + 1):
        batch = pixels[torch.randint(len(pixels), (batch_size,), generator=generator)]
        posterior = vae.encode(batch).latent_dist
        reconstruction = vae.decode(posterior.sample(generator)).sample
        loss = (reconstruction - batch).abs().mean() + (reconstruction - batch).pow(2).mean()
        loss = loss + KL_WEIGHT * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % log_every == 0 or step == steps:
            print(f"vae step {step}/{steps} loss {loss.item():.4f} ({time.perf_counter() - start:.0f} s)", flush=True)
    vae.eval()
    shift, scale = latent_statistics(vae, pixels[:512])
    vae.register_to_config(shift_factor=shift, scaling_factor=scale)
    vae.save_pretrained(output, safe_serialization=True)
    config_file = Path(output) / "config.json"
    config = json.loads(config_file.read_text())
    config.pop("_name_or_path", None)  # where a continued run started from: a local path, no part of the model
    config_file.write_text(json.dumps(config, indent=2) + "\n")
    return vae


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="a jsonl file whose images to train on")
    parser.add_argument("--output", type=Path, required=True, help="folder for config.json + safetensors")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--start", type=Path, default=None, help="a VAE folder to continue training")
    args = parser.parse_args(argv)
    train_vae(args.data, args.output, args.steps, args.batch_size, args.learning_rate, seed=args.seed, start=args.start)


if __name__ == "__main__":
    main()
