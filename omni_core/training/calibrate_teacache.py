"""Fit TeaCache's rescale polynomial to a model, and store it in the model's transformer config.

    python -m omni_core.training.calibrate_teacache [--model DIR] [--prompts FILE] [--count 16] [--steps 20 50]
                                                    [--write]

The official polynomial was fitted to the released 3B model; on other weights the official threshold skips nothing
or far too much (see step_cache.py). This samples the model with every step computed (`TeaCacheCalibration`),
fits the polynomial to the changes it records and prints it; `--write` stores it as `teacache_coefficients` in
<model>/transformer/config.json, which `TeaCache()` then takes for that model.

Prompts: `--prompts FILE` (one text-to-image prompt per line), else examples of the synthetic shapes data the
bundled default model was trained on (text-to-image, edit and in-context, from the training distribution; not the
held-out split the quality benchmark scores).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from ..errors import ModelFileError, OmniGen2Error
from ..loading.model_loader import DEFAULT_MODEL_DIR, DEFAULT_MODEL_TEXT_GUIDANCE, load_model
from ..pipeline import OmniGen2
from ..step_cache import TeaCacheCalibration, polynomial
from .shapes.dataset import examples
from .shapes.scenes import render

CALIBRATION_SEED = 1  # the shapes data seed whose training-distribution examples are sampled (the model used 0)


def prompts_and_images(prompts_file: Path | None, count: int, size: int) -> list[tuple[str, list]]:
    """(instruction, reference images) to sample: the file's lines, else `count` shapes examples of each task."""
    if prompts_file is not None:
        try:
            lines = [line.strip() for line in prompts_file.read_text().splitlines()]
        except OSError as error:
            raise ModelFileError(f"--prompts '{prompts_file}' cannot be read: {error}.") from error
        prompts = [(line, []) for line in lines if line]
        if not prompts:
            raise ModelFileError(f"--prompts '{prompts_file}' holds no prompt: write one per line.")
        return prompts
    return [
        (example.instruction, [render(scene, size) for scene in example.inputs])
        for example in examples(3 * count, CALIBRATION_SEED, held_out=False)
    ]


def calibrate(
    model: OmniGen2,
    prompts: list[tuple[str, list]],
    steps: tuple[int, ...] = (20, 50),
    size: int = 64,
    text_guidance_scale: float = 5.0,
    image_guidance_scale: float = 2.0,
    degree: int = 4,
) -> tuple[tuple[float, ...], TeaCacheCalibration]:
    """The model's polynomial (highest power first) and the recorded (input change, output change) pairs. Several
    step counts give the fit both the large changes of short schedules and the small ones of long schedules."""
    calibration = TeaCacheCalibration()
    for seed, (instruction, images) in enumerate(prompts):
        condition = model.encode_condition(instruction, images=images)
        for count in steps:
            model.sample(condition, width=size, height=size, steps=count, seed=seed, step_cache=calibration,
                         text_guidance_scale=text_guidance_scale, image_guidance_scale=image_guidance_scale)
    return calibration.fit(degree), calibration


def write_coefficients(model_dir: Path, coefficients: tuple[float, ...]) -> Path:
    """Set `teacache_coefficients` in <model_dir>/transformer/config.json, written whole then moved into place."""
    config_file = model_dir / "transformer" / "config.json"
    if not config_file.is_file():
        raise ModelFileError(
            f"'{config_file}' not found: --write needs a model folder in the release layout (transformer/config.json)."
        )
    values = json.loads(config_file.read_text())
    values["teacache_coefficients"] = list(coefficients)
    partial = config_file.with_suffix(".json.partial")
    partial.write_text(json.dumps(values, indent=2) + "\n")
    partial.replace(config_file)
    return config_file


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m omni_core.training.calibrate_teacache",
                                     description=__doc__.split("\n\n")[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR, help="a model folder (default: the bundled model)")
    parser.add_argument("--prompts", type=Path, help="text-to-image prompts, one per line (default: shapes examples)")
    parser.add_argument("--count", type=int, default=16, help="shapes examples per task, without --prompts")
    parser.add_argument("--steps", type=int, nargs="+", default=[20, 50], help="step counts each prompt is sampled at")
    parser.add_argument("--size", type=int, default=64, help="image side (the bundled model trained at 64)")
    parser.add_argument("--text-guidance", type=float, default=DEFAULT_MODEL_TEXT_GUIDANCE,
                        help=f"default: the bundled model's, {DEFAULT_MODEL_TEXT_GUIDANCE}")
    parser.add_argument("--image-guidance", type=float, default=2.0)
    parser.add_argument("--degree", type=int, default=4)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--write", action="store_true", help="store the fit in <model>/transformer/config.json")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        model = load_model(args.model)
        prompts = prompts_and_images(args.prompts, args.count, args.size)
        coefficients, calibration = calibrate(model, prompts, tuple(args.steps), args.size, args.text_guidance,
                                              args.image_guidance, args.degree)
        x, y = np.array(calibration.pairs).T
        residual = float(np.sqrt(np.mean((np.array([polynomial(coefficients, v) for v in x]) - y) ** 2)))
        print(f"{len(calibration.pairs)} step pairs, input change {x.min():.4f}-{x.max():.4f}, "
              f"output change {y.min():.4f}-{y.max():.4f}, fit RMS residual {residual:.4f}")
        print("teacache_coefficients", json.dumps(list(coefficients)))
        if args.write:
            print(f"written to {write_coefficients(args.model, coefficients)}")
    except OmniGen2Error as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
