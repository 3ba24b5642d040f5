"""`python -m omni_core generate ...`: OmniGen2 from the command line, on the bundled model when no weights are named."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import PIL.Image
import torch

from . import DEFAULT_MODEL_SIZE, DEFAULT_MODEL_TEXT_GUIDANCE, load_model
from .errors import OmniGen2Error
from .guidance import OFFICIAL_TEXT_GUIDANCE
from .step_cache import STEP_CACHE_CHOICES, TaylorSeer, TeaCache, step_cache_by_name

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m omni_core", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    gen = commands.add_parser("generate", help="text-to-image, editing or in-context generation")
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--negative-prompt", default=None)
    gen.add_argument("--image", action="append", default=[], help="a reference image; repeat for up to 5")
    gen.add_argument("--width", type=int, default=None,
                     help=f"default: the reference's size with one image, else the model's: 1024 ({DEFAULT_MODEL_SIZE} "
                          "on the bundled model, its training size)")
    gen.add_argument("--height", type=int, default=None)
    gen.add_argument("--steps", type=int, default=50)
    gen.add_argument("--text-guidance", type=float, default=None,
                     help=f"default: {DEFAULT_MODEL_TEXT_GUIDANCE} on the bundled model, "
                          f"else the official {OFFICIAL_TEXT_GUIDANCE}")
    gen.add_argument("--image-guidance", type=float, default=2.0)
    gen.add_argument("--cfg-range", type=float, nargs=2, default=(0.0, 1.0), metavar=("START", "END"))
    gen.add_argument("--max-pixels", type=int, default=1024 * 1024)
    gen.add_argument("--max-side", type=int, default=1024, help="longest side of a reference image")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--step-cache", choices=STEP_CACHE_CHOICES, default="none",
                     help="skip or estimate steps: TeaCache (--teacache-threshold) or TaylorSeer (--taylorseer-order, "
                          "--taylorseer-interval); official defaults")
    gen.add_argument("--teacache-threshold", type=float, default=TeaCache.threshold)
    gen.add_argument("--taylorseer-order", type=int, default=TaylorSeer.order)
    gen.add_argument("--taylorseer-interval", type=int, default=TaylorSeer.interval)
    gen.add_argument("--num-images", type=int, default=1)
    gen.add_argument("--output", default="omnigen2.png", help="image i > 0 of a batch is saved with suffix _i")
    gen.add_argument("--model", default=None,
                     help="OmniGen2 release folder; default: the bundled model (synthetic shapes, 64 x 64)")
    gen.add_argument("--transformer", help="single-file transformer (with --vae, --text-encoder, --tokenizer)")
    gen.add_argument("--vae")
    gen.add_argument("--text-encoder")
    gen.add_argument("--tokenizer")
    gen.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    gen.add_argument("--device", default="cpu")
    return parser


def _model_source(args: argparse.Namespace):
    singles = {"transformer": args.transformer, "vae": args.vae, "text_encoder": args.text_encoder}
    if any(singles.values()):
        if args.model:
            raise OmniGen2Error("pass either --model or the single files (--transformer, --vae, --text-encoder), not both")
        return {**singles, "tokenizer": args.tokenizer}
    return args.model


def _progress_bar(step: int, total: int, _latents: torch.Tensor) -> None:
    filled = int(30 * step / total)
    print(f"\r[{'#' * filled}{'.' * (30 - filled)}] step {step}/{total}", end="\n" if step == total else "", file=sys.stderr, flush=True)


def _save(images: torch.Tensor, output: Path) -> list[Path]:
    output.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image in enumerate(images):
        path = output if i == 0 else output.with_name(f"{output.stem}_{i}{output.suffix}")
        pixels = (image.permute(1, 2, 0).cpu().numpy() * 255.0).round().astype(np.uint8)
        PIL.Image.fromarray(pixels).save(path)
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        started = time.perf_counter()
        model = load_model(_model_source(args), device=args.device, dtype=DTYPES[args.dtype])
        images = [PIL.Image.open(path) for path in args.image]
        result = model.generate(
            args.prompt,
            negative_prompt=args.negative_prompt,
            images=images,
            width=args.width,
            height=args.height,
            steps=args.steps,
            text_guidance_scale=args.text_guidance,
            image_guidance_scale=args.image_guidance,
            cfg_range=tuple(args.cfg_range),
            max_pixels=args.max_pixels,
            max_input_image_side_length=args.max_side,
            seed=args.seed,
            num_images=args.num_images,
            progress=_progress_bar,
            step_cache=step_cache_by_name(args.step_cache, args.teacache_threshold, args.taylorseer_order,
                                          args.taylorseer_interval),
        )
    except (OmniGen2Error, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for path in _save(result.images, Path(args.output)):
        print(f"saved {path} ({result.images.shape[-1]}x{result.images.shape[-2]})")
    print(f"{time.perf_counter() - started:.1f} s, {result.stats['seconds_per_step']:.3f} s per step")
    return 0


if __name__ == "__main__":
    sys.exit(main())
