"""OminiControl2-style conditioning on OmniGen2, measured: reference reuse, the independent condition, compaction.

A randomly initialised transformer of the released architecture scaled down (see `_common.py`) samples 1024-token
images with three guidance passes (cond, ref, uncond) for `--steps` Euler steps, with 0, 1 or 3 reference images of
1024 tokens each. Every mode is timed in the same process, interleaved (A B C A B C ...) over `--repeats` rounds; a
mode's seconds are the median first step plus (steps - 1) x the median later step over all rounds (`run_seconds`;
whole-run wall times are in the JSON too). `--steps` defaults to OmniGen2's own default, 50. Warm-up rounds run two
steps of every mode (each shape once). Peak memory comes from a fresh process per mode sampling three steps (the
cache is built at step 0; later steps repeat step 1). Prints a table; `--json PATH` writes the figures.

Modes: `full_*` run every reference token through every layer each step (the official pipeline); `cached_*` is
OminiControl2's compute-once: the asymmetric mask (independent condition) makes reference features step- and
prompt-invariant, so the condition branch runs once per generation and is exact; `cached_unmasked_*` reuses
per-pass reference features computed at step 0 without the mask (what a model trained without it can use; an
approximation); `compact_0_5_*` encodes references at half size (4x fewer tokens).

conditional_overhead_reduction = 1 - (T_cached - T_text_only) / (T_full - T_text_only), with 3 references. T_text_only
is the same three-pass sampling with the reference tokens removed, so the figure is the share of the reference
tokens' cost that reuse removes; `..._vs_two_pass_t2i` uses a plain text-to-image run (two passes: the ref pass
itself is then counted as overhead) instead. `--width release` runs the released layer (hidden 2520) at fewer
layers, where attention over reference keys weighs what it weighs in the 4B model.

Every figure is printed beside its work ceiling (`_work.py`): the value it takes when every multiply-accumulate costs
the same, i.e. what exactly this work allows any implementation. Reuse cannot remove the attention of text and noise
queries over the reference keys, so the ceiling of the overhead reduction falls as images grow or layers narrow.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import threading
import time
from pathlib import Path

import torch

from _common import PATCH, WIDTHS, bench_config, build_ours, environment, median, print_table, run_worker, time_interleaved
from _work import RunShape, overhead_reduction, run_macs, step_cache_run_macs

from omni_core.condition import Condition, ReferenceImage, TextCondition  # noqa: E402
from omni_core.denoise import denoise  # noqa: E402
from omni_core.options import SamplingOptions  # noqa: E402
from omni_core.step_cache import StepCache, TeaCache  # noqa: E402

TEXT_FEAT_DIM = 256
PROMPT_LEN, NEGATIVE_LEN = 40, 24  # text tokens of the prompt and the negative prompt
WARMUP_STEPS = 2  # a warm-up run meets every shape: step 0 and a later step
MEMORY_STEPS = 3


@dataclasses.dataclass(frozen=True)
class Mode:
    """One way to sample: how many references, at what scale, with which reuse."""

    name: str
    refs: int
    cache_per_n_steps: int | None = None  # 0 means once (n > steps)
    condition_scale: float = 1.0
    independent: bool = False
    three_passes: bool = True
    step_cache: StepCache | None = None  # TeaCache / TaylorSeer (benchmarks/step_cache.py)


MODES = [
    Mode("text_only_3pass", refs=0),
    Mode("text_only_2pass", refs=0, three_passes=False),
    Mode("full_1ref", refs=1),
    Mode("cached_1ref", refs=1, cache_per_n_steps=0, independent=True),
    Mode("cached_unmasked_1ref", refs=1, cache_per_n_steps=0),
    Mode("full_3refs", refs=3),
    Mode("cached_3refs", refs=3, cache_per_n_steps=0, independent=True),
    Mode("cached_unmasked_3refs", refs=3, cache_per_n_steps=0),
    Mode("compact_0_5_3refs", refs=3, condition_scale=0.5),
    Mode("compact_0_5_cached_3refs", refs=3, condition_scale=0.5, cache_per_n_steps=0, independent=True),
]
N1_CHECK_STEPS = 6  # n = 1 vs uncached, bit for bit, over this many steps (at most --steps)

# figure -> (cached mode, baseline mode): 1 - (T_cached - T_baseline) / (T_full_3refs - T_baseline)
REDUCTIONS = {
    "conditional_overhead_reduction": ("cached_3refs", "text_only_3pass"),
    "conditional_overhead_reduction_unmasked": ("cached_unmasked_3refs", "text_only_3pass"),
    "conditional_overhead_reduction_vs_two_pass_t2i": ("cached_3refs", "text_only_2pass"),
    "conditional_overhead_reduction_compact_0_5_cached": ("compact_0_5_cached_3refs", "text_only_3pass"),
}
# figure -> (slower mode, faster mode): T_slower / T_faster
SPEEDUPS = {
    "speedup_1_ref": ("full_1ref", "cached_1ref"),
    "speedup_1_ref_unmasked": ("full_1ref", "cached_unmasked_1ref"),
    "speedup_3_refs": ("full_3refs", "cached_3refs"),
    "speedup_3_refs_unmasked": ("full_3refs", "cached_unmasked_3refs"),
    "speedup_compact_0_5": ("full_3refs", "compact_0_5_3refs"),
    "speedup_compact_0_5_cached": ("full_3refs", "compact_0_5_cached_3refs"),
}


def build_condition(mode: Mode, noise_side: int, seed: int = 1) -> Condition:
    g = torch.Generator().manual_seed(seed)
    text = lambda n: TextCondition(torch.randn(1, n, TEXT_FEAT_DIM, generator=g), torch.ones(1, n, dtype=torch.long))
    positive, negative = text(PROMPT_LEN), text(NEGATIVE_LEN)
    side = int(noise_side * mode.condition_scale)
    scale = 1.0 / mode.condition_scale
    refs = tuple(
        ReferenceImage(torch.randn(16, side, side, generator=g), (noise_side * 8, noise_side * 8), position_scale=scale)
        for _ in range(mode.refs)
    )
    return Condition(positive=positive, negative=negative, references=refs)


def work_macs(config, mode: Mode, condition: Condition, steps: int, noise_side: int, computed_steps: dict | None = None) -> int:
    """The multiply-accumulates a run of this mode, with its `build_condition`, must do (see `_work.py`); with a step
    cache, given the steps each guidance pass computed (the run's stats)."""
    lengths = (condition.positive.embeds.shape[1], condition.negative.embeds.shape[1])
    references = tuple(ref.num_tokens for ref in condition.references)
    shape = RunShape(*lengths, (noise_side // PATCH) ** 2, references, steps, mode.three_passes)
    reuse = "none" if mode.cache_per_n_steps is None else "condition" if mode.independent else "once"
    if mode.step_cache is None:
        return run_macs(config, shape, reuse)
    return step_cache_run_macs(config, shape, reuse, computed_steps, isinstance(mode.step_cache, TeaCache))


def make_run(model, mode: Mode, steps: int, noise_side: int):
    """A closure that samples once in this mode through the engine's `denoise` and returns (latents, stats, wall
    seconds of each step)."""
    condition = build_condition(mode, noise_side)
    n = mode.cache_per_n_steps
    options = SamplingOptions(
        steps=steps, seed=7, text_guidance_scale=5.0, image_guidance_scale=2.0 if mode.three_passes else 1.0,
        cache_per_n_steps=None if n is None else steps + 1 if n == 0 else n,
        independent_condition=mode.independent, step_cache=mode.step_cache,
    )

    def run():
        clock, step_seconds = [time.perf_counter()], []

        def on_step(*_):
            step_seconds.append(time.perf_counter() - clock[0])
            clock[0] = time.perf_counter()

        # text-only runs keep a reference run's three passes when asked (image scale > 1 needs references)
        latents, stats = denoise(model, condition, (noise_side, noise_side), options, on_step,
                                 image_passes=bool(condition.references) or mode.three_passes)
        return latents, stats, step_seconds

    return run, condition


def figures_of(values: dict[str, float]) -> dict[str, float]:
    """The overhead reductions and speed-ups from per-mode values: seconds measured, or MACs for the ceilings."""
    figures = {}
    for key, (cached, baseline) in REDUCTIONS.items():
        if {cached, baseline, "full_3refs"} <= values.keys():
            figures[key] = overhead_reduction(values[cached], values[baseline], values["full_3refs"])
    for key, (slow, fast) in SPEEDUPS.items():
        if {slow, fast} <= values.keys():
            figures[key] = values[slow] / values[fast]
    return figures


def run_seconds(runs: list[list[float]]) -> float:
    """A sampling run's time from its steps' times over all repeats, robust to a shared machine's hiccups: the
    median first step (it computes what reuse keeps) + (steps - 1) x the median of every later step."""
    first = median([steps[0] for steps in runs])
    later = median([s for steps in runs for s in steps[1:]]) if len(runs[0]) > 1 else 0.0
    return first + (len(runs[0]) - 1) * later


def _rss_mb() -> float:
    """This process's resident set size now (Linux /proc), in MiB."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def build_model(args: argparse.Namespace) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_ours(bench_config(args.layers, args.refiner_layers, TEXT_FEAT_DIM, args.width))


def memory_worker(args: argparse.Namespace, noise_side: int) -> None:
    """Peak RSS while sampling, polled every 5 ms (ru_maxrss would report the model build's peak for every mode)."""
    model = build_model(args)
    steps = min(args.steps, MEMORY_STEPS)
    run, _ = make_run(model, next(m for m in MODES if m.name == args.memory_worker), steps, noise_side)
    before, peak, done = _rss_mb(), [0.0], threading.Event()

    def poll() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss_mb())
            time.sleep(0.005)

    watcher = threading.Thread(target=poll, daemon=True)
    watcher.start()
    with torch.no_grad():
        run()
    done.set()
    watcher.join()
    print(json.dumps({"peak_rss_mb": peak[0], "before_sampling_mb": before}))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1, help=f"untimed rounds of {WARMUP_STEPS} steps before the timed ones")
    parser.add_argument("--noise-tokens", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--refiner-layers", type=int, default=2)
    parser.add_argument("--width", choices=sorted(WIDTHS), default="bench", help="hidden 720 (bench) or 2520 (release)")
    parser.add_argument("--quick", action="store_true", help="256-token images, 2 layers, 6 steps, 1 repeat after 1 warm-up")
    parser.add_argument("--no-memory", action="store_true", help="skip the per-mode peak-memory processes")
    parser.add_argument("--modes", nargs="+", metavar="MODE", help="time only these modes (figures needing others are skipped)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--memory-worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        # one warm-up round still: a single timed round that also pays every first call (oneDNN primitives for
        # new shapes, the kernel choice on a new machine) can rank the modes wrongly
        args.steps, args.repeats, args.noise_tokens, args.layers, args.warmup = 6, 1, 256, 2, 1
    noise_side = int(round(args.noise_tokens**0.5)) * 2
    if args.memory_worker:
        memory_worker(args, noise_side)
        return 0

    modes = [m for m in MODES if not args.modes or m.name in args.modes]
    model = build_model(args)
    runs, conditions, stats, steps_seconds = {}, {}, {}, {}
    for mode in modes:
        run, conditions[mode.name] = make_run(model, mode, args.steps, noise_side)
        runs[mode.name] = lambda run=run, name=mode.name: record(name, *run()[1:])

    def record(name, run_stats, step_seconds):
        stats[name] = run_stats
        steps_seconds.setdefault(name, []).append(step_seconds)

    with torch.no_grad():
        for _ in range(args.warmup):
            for mode in modes:
                make_run(model, mode, min(args.steps, WARMUP_STEPS), noise_side)[0]()
        seconds = time_interleaved(runs, args.repeats, warmup=0)
        # n = 1 must reproduce the uncached run exactly
        full_mode, n1_steps = next(m for m in MODES if m.name == "full_3refs"), min(args.steps, N1_CHECK_STEPS)
        full = make_run(model, full_mode, n1_steps, noise_side)[0]()[0]
        n1 = make_run(model, dataclasses.replace(full_mode, cache_per_n_steps=1), n1_steps, noise_side)[0]()[0]
    t = {name: run_seconds(per_run) for name, per_run in steps_seconds.items()}
    macs = {mode.name: work_macs(model.config, mode, conditions[mode.name], args.steps, noise_side) for mode in modes}
    memory = {}
    if not args.no_memory:
        for mode in modes:
            extra = ["--steps", str(args.steps), "--noise-tokens", str(args.noise_tokens), "--layers", str(args.layers),
                     "--refiner-layers", str(args.refiner_layers), "--width", args.width]
            memory[mode.name] = run_worker(Path(__file__), ["--memory-worker", mode.name, *extra])["peak_rss_mb"]
    figures, ceilings = figures_of(t), figures_of(macs)
    result = {
        **figures,
        "max_abs_diff_n1": (full - n1).abs().max().item(),
        "work_ceilings": ceilings,
        "work_gmac": {name: value / 1e9 for name, value in macs.items()},
        "token_counts": {
            name: {"noise": args.noise_tokens, "reference": sum(r.num_tokens for r in c.references)}
            for name, c in conditions.items()
        },
        "reuse_counts": {name: counts for name, counts in stats.items() if "cached" in name},
        "seconds": t,
        "seconds_whole_runs": seconds,
        "peak_memory_mb": memory,
        "settings": {"steps": args.steps, "repeats": args.repeats, "layers": args.layers, "refiner_layers": args.refiner_layers,
                     "hidden": model.config.hidden_size, **environment()},
    }
    rows = [
        {"mode": name, "seconds": t[name], "ref_tokens": result["token_counts"][name]["reference"],
         "gmac": macs[name] / 1e9, "gmac_per_s": macs[name] / 1e9 / t[name],
         "vs_full": t["full_3refs"] / t[name] if "full_3refs" in t else None, "peak_mb": memory.get(name)}
        for name in runs
    ]
    print_table(rows, [("mode", "mode", "s"), ("ref_tokens", "ref tokens", "d"), ("seconds", "seconds", ".2f"),
                       ("gmac", "GMAC", ".0f"), ("gmac_per_s", "GMAC/s", ".0f"), ("vs_full", "full_3refs / this", ".2f"),
                       ("peak_mb", "peak MB", ".0f")])
    print()
    print_table(
        [{"figure": key, "measured": value, "ceiling": ceilings[key], "share": value / ceilings[key]} for key, value in figures.items()],
        [("figure", "figure", "s"), ("measured", "measured", ".3f"), ("ceiling", "work ceiling", ".3f"), ("share", "measured / ceiling", ".3f")],
    )
    print(f"max_abs_diff_n1 {result['max_abs_diff_n1']:.4g}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
