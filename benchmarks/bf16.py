"""bfloat16 (and fp8 storage) against float32 for whole generations: PSNR of the images and time, on the pipeline
fixtures.

    python benchmarks/bf16.py [--model PATH ...] [--repeats N] [--threads N] [--json PATH]
    python benchmarks/bf16.py --forward [--forward-threads N ...] [--quick] [--repeats N] [--json PATH]

Loads each model four times (float32 and bfloat16: transformer, VAE and text encoder alike; fp8: bfloat16 with the
transformer's projections stored in float8_e4m3fn, as the loader's fp8 weight dtype; fp8 + MLLM: the MLLM's too),
runs the official pipeline cases recorded in tests/fixtures/omnigen2-tiny/pipeline_cases.json (text-to-image, edit,
in-context) with each, and prints per case the PSNR of the bfloat16 images against the float32 ones (and against the
official float32 outputs recorded in the fixtures), of the fp8 images against the bfloat16 ones, and the median CPU
time of each over interleaved rounds. Models default to the
fixtures' tiny model and the bundled default model. Peak signal is 1 (images in [0, 1]).

The tiny models are too small to time. `--forward` times one transformer forward of the benchmark model instead
(`_common.bench_config`: head_dim 120, 8 layers; 1024 noise tokens, text-only and with one 1024-token reference), both
dtypes built in one process and called in alternating rounds at each thread count, so that the ratio is measured
side by side: on a shared host the AMX (bfloat16) path swings with other load far more than float32 does, and
processes run one after another (engine.py --dtypes) can land in different phases of it.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    REPO_ROOT,
    bench_config,
    build_ours,
    environment,
    kernels_line,
    make_inputs,
    median,
    print_table,
    time_interleaved_with_cpu,
)

FIXTURES = REPO_ROOT / "tests" / "fixtures" / "omnigen2-tiny"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
FP8 = {"dtype": torch.bfloat16, "transformer_storage_dtype": torch.float8_e4m3fn}  # the transformer's projections
FP8_BOTH = {**FP8, "text_encoder_storage_dtype": torch.float8_e4m3fn}  # and the MLLM's


def psnr(image: torch.Tensor, reference: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB of images in [0, 1] (inf when equal)."""
    mse = (image.float() - reference.float()).pow(2).mean().item()
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


def pipeline_cases() -> tuple[dict, dict]:
    return load_file(FIXTURES / "pipeline_cases.safetensors"), json.loads((FIXTURES / "pipeline_cases.json").read_text())


def run_case(model, tensors: dict, spec: dict, case: str, progress=None) -> torch.Tensor:
    """One recorded pipeline case: encode the prompts and images, sample, return the images [B, 3, H, W]."""
    from omni_core.options import options_among

    images = [tensors[f"{case}.input_image.{j}"].numpy() for j in range(len(spec["input_image_sizes"]))]
    return model.generate(spec["prompt"], spec["negative_prompt"], images, options_among(spec), progress=progress).images


def compare(model_path: Path, repeats: int) -> list[dict]:
    import omni_core

    variants = {**{name: {"dtype": dtype} for name, dtype in DTYPES.items()}, "fp8": FP8, "fp8_mllm": FP8_BOTH}
    models = {name: omni_core.load_model(model_path, **settings) for name, settings in variants.items()}
    tensors, meta = pipeline_cases()
    rows = []
    for case, spec in meta["cases"].items():
        outputs = {name: run_case(model, tensors, spec, case) for name, model in models.items()}  # also a warm-up
        cpu: dict[str, list[float]] = {name: [] for name in models}
        for _ in range(repeats):
            for name, model in models.items():
                start = time.process_time()
                run_case(model, tensors, spec, case)
                cpu[name].append(time.process_time() - start)
        official = tensors[f"{case}.output"] if model_path.resolve() == FIXTURES.resolve() else None
        rows.append(
            {
                "model": model_path.name,
                "case": case,
                "psnr_db": psnr(outputs["bfloat16"], outputs["float32"]),
                "psnr_vs_official_db": None if official is None else psnr(outputs["bfloat16"], official),
                "psnr_fp8_vs_bf16_db": psnr(outputs["fp8"], outputs["bfloat16"]),
                "psnr_fp8_mllm_vs_bf16_db": psnr(outputs["fp8_mllm"], outputs["bfloat16"]),
                "float32_max_diff_official": None if official is None else (outputs["float32"] - official).abs().max().item(),
                "float32_cpu_s": median(cpu["float32"]),
                "bfloat16_cpu_s": median(cpu["bfloat16"]),
                "bf16_over_fp32": median(cpu["bfloat16"]) / median(cpu["float32"]),
                "fp8_over_bf16": median(cpu["fp8"]) / median(cpu["bfloat16"]),
            }
        )
        print(f"  {model_path.name} {case}: PSNR bf16 {rows[-1]['psnr_db']:.1f} dB, fp8 vs bf16 "
              f"{rows[-1]['psnr_fp8_vs_bf16_db']:.1f} dB ({rows[-1]['psnr_fp8_mllm_vs_bf16_db']:.1f} with the MLLM's)",
              flush=True)
    return rows


FORWARD_CASES = {"text-only": 0, "1 reference": 1}  # case -> references of the output's size


def compare_forward(thread_counts: list[int], repeats: int, quick: bool) -> list[dict]:
    """Our transformer's forward in float32 and bfloat16, alternating, per case and thread count (speed only: these
    weights are random, so accuracy is the pipeline cases' PSNR above)."""
    config = bench_config(num_layers=2 if quick else 8, num_refiner_layers=1 if quick else 2)
    noise_tokens = 256 if quick else 1024
    rows = []
    for case, num_refs in FORWARD_CASES.items():
        calls = {}
        for name, dtype in DTYPES.items():
            model = build_ours(config, dtype=dtype)
            inputs = make_inputs(1, noise_tokens, num_refs, None, 128, config.text_feat_dim, dtype=dtype)
            calls[name] = lambda model=model, inputs=inputs: model(**inputs)
        with torch.no_grad():
            for threads in thread_counts:
                torch.set_num_threads(threads)
                wall, cpu = time_interleaved_with_cpu(calls, repeats)
                ratios = [b / f for b, f in zip(wall["bfloat16"], wall["float32"])]
                rows.append(
                    {
                        "case": case,
                        "threads": threads,
                        "float32_s": median(wall["float32"]),
                        "bfloat16_s": median(wall["bfloat16"]),
                        "bf16_over_fp32": median(ratios),
                        "round_ratios": f"{min(ratios):.2f}-{max(ratios):.2f}",
                        "cpu_bf16_over_fp32": median(cpu["bfloat16"]) / median(cpu["float32"]),
                    }
                )
                print(f"  {case}, {threads} threads: bf16 / fp32 {rows[-1]['bf16_over_fp32']:.2f}", flush=True)
    return rows


FORWARD_COLUMNS = [
    ("case", "case", "s"),
    ("threads", "threads", "d"),
    ("float32_s", "fp32 s", ".3f"),
    ("bfloat16_s", "bf16 s", ".3f"),
    ("bf16_over_fp32", "bf16/fp32", ".2f"),
    ("round_ratios", "per round", "s"),
    ("cpu_bf16_over_fp32", "CPU bf16/fp32", ".2f"),
]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, nargs="+", default=None, help="model folders (default: fixtures, bundled)")
    parser.add_argument("--repeats", type=int, default=3, help="timed interleaved rounds per case")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--forward", action="store_true", help="time one forward of the benchmark model instead")
    parser.add_argument(
        "--forward-threads", type=int, nargs="+", default=None, help="with --forward (default: 1 and --threads or all)"
    )
    parser.add_argument("--quick", action="store_true", help="with --forward: 256 tokens, 2 layers")
    args = parser.parse_args(argv)
    if args.forward:
        threads = args.forward_threads or sorted({1, args.threads or torch.get_num_threads()})
        print(f"torch {torch.__version__}; one forward, bfloat16 vs float32, {args.repeats} alternating rounds")
        print(kernels_line())
        rows = compare_forward(threads, args.repeats, args.quick)
        print()
        print_table(rows, FORWARD_COLUMNS)
        if args.json:
            args.json.write_text(json.dumps({"environment": environment(), "rows": rows}, indent=2))
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    from omni_core import DEFAULT_MODEL_DIR

    paths = args.model or [FIXTURES, DEFAULT_MODEL_DIR]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; bfloat16 and fp8 vs float32, {args.repeats} rounds")
    rows = [row for path in paths for row in compare(path, args.repeats)]
    print()
    print_table(
        rows,
        [
            ("model", "model", "s"),
            ("case", "case", "s"),
            ("psnr_db", "PSNR bf16 vs fp32 dB", ".1f"),
            ("psnr_vs_official_db", "PSNR bf16 vs official dB", ".1f"),
            ("float32_max_diff_official", "fp32 max|diff| official", ".1e"),
            ("psnr_fp8_vs_bf16_db", "PSNR fp8 vs bf16 dB", ".1f"),
            ("psnr_fp8_mllm_vs_bf16_db", "fp8 + MLLM dB", ".1f"),
            ("float32_cpu_s", "fp32 CPU s", ".3f"),
            ("bfloat16_cpu_s", "bf16 CPU s", ".3f"),
            ("bf16_over_fp32", "bf16/fp32", ".2f"),
            ("fp8_over_bf16", "fp8/bf16", ".2f"),
        ],
    )
    if args.json:
        args.json.write_text(json.dumps({"environment": environment(), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
