"""Work ceilings of compute-once reference reuse across models and image sizes: no timing, arithmetic only.

For every (model, image size) this prints what the figures of `conditioning.py` would be if every
multiply-accumulate cost the same (`_work.py`, checked against the engine's own FLOPs by the tests): the overhead
reduction and the speed-up that exact compute-once (the independent condition) can reach, for three references of
the output's size, OmniGen2's default three guidance passes and 50 steps. Reuse leaves in every pass the attention
of text and noise queries over the reference keys, which grows with image size against the linear layers, so the
reduction ceiling falls as images grow while the speed-up ceiling rises: both can only be high together in a band.

    python benchmarks/ceilings.py [--steps 50] [--refs 3] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from _common import bench_config
from _work import RunShape, overhead_reduction, run_macs

from omni_core.config import TransformerConfig  # noqa: E402

PROMPT_LEN, NEGATIVE_LEN = 120, 30  # a chat-templated prompt and the default negative prompt, in MLLM tokens
MODELS = {
    "OmniGen2 4B (released)": TransformerConfig(),
    "benchmark (hidden 720, 8 layers)": bench_config(8, 2, 2048),
    "released layer x 8": bench_config(8, 2, 2048, width="release"),
}
IMAGE_SIDES = (512, 640, 768, 896, 1024)  # pixels; 16 pixels per token side


def ceilings(config: TransformerConfig, noise_tokens: int, refs: int, steps: int) -> dict[str, float]:
    shape = lambda n_refs, three=True: RunShape(PROMPT_LEN, NEGATIVE_LEN, noise_tokens, (noise_tokens,) * n_refs, steps, three)
    text, full = run_macs(config, shape(0)), run_macs(config, shape(refs))
    once = run_macs(config, shape(refs), "condition")
    return {
        "conditional_overhead_reduction": overhead_reduction(once, text, full),
        "conditional_overhead_reduction_vs_two_pass_t2i": overhead_reduction(once, run_macs(config, shape(0, False)), full),
        "speedup": full / once,
        "full_over_text_only": full / text,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--refs", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    rows = []
    for name, config in MODELS.items():
        for side in IMAGE_SIDES:
            rows.append({"model": name, "image": f"{side}x{side}", "tokens": (side // 16) ** 2,
                         **ceilings(config, (side // 16) ** 2, args.refs, args.steps)})
    header = f"{'model':34s} {'image':>9s} {'tokens':>6s}  {'reduction':>9s}  {'vs 2-pass':>9s}  {'speed-up':>8s}  {'full/text':>9s}"
    print(f"work ceilings of compute-once reuse, {args.refs} references, {args.steps} steps, three guidance passes")
    print(header)
    print("-" * len(header))
    for row in rows:
        print(f"{row['model']:34s} {row['image']:>9s} {row['tokens']:6d}  {row['conditional_overhead_reduction']:9.3f}  "
              f"{row['conditional_overhead_reduction_vs_two_pass_t2i']:9.3f}  {row['speedup']:8.2f}  {row['full_over_text_only']:9.2f}")
    if args.json:
        args.json.write_text(json.dumps({"steps": args.steps, "refs": args.refs, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
