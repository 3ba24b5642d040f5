"""Step caching on the bundled model, which draws: seconds, PSNR and accuracy, side by side in one run.

    python benchmarks/step_cache_quality.py [--count 24] [--steps 50] [--threads 2] [--json PATH]

`step_cache.py` measures speed and work on a model of the release's proportions with random weights, where the
relative change between steps has no trained meaning, so how many steps TeaCache skips there says little. Here the
bundled default model samples held-out prompts (`quality.py`'s split, read back from the pixels by the measurer),
each example in every mode in turn:

- text-to-image: no step cache; TeaCache 0.05 with the model's own polynomial (`teacache_coefficients` in its
  config, fitted by `omni_core.training.calibrate_teacache`); TeaCache 0.05 with the official polynomial (fitted to
  the released 3B model); TaylorSeer (official order 4, interval 3);
- in-context, 2 reference images: the full joint model (every reference token every step), then the
  independent-condition LoRA with reference features computed once (`*_once_2_refs`), alone and with each cache.

speedup_<mode> = CPU seconds of the uncached run of the task / the mode's (process CPU time, which on a machine
shared with other jobs measures this run's own work; wall-clock ratios beside them). psnr_<mode>: the decoded images
against the same conditioning without a step cache (pixels in [0, 1], over all examples). Accuracies as quality.py
reads them (t2i colour / shape, in-context exact scene).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

from _common import environment
from quality import ONCE, timed

import omni_core  # noqa: E402
from omni_core.step_cache import OFFICIAL_TEACACHE_COEFFICIENTS, TaylorSeer, TeaCache  # noqa: E402
from omni_core.training.shapes.dataset import examples  # noqa: E402
from omni_core.training.shapes.measure import main_object, read_scene, scene_matches  # noqa: E402
from omni_core.training.shapes.scenes import render  # noqa: E402

T2I_MODES = {
    "none": None,
    "teacache": TeaCache(threshold=0.05),
    "teacache_official": TeaCache(threshold=0.05, coefficients=OFFICIAL_TEACACHE_COEFFICIENTS),
    "taylorseer": TaylorSeer(),
}
IN_CONTEXT_MODES = {  # mode -> (independent-condition LoRA computed once, step cache)
    "full_2_refs": (False, None),
    "once_2_refs": (True, None),
    "teacache_once_2_refs": (True, TeaCache(threshold=0.05)),
    "taylorseer_once_2_refs": (True, TaylorSeer()),
}
BASELINES = {"teacache": "none", "teacache_official": "none", "taylorseer": "none", "once_2_refs": "full_2_refs",
             "teacache_once_2_refs": "full_2_refs", "taylorseer_once_2_refs": "full_2_refs"}
PSNR_REFERENCES = {"teacache": "none", "teacache_official": "none", "taylorseer": "none",
                   "teacache_once_2_refs": "once_2_refs", "taylorseer_once_2_refs": "once_2_refs"}


class Tally:
    """Per mode: CPU and wall seconds, skipped pass-steps, correct answers and the images (for PSNR)."""

    def __init__(self, modes) -> None:
        self.cpu = dict.fromkeys(modes, 0.0)
        self.wall = dict.fromkeys(modes, 0.0)
        self.skipped = dict.fromkeys(modes, 0)
        self.correct = {mode: [0, 0] for mode in modes}
        self.images: dict[str, list[torch.Tensor]] = {mode: [] for mode in modes}

    def add(self, mode: str, run, score) -> None:
        result, wall, cpu = timed(run)
        self.cpu[mode] += cpu
        self.wall[mode] += wall
        self.skipped[mode] += result.stats.get("pass_steps_skipped", 0)
        self.images[mode].append(result.images[0])
        for i, right in enumerate(score(result.images[0])):
            self.correct[mode][i] += right


def psnr(images: list[torch.Tensor], references: list[torch.Tensor]) -> float:
    mse = torch.stack([(a - b).pow(2).mean() for a, b in zip(images, references)]).mean().item()
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    model = omni_core.load_model(args.model)
    independent = model.with_loras([(args.model / omni_core.INDEPENDENT_CONDITION_LORA, 1.0)])  # shares the encoders
    settings = dict(width=64, height=64, steps=args.steps, text_guidance_scale=args.text_guidance, image_guidance_scale=2.0)
    held_out = list(examples(3 * args.count, 0, held_out=True))
    tally = Tally([*T2I_MODES, *IN_CONTEXT_MODES])

    for i, example in enumerate(e for e in held_out if e.task_type == "t2i"):
        want = example.output.shapes[0]

        def score(image):
            found = main_object(read_scene(image))
            return (found is not None and found.color == want.color, found is not None and found.shape == want.shape)

        for mode, step_cache in T2I_MODES.items():
            tally.add(mode, lambda: model.generate(example.instruction, seed=i, step_cache=step_cache, **settings), score)

    for i, example in enumerate(e for e in held_out if e.task_type == "in_context"):
        references = [render(scene, 64) for scene in example.inputs]
        condition = model.encode_condition(example.instruction, images=references)  # the LoRA changes only the transformer
        score = lambda image: (scene_matches(read_scene(image), example.output),)
        for mode, (once, step_cache) in IN_CONTEXT_MODES.items():
            which = independent if once else model
            tally.add(mode, lambda: which.sample(condition, seed=i, step_cache=step_cache, independent_condition=once,
                                                 cache_per_n_steps=ONCE if once else None, **settings), score)

    t2i_count = sum(e.task_type == "t2i" for e in held_out)
    in_context_count = sum(e.task_type == "in_context" for e in held_out)
    figures: dict = {f"speedup_{mode}": tally.cpu[base] / tally.cpu[mode] for mode, base in BASELINES.items()}
    figures.update({f"psnr_{mode}": psnr(tally.images[mode], tally.images[ref]) for mode, ref in PSNR_REFERENCES.items()})
    figures["wall_speedups"] = {f"speedup_{mode}": tally.wall[base] / tally.wall[mode] for mode, base in BASELINES.items()}
    figures["t2i_color_accuracy"] = {mode: tally.correct[mode][0] / t2i_count for mode in T2I_MODES}
    figures["t2i_shape_accuracy"] = {mode: tally.correct[mode][1] / t2i_count for mode in T2I_MODES}
    figures["in_context_accuracy"] = {mode: tally.correct[mode][0] / in_context_count for mode in IN_CONTEXT_MODES}
    figures["cpu_seconds"], figures["wall_seconds"] = tally.cpu, tally.wall
    figures["pass_steps_skipped"] = tally.skipped
    figures["teacache_coefficients"] = {"model": model.transformer.config.teacache_coefficients,
                                        "official": OFFICIAL_TEACACHE_COEFFICIENTS}
    figures["settings"] = {"count_per_task": args.count, "steps": args.steps, "threads": args.threads,
                           "text_guidance_scale": args.text_guidance, **environment()}
    return figures


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=omni_core.DEFAULT_MODEL_DIR)
    parser.add_argument("--count", type=int, default=24, help="held-out examples per task")
    parser.add_argument("--steps", type=int, default=50, help="the official default")
    parser.add_argument("--text-guidance", type=float, default=omni_core.DEFAULT_MODEL_TEXT_GUIDANCE)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    figures = run(args)
    for key, value in figures.items():
        print(f"{key:32s} {value:.3f}" if isinstance(value, float) else f"{key:32s} {value}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
