"""Step caching (TeaCache, TaylorSeer) alone and composed with compute-once references, measured side by side.

    python benchmarks/step_cache.py [--steps N] [--noise-tokens N] [--layers N] [--threads N] [--json PATH]

The benchmark model and inputs of `conditioning.py` (random weights of the released architecture scaled down,
three guidance passes, 3 reference images as large as the output), sampled in six modes in one process, interleaved
(A B C ... A B C ...) over `--repeats` rounds: no step cache, TeaCache (threshold 0.05), TaylorSeer (official order
4, interval 3), each with every reference token run every step (`*_3refs`, the official pipeline) and with
compute-once references (`*_once_3refs`: the independent condition's branch once per generation, exact). A mode's
CPU seconds are the median process CPU time of its runs, its wall seconds the sum over steps of each step's median
over the rounds (steps differ: computed or skipped). Work is the multiply-accumulates of the run given the steps
each pass computed (`_work.step_cache_run_macs`). PSNR compares the final latents with the same conditioning's run
without a step cache (peak: that run's value range), since this model has no VAE.

Speed-ups (ratios of CPU seconds: on a machine shared with other jobs the wall time of a run mostly measures their
load, while one thread's CPU time measures this run's own work; run with --threads 1 there; `wall_speedups` and
`work_speedups` sit beside them): speedup_teacache = full_3refs / teacache_3refs, speedup_taylorseer = full_3refs /
taylorseer_3refs, speedup_<cache>_once_3_refs = full_3refs / <cache>_once_3refs (over the full uncached
3-reference run), and speedup_once_3_refs = full_3refs / once_3refs for the reuse alone.

TeaCache's rescale polynomial is calibrated on the released model's outputs; on random weights the relative change
of the modulated input per step has another scale, so how many steps 0.05 skips here says little about the released
model (the JSON lists the computed steps).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

from _common import environment, median, print_table
from conditioning import Mode, build_model, make_run, work_macs

from omni_core.step_cache import TaylorSeer, TeaCache  # noqa: E402

TEACACHE, TAYLORSEER = TeaCache(threshold=0.05), TaylorSeer()
MODES = [
    Mode("full_3refs", refs=3),
    Mode("teacache_3refs", refs=3, step_cache=TEACACHE),
    Mode("taylorseer_3refs", refs=3, step_cache=TAYLORSEER),
    Mode("once_3refs", refs=3, cache_per_n_steps=0, independent=True),
    Mode("teacache_once_3refs", refs=3, cache_per_n_steps=0, independent=True, step_cache=TEACACHE),
    Mode("taylorseer_once_3refs", refs=3, cache_per_n_steps=0, independent=True, step_cache=TAYLORSEER),
]
# figure -> (baseline mode, faster mode)
SPEEDUPS = {
    "speedup_teacache": ("full_3refs", "teacache_3refs"),
    "speedup_taylorseer": ("full_3refs", "taylorseer_3refs"),
    "speedup_once_3_refs": ("full_3refs", "once_3refs"),
    "speedup_teacache_once_3_refs": ("full_3refs", "teacache_once_3refs"),
    "speedup_taylorseer_once_3_refs": ("full_3refs", "taylorseer_once_3refs"),
}
# figure -> (mode, the same conditioning without a step cache)
PSNRS = {
    "psnr_teacache": ("teacache_3refs", "full_3refs"),
    "psnr_taylorseer": ("taylorseer_3refs", "full_3refs"),
    "psnr_teacache_once_3_refs": ("teacache_once_3refs", "once_3refs"),
    "psnr_taylorseer_once_3_refs": ("taylorseer_once_3refs", "once_3refs"),
}


def psnr(estimate: torch.Tensor, reference: torch.Tensor) -> float:
    """10 log10(peak^2 / MSE) in dB, peak = the reference's value range."""
    mse = (estimate.float() - reference.float()).pow(2).mean().item()
    peak = (reference.max() - reference.min()).item()
    return math.inf if mse == 0 else 10 * math.log10(peak**2 / mse)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--noise-tokens", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--refiner-layers", type=int, default=2)
    parser.add_argument("--width", choices=("bench", "release"), default="bench")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--quick", action="store_true", help="64-token images, 2 layers, 1 refiner layer, 8 steps, 1 round")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.repeats, args.noise_tokens, args.layers, args.refiner_layers = 8, 1, 64, 2, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    noise_side = int(round(args.noise_tokens**0.5)) * 2
    model = build_model(args)
    runs = {mode.name: make_run(model, mode, args.steps, noise_side) for mode in MODES}
    step_seconds = {mode.name: [] for mode in MODES}
    cpu_seconds = {mode.name: [] for mode in MODES}
    latents, stats = {}, {}
    with torch.no_grad():
        for _ in range(args.repeats):
            for mode in MODES:  # interleaved: every mode once per round
                start = time.process_time()
                latents[mode.name], stats[mode.name], seconds = runs[mode.name][0]()
                cpu_seconds[mode.name].append(time.process_time() - start)
                step_seconds[mode.name].append(seconds)
                print(f"  {mode.name}: {sum(seconds):.1f} s", flush=True)
    seconds = {name: sum(median(step) for step in zip(*per_run)) for name, per_run in step_seconds.items()}
    cpu = {name: median(values) for name, values in cpu_seconds.items()}
    macs = {
        mode.name: work_macs(model.config, mode, runs[mode.name][1], args.steps, noise_side, stats[mode.name].get("computed_steps"))
        for mode in MODES
    }
    result = {key: cpu[slow] / cpu[fast] for key, (slow, fast) in SPEEDUPS.items()}
    result.update({key: psnr(latents[mode], latents[reference]) for key, (mode, reference) in PSNRS.items()})
    result.update({
        "wall_speedups": {key: seconds[slow] / seconds[fast] for key, (slow, fast) in SPEEDUPS.items()},
        "work_speedups": {key: macs[slow] / macs[fast] for key, (slow, fast) in SPEEDUPS.items()},
        "seconds": seconds,
        "cpu_seconds": cpu,
        "work_gmac": {name: value / 1e9 for name, value in macs.items()},
        "computed_steps": {name: s.get("computed_steps") for name, s in stats.items()},
        "step_seconds": step_seconds,
        "settings": {"steps": args.steps, "repeats": args.repeats, "noise_tokens": args.noise_tokens, "layers": args.layers,
                     "refiner_layers": args.refiner_layers, "hidden": model.config.hidden_size, **environment()},
    })
    skipped = {name: s.get("pass_steps_skipped", 0) for name, s in stats.items()}
    print_table(
        [{"mode": name, "seconds": seconds[name], "cpu": cpu[name], "gmac": macs[name] / 1e9, "skipped": skipped[name],
          "vs_full": cpu["full_3refs"] / cpu[name], "work_vs_full": macs["full_3refs"] / macs[name]} for name in seconds],
        [("mode", "mode", "s"), ("cpu", "CPU s", ".1f"), ("seconds", "wall s", ".1f"), ("gmac", "GMAC", ".0f"),
         ("skipped", "pass-steps skipped", "d"), ("vs_full", "full_3refs / this (CPU)", ".2f"), ("work_vs_full", "work ratio", ".2f")],
    )
    print()
    for key in (*SPEEDUPS, *PSNRS):
        extra = f" (wall {result['wall_speedups'][key]:.2f}, work {result['work_speedups'][key]:.2f})" if key in SPEEDUPS else " dB"
        print(f"{key} {result[key]:.3f}{extra}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
