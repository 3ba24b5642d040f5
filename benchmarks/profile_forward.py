"""Where one transformer forward (or one guided sampling step) spends its time, ours beside the official one, and the
lowest ours / official that the machine's kernels allow.

    python benchmarks/profile_forward.py [--case NAME ...] [--noise-tokens N] [--layers N] [--top K] [--threads N]
                                         [--rounds N] [--json PATH]

Same weights, inputs and cases as `vs_official.py` (whose official-code setup and case runs it shares), the guided
steps included: for those the floor is ours' kernels of one step in a sampling run against the official's passes.

* Tables (`--top K`, 0 for none): torch.profiler's top operators by self CPU time of one forward of each side after a
  warm-up, so a kernel counts once however deep it is called.
* The kernel floor: one forward of ours is recorded at the dispatcher, keeping every GEMM (MKL through aten, oneDNN)
  and attention kernel call with its very inputs; replaying just those calls is what ours would cost if everything
  else it does (norms, RoPE, residuals, copies, Python) were free. Ours, the official and the replay are timed in
  interleaved rounds (medians of process CPU time, as `vs_official.py`); `kernel floor` = replay / official. Where it
  is above a target, no removal of overhead reaches that target with these kernels: only faster kernels, or less
  exact work, can. The replay reads each kernel's activations from memory, where in the forward the operator before
  it had just left them in cache, so the floor errs high by about one read of them (~1% at the benchmark's shapes).

Findings are kept in benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Callable

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    bench_config,
    environment,
    kernels_line,
    median,
    print_table,
    time_interleaved_with_cpu,
)
from vs_official import DEFAULT_OFFICIAL_REPO, build_pair, case_runs, cases  # noqa: E402

# the products both sides spend most of their time in: GEMMs (MKL through aten, oneDNN) and attention kernels
GEMM_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "mkldnn::_linear_pointwise")
ATTENTION_PREFIX = "aten::_scaled_dot_product_"


def kernel_kind(name: str) -> str:
    """"gemm", "attention" or "other" for a profiler operator name."""
    if name in GEMM_OPS:
        return "gemm"
    if name.startswith(ATTENTION_PREFIX) and name != "aten::scaled_dot_product_attention":  # the dispatcher, not a kernel
        return "attention"
    return "other"


class KernelRecorder(TorchDispatchMode):
    """Keeps every GEMM and attention kernel call (op, args, kwargs) of what runs under it."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if kernel_kind(func._schema.name) != "other":
            self.calls.append((func, args, kwargs))
        return func(*args, **kwargs)


def kernel_replay(fn) -> tuple[Callable[[], None], int]:
    """(a function that runs only the GEMM and attention kernel calls of one call of fn, on the same inputs, and how
    many calls it makes)."""
    recorder = KernelRecorder()
    with torch.no_grad(), recorder:
        fn()
    calls = recorder.calls

    def replay() -> None:
        with torch.no_grad():
            for func, args, kwargs in calls:
                func(*args, **kwargs)

    return replay, len(calls)


def profile_table(fn, top: int) -> tuple[float, str]:
    """(total self CPU seconds, table of the `top` operators) of one call of fn after a warm-up call."""
    fn()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    events = prof.key_averages()
    total = sum(event.self_cpu_time_total for event in events) / 1e6
    return total, events.table(sort_by="self_cpu_time_total", row_limit=top, max_name_column_width=40)


def floor_row(case: str, run_ours, run_official, rounds: int) -> dict:
    """Ours, the official and ours' kernels alone, timed in interleaved rounds (median process CPU seconds)."""
    replay, calls = kernel_replay(run_ours)
    _, cpu = time_interleaved_with_cpu({"ours": run_ours, "official": run_official, "kernels": replay}, rounds)
    ours, official, kernels = (median(cpu[name]) for name in ("ours", "official", "kernels"))
    return {
        "case": case,
        "kernel_calls": calls,
        "ours_cpu_s": ours,
        "official_cpu_s": official,
        "kernels_cpu_s": kernels,
        "ours_other_share": 1 - kernels / ours,
        "ratio": ours / official,
        "kernel_floor": kernels / official,
    }


COLUMNS = [
    ("case", "case", ""),
    ("ours_cpu_s", "ours CPU s", ".3f"),
    ("official_cpu_s", "official CPU s", ".3f"),
    ("kernels_cpu_s", "ours' kernels alone", ".3f"),
    ("kernel_calls", "calls", "d"),
    ("ours_other_share", "ours outside kernels", ".1%"),
    ("ratio", "ours/official", ".2f"),
    ("kernel_floor", "kernel floor", ".2f"),
]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--official-repo", default=DEFAULT_OFFICIAL_REPO)
    known = [case.name for case in cases(quick=True)]
    parser.add_argument("--case", action="append", choices=known, help="repeatable; default: 1 reference")
    parser.add_argument("--noise-tokens", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--top", type=int, default=15, help="operators listed per side (0: summary only)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timed rounds for the kernel floor")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    config = bench_config(num_layers=args.layers)
    ours, official, freqs_cis = build_pair(args.official_repo, config)
    print(f"{args.noise_tokens} noise tokens, {config.num_layers} layers, {torch.get_num_threads()} threads, "
          f"{args.rounds} rounds\n{kernels_line()}")
    rows = []
    for name in args.case or ["1 reference"]:
        case = next(case for case in cases(quick=True) if case.name == name)
        case = dataclasses.replace(case, noise_tokens=args.noise_tokens)
        run_ours, run_official = case_runs(case, ours, official, freqs_cis, config.text_feat_dim, torch.float32)
        run_ours()  # a guided step's first call in a run refines the prompts, which later steps reuse
        for side, fn in (("ours", run_ours), ("official", run_official)) if args.top else ():
            total, table = profile_table(fn, args.top)
            print(f"\n== {name}, {side}: {total:.3f} s self CPU time in all operators\n{table}")
        rows.append(floor_row(name, run_ours, run_official, args.rounds))
    print(f"\nprocess CPU seconds, medians of {args.rounds} interleaved rounds; kernel floor = ours' kernels alone / "
          "official\n")
    print_table(rows, COLUMNS)
    if args.json:
        args.json.write_text(json.dumps({"environment": environment(), "noise_tokens": args.noise_tokens,
                                         "layers": config.num_layers, "rounds": args.rounds, "cases": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
