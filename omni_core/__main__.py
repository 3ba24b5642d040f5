"""`python -m omni_core generate ...`: OmniGen2 from the command line, on the bundled model when no weights are named."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import PIL.Image
import torch

from . import load_model
from .errors import OmniGen2Error
from .options import SamplingOptions
from .step_cache import STEP_CACHE_CHOICES, STEP_CACHE_TUNING, TaylorSeer, TeaCache, step_cache_by_name

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
SHORT_FLAGS = {"text_guidance_scale": "--text-guidance", "image_guidance_scale": "--image-guidance",
               "max_input_image_side_length": "--max-side"}  # the older, shorter names stay valid


def _add_option_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per `SamplingOptions` field, with its help; unset flags keep the field's default."""
    for option in dataclasses.fields(SamplingOptions):
        flags = ["--" + option.name.replace("_", "-"), *([SHORT_FLAGS[option.name]] if option.name in SHORT_FLAGS else [])]
        default = "" if option.default is None else f" (default: {option.default})"
        kwargs = {"default": None, "help": option.metadata["help"] + default}
        if option.name == "step_cache":
            parser.add_argument(*flags, choices=STEP_CACHE_CHOICES, default="none",
                                help="skip or estimate steps: TeaCache (--teacache-threshold) or TaylorSeer "
                                     "(--taylorseer-order, --taylorseer-interval); official defaults")
            parser.add_argument("--teacache-threshold", type=float, default=TeaCache.threshold)
            parser.add_argument("--taylorseer-order", type=int, default=TaylorSeer.order)
            parser.add_argument("--taylorseer-interval", type=int, default=TaylorSeer.interval)
        elif option.name == "cfg_range":
            parser.add_argument(*flags, type=float, nargs=2, metavar=("START", "END"), **kwargs)
        elif option.type == "bool | None":
            parser.add_argument(*flags, action=argparse.BooleanOptionalAction, **kwargs)
        else:
            parser.add_argument(*flags, type=float if "float" in option.type else int, **kwargs)


def _options(args: argparse.Namespace) -> SamplingOptions:
    """The flags given, as options: the step cache from its four flags, every other field from its own."""
    given = {
        option.name: getattr(args, option.name)
        for option in dataclasses.fields(SamplingOptions)
        if option.name != "step_cache" and getattr(args, option.name) is not None
    }
    step_cache = step_cache_by_name(args.step_cache, **{name: getattr(args, name) for name in STEP_CACHE_TUNING})
    return SamplingOptions.of(**given, step_cache=step_cache)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m omni_core", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    gen = commands.add_parser("generate", help="text-to-image, editing or in-context generation")
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--negative-prompt", default=None)
    gen.add_argument("--image", action="append", default=[], help="a reference image; repeat for up to 5")
    _add_option_flags(gen)
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
        options = _options(args)
        result = model.generate(args.prompt, args.negative_prompt, images, options, progress=_progress_bar)
    except (OmniGen2Error, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for path in _save(result.images, Path(args.output)):
        print(f"saved {path} ({result.images.shape[-1]}x{result.images.shape[-2]})")
    print(f"{time.perf_counter() - started:.1f} s, {result.stats['seconds_per_step']:.3f} s per step")
    return 0


if __name__ == "__main__":
    sys.exit(main())
