"""Where one transformer forward spends its time, ours beside the official one: torch.profiler's top operators.

    python benchmarks/profile_forward.py [--case NAME] [--noise-tokens N] [--layers N] [--top K] [--threads N]

Same weights and inputs as `vs_official.py` (whose official-code setup it shares). Each model runs one warm-up
forward, then one profiled forward; the tables list operators by self CPU time, so a kernel counts once however deep
it is called. Findings are kept in benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import bench_config, make_inputs  # noqa: E402
from vs_official import DEFAULT_OFFICIAL_REPO, build_pair, cases, forwards  # noqa: E402


def profile_once(fn, top: int) -> tuple[float, str]:
    """(total self CPU seconds, table of the `top` operators) of one call of fn after a warm-up call."""
    fn()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    events = prof.key_averages()
    total = sum(event.self_cpu_time_total for event in events) / 1e6
    return total, events.table(sort_by="self_cpu_time_total", row_limit=top, max_name_column_width=40)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--official-repo", default=DEFAULT_OFFICIAL_REPO)
    known = [case.name for case in cases(quick=True)]
    parser.add_argument("--case", default="1 reference", choices=known)
    parser.add_argument("--noise-tokens", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    config = bench_config(num_layers=args.layers)
    ours, official, freqs_cis = build_pair(args.official_repo, config)
    case = next(case for case in cases(quick=True) if case.name == args.case)
    inputs = make_inputs(case.batch, args.noise_tokens, case.num_refs, case.ref_tokens, case.text_len, config.text_feat_dim)
    run_ours, run_official = forwards(ours, official, freqs_cis, inputs)
    print(f"case {case.name}, {args.noise_tokens} noise tokens, {config.num_layers} layers, {torch.get_num_threads()} threads")
    for name, fn in (("ours", run_ours), ("official", run_official)):
        total, table = profile_once(fn, args.top)
        print(f"\n== {name}: {total:.3f} s self CPU time in all operators\n{table}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
