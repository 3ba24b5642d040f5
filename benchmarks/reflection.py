"""The reflection loop's cost: what computing the original references' features once for the whole loop saves over
running every round as a separate generation (rounds x full cost).

The benchmark transformer (`_common.bench_config`, random weights, as wide in its text input as the bundled MLLM)
runs with the bundled model's VAE and MLLM. A scripted judge answers "no, fix this" every round (the judge's own
cost depends on the judge model and is not part of this figure), so `--rounds` rounds run. Two ways, interleaved
in one process over `--repeats` rounds, with caching on and the independent condition (the setting in which
reference features depend on the images alone):

- `loop`: `model.reflect`: the original references are encoded once, and their condition-branch features are kept
  across rounds (`ConditionFeatureStore`); each round computes the previous result's only;
- `separate`: the same rounds as separate `model.generate` calls (same instructions, same references): every round
  encodes every reference and runs the condition branch of every image.

Both give the same images, bit for bit (every image's condition branch runs as a batch of its own). Seconds are the
median over repeats of the whole run (all rounds); GMAC counts the transformer's multiply-accumulates from the
architecture (`_work.py`; VAE and MLLM work not included), so `saved` has a ceiling that does not depend on the
machine. A second table does the same arithmetic for the released 4B transformer at 1024 x 1024 and 50 steps, with
and without compute-once (a folded instruction is taken as 40 tokens longer than the prompt). Prints the tables;
`--json PATH` writes the figures.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from _common import PATCH, bench_config, build_ours, environment, median, print_table, time_interleaved
from _work import RunShape, condition_branch_macs, run_macs
from ceilings import NEGATIVE_LEN, PROMPT_LEN

from omni_core.config import TransformerConfig  # noqa: E402

import omni_core  # noqa: E402
from omni_core.pipeline import OmniGen2  # noqa: E402
from omni_core.reflection import round_seed  # noqa: E402

PROMPT = "the cat of image 1 wearing the hat of image 2"
ANSWER = "No.\n- make the hat red\n- the cat should look at the viewer"
RELEASED_SIDE, RELEASED_STEPS = 1024, 50  # the arithmetic table: OmniGen2's default size and steps


def build_model(args: argparse.Namespace) -> OmniGen2:
    bundled = omni_core.load_model()
    text_width = bundled.transformer.config.text_feat_dim  # what the bundled MLLM gives
    transformer = build_ours(bench_config(args.layers, args.refiner_layers, text_width))
    return OmniGen2(transformer, bundled.vae, bundled.text_encoder, bundled.scheduler_config)


def reference_images(count: int, side: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.rand(side, side, 3, generator=g) for _ in range(count)]


def settings(args: argparse.Namespace, side: int) -> dict:
    return dict(steps=args.steps, seed=0, width=side, height=side, cache_per_n_steps=args.steps + 1,
                independent_condition=True)


def run_loop(model: OmniGen2, args, images, side):
    return model.reflect(PROMPT, images=images, max_rounds=args.rounds, judge=lambda question, shown: ANSWER,
                         **settings(args, side))


def run_separate(model: OmniGen2, args, images, side, loop) -> list:
    """Each round of `loop` again as its own `generate`: its instruction, the originals and the previous image."""
    results, previous, common = [], [], settings(args, side)
    for r in loop.rounds:
        same = {**common, "seed": round_seed(common["seed"], r.number)}
        results.append(model.generate(r.instruction, images=[*images, *previous], align_res=False, **same))
        previous = [r.image[0]]
    return results


def loop_macs(config, rounds: list[tuple[int, int, bool]], negative: int, tokens: int, steps: int, reuse: str) -> dict[str, int]:
    """Transformer MACs of reflection rounds, given per round (prompt length, references, previous result among them),
    as separate runs and as the loop, which with the condition branch ("condition") computes the originals' once."""
    separate = loop = 0
    for number, (text, references, with_previous) in enumerate(rounds, 1):
        refs = (tokens,) * references
        cost = run_macs(config, RunShape(text, negative, tokens, refs, steps), reuse)
        separate += cost
        if reuse == "condition" and number > 1 and refs:
            cost += condition_branch_macs(config, (tokens,)) if with_previous else 0
            cost -= condition_branch_macs(config, refs)
        loop += cost
    return {"separate": separate, "loop": loop}


def measured_macs(model: OmniGen2, loop, tokens: int, steps: int) -> dict[str, int]:
    encode = model.text_encoder.encode_prompt
    rounds = [(encode(r.instruction).embeds.shape[1], r.references, r.previous_as_reference) for r in loop.rounds]
    negative = model.text_encoder.encode_negative(None).embeds.shape[1]
    return loop_macs(model.transformer.config, rounds, negative, tokens, steps, "condition")


def released_costs(rounds: int, references: int, side: int, steps: int) -> list[dict]:
    """Arithmetic only: the released 4B transformer at side x side, the official sampling (no reuse) and compute-once
    (independent condition): the TMAC of round 1 and of each later round (one more reference), and the loop against
    its rounds as separate generations."""
    tokens = (side // 16) ** 2
    plan = [(PROMPT_LEN, references, False)] + [(PROMPT_LEN + 40, references + 1, True)] * (rounds - 1)
    rows = []
    for reuse, label in (("none", "official (no reuse)"), ("condition", "computed once (independent)")):
        config = TransformerConfig()
        first = loop_macs(config, plan[:1], NEGATIVE_LEN, tokens, steps, reuse)["loop"]
        total = loop_macs(config, plan, NEGATIVE_LEN, tokens, steps, reuse)
        later = (total["loop"] - first) / max(rounds - 1, 1)
        rows.append({"mode": label, "round_1": first / 1e12, "later_round": later / 1e12,
                     "separate": total["separate"] / 1e12, "loop": total["loop"] / 1e12,
                     "saved": 1 - total["loop"] / total["separate"]})
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--references", type=int, default=2, help="original reference images")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--noise-tokens", type=int, default=256, help="tokens of the output and of each reference")
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--refiner-layers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs of each way first")
    parser.add_argument("--quick", action="store_true", help="64-token images, 2 layers, 3 steps, 1 repeat, no warm-up")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.quick:
        args.noise_tokens, args.layers, args.steps, args.repeats, args.warmup = 64, 2, 3, 1, 0
    side = int(round(args.noise_tokens**0.5)) * PATCH * 8
    torch.manual_seed(0)
    model = build_model(args)
    images = reference_images(args.references, side)
    outcome = {}

    def loop():
        outcome["loop"] = run_loop(model, args, images, side)

    def separate():
        outcome["separate"] = run_separate(model, args, images, side, outcome["loop"])

    seconds = time_interleaved({"loop": loop, "separate": separate}, args.repeats, args.warmup)
    rounds = outcome["loop"].rounds
    diff = max((r.image - s.images).abs().max().item() for r, s in zip(rounds, outcome["separate"]))
    computed = {
        "loop": [r.stats["reference_tokens_computed"] for r in rounds],
        "separate": [s.stats["reference_tokens_computed"] for s in outcome["separate"]],
    }
    macs = measured_macs(model, outcome["loop"], args.noise_tokens, args.steps)
    t = {name: median(values) for name, values in seconds.items()}
    result = {
        "seconds": t,
        "seconds_all_repeats": seconds,
        "saved_seconds_share": 1 - t["loop"] / t["separate"],
        "work_gmac": {name: value / 1e9 for name, value in macs.items()},
        "saved_work_share": 1 - macs["loop"] / macs["separate"],
        "reference_tokens_computed_per_round": computed,
        "max_abs_diff_loop_vs_separate": diff,
        "settings": {"rounds": len(rounds), "references": args.references, "steps": args.steps,
                     "noise_tokens": args.noise_tokens, "layers": args.layers, "refiner_layers": args.refiner_layers,
                     "hidden": model.transformer.config.hidden_size, **environment()},
    }
    print_table(
        [{"way": name, "seconds": t[name], "gmac": macs[name] / 1e9,
          "tokens": " + ".join(str(n) for n in computed[name])} for name in ("separate", "loop")],
        [("way", "way", "s"), ("seconds", "seconds", ".2f"), ("gmac", "GMAC", ".2f"),
         ("tokens", "reference tokens computed per round", "s")],
    )
    print(f"saved by the loop: {result['saved_seconds_share']:.3f} of the seconds, {result['saved_work_share']:.3f} "
          f"of the work (ceiling); max abs diff {diff:.2g}")
    released = released_costs(len(rounds), args.references, RELEASED_SIDE, RELEASED_STEPS)
    result["released_4b_tmac"] = released
    print(f"\nreleased 4B transformer, {RELEASED_SIDE}x{RELEASED_SIDE}, {RELEASED_STEPS} steps, {args.references} original "
          f"reference(s), {len(rounds)} rounds (arithmetic, TMAC):")
    print_table(released, [("mode", "mode", "s"), ("round_1", "round 1", ".1f"), ("later_round", "each later round", ".1f"),
                           ("separate", "rounds as separate runs", ".1f"), ("loop", "loop", ".1f"), ("saved", "saved", ".3f")])
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
