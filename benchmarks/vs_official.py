"""Our transformer against the official OmniGen2 one: same random weights, same inputs, outputs and speed compared.

    python benchmarks/vs_official.py [--quick] [--repeats N] [--official-repo PATH] [--compare-kernels] [--dtype D]
                                     [--json PATH]

The official code is imported from a checkout of github.com/VectorSpaceLab/OmniGen2 (default /tmp/official-omnigen2;
it needs `einops` and `diffusers`, both in our venv; without triton or flash_attn it falls back to torch RMSNorm and
SDPA, which is its CPU path). Both models get identical float32 weights (the state-dict keys are equal), outputs
are compared (max abs diff), then one forward of each is timed in interleaved rounds (ours, official, ours, ...);
the table shows medians of wall and process CPU time and the ratios ours / official (target <= 0.8). On a
shared machine use --threads 1 and read the CPU-time ratio, which other processes disturb least.
--compare-kernels adds ours with each float32 kernel path forced (oneDNN, and torch's own = MKL + SDPA) to the same
interleaved rounds, so one run shows whether the machine's automatic choice (kernel_choice.py) is the faster one.
--dtype bfloat16 casts both models and the inputs: two bfloat16 implementations differ by more than round-off, so
each side's output is compared with the official model's in float32 instead (relative RMS error), and ours passes
when it is no further from it than the official's own bfloat16 output (within 10%). That float32 run gets the
bfloat16-rounded weights and inputs: on these random weights rounding them alone moves the output by ~15%, which
would hide any difference in how the two sides compute.

The "guided step" cases time one sampling step's guided velocity instead of one forward: the official pipeline calls
its transformer once per pass (its `predict`: cond, ref, uncond with text and image guidance; cond, uncond with text
guidance only) and combines them, ours runs the same passes through `GuidedVelocity` and `TransformerPasses`, which
refines the noise and references once for all passes that see them. As in a sampling run, ours keeps one runner for
the run: its first step (the untimed call that checks the outputs) refines both prompts, which the context refiner
sees alone, and the timed steps reuse them, as steps 2 to N of a run do.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import inspect
import json
import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    bench_config,
    build_ours,
    environment,
    kernels_line,
    make_inputs,
    median,
    print_table,
    time_interleaved_with_cpu,
)
from ceilings import NEGATIVE_LEN  # noqa: E402
from omni_core.condition import Condition, ReferenceImage, TextCondition  # noqa: E402
from omni_core.denoise import GuidedRun  # noqa: E402
from omni_core.guidance import GuidancePass, combine_guidance, planned_passes  # noqa: E402
from omni_core.kernel_choice import ONEDNN_PATHS, runnable_paths, set_cpu_gemm  # noqa: E402
from omni_core.options import SamplingOptions  # noqa: E402

DEFAULT_OFFICIAL_REPO = "/tmp/official-omnigen2"
TOLERANCE = 1e-4
BF16_ERROR_RATIO = 1.1  # bfloat16: ours' error against the official float32 output, at most this x the official's


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    batch: int
    noise_tokens: int
    num_refs: int
    text_len: int = 128
    ref_tokens: int | None = None  # None: as many as the noise image
    guided: bool = False  # one sampling step's guidance passes (official: a forward per pass) instead of one forward


def cases(quick: bool) -> list[Case]:
    tokens = 256 if quick else 1024
    return [
        Case("text-only", 1, tokens, 0),
        Case("1 reference", 1, tokens, 1),
        Case("3 references", 1, tokens, 3),
        Case("batch 2, 1 ref (guidance-like)", 2, tokens, 1),
        Case("guided step, text-only (2 passes)", 1, tokens, 0, guided=True),
        Case("guided step, 1 ref (3 passes)", 1, tokens, 1, guided=True),
        Case("guided step, 3 refs (3 passes)", 1, tokens, 3, guided=True),
    ]


def import_official(repo: str):
    """The official transformer class and RoPE table builder, or exit with a message saying what is missing."""
    if not (Path(repo) / "omnigen2" / "models" / "transformers" / "transformer_omnigen2.py").is_file():
        sys.exit(
            f"Official OmniGen2 code not found at {repo}. Extract it with e.g.\n"
            f"  mkdir -p {repo} && git --git-dir=<OmniGen2 git dir> archive HEAD omnigen2 | tar -x -C {repo}\n"
            "or pass --official-repo PATH."
        )
    sys.path.insert(0, repo)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "install triton / flash_attn for better performance"
            from omnigen2.models.transformers.repo import OmniGen2RotaryPosEmbed
            from omnigen2.models.transformers.transformer_omnigen2 import OmniGen2Transformer2DModel
    except ImportError as error:
        sys.exit(f"The official OmniGen2 code at {repo} is not importable: {error}. It needs einops and diffusers.")
    return OmniGen2Transformer2DModel, OmniGen2RotaryPosEmbed


def build_pair(repo: str, config):
    official_cls, rope_cls = import_official(repo)
    ours = build_ours(config)
    accepted = inspect.signature(official_cls.__init__).parameters  # our config may carry extra (engine-only) fields
    official = official_cls(**{k: v for k, v in dataclasses.asdict(config).items() if k in accepted}).eval()
    official.load_state_dict(ours.state_dict(), strict=True)
    freqs_cis = rope_cls.get_freqs_cis(config.axes_dim_rope, config.axes_lens, theta=10000)
    return ours, official, freqs_cis


def forwards(ours, official, freqs_cis, inputs: dict):
    def run_ours():
        with torch.no_grad():
            return ours(**inputs)

    def run_official():
        with torch.no_grad():
            return official(
                inputs["hidden_states"],
                inputs["timestep"],
                inputs["text_hidden_states"],
                freqs_cis,
                inputs["text_attention_mask"],
                ref_image_hidden_states=inputs["ref_image_hidden_states"],
            )

    return run_ours, run_official


def guided_steps(ours, official, freqs_cis, inputs: dict, negative: torch.Tensor):
    """One step's guided velocity, each side running the passes as its sampler does: ours the velocity of the
    engine's `GuidedRun` (its `TransformerPasses` kept for the run), the official a forward per pass, combined as its pipeline combines them."""
    prompt = TextCondition(inputs["text_hidden_states"], inputs["text_attention_mask"])
    negative_text = TextCondition(negative, torch.ones(negative.shape[:2], dtype=torch.long))
    refs = inputs["ref_image_hidden_states"]
    latents = refs[0] if refs else []
    references = tuple(ReferenceImage(latent, (latent.shape[1] * 8, latent.shape[2] * 8)) for latent in latents)
    condition = Condition(positive=prompt, negative=negative_text, references=references)
    options = SamplingOptions(steps=1, text_guidance_scale=5.0, image_guidance_scale=2.0, independent_condition=False)
    guided = GuidedRun(ours, condition, options).velocity
    passes = [guided.passes[name] for name in planned_passes(guided.text_scale, guided.image_scale)]
    x, t = inputs["hidden_states"], inputs["timestep"][0]

    def run_ours():
        return guided(x, t, 0)

    def run_official():
        with torch.no_grad():
            velocity = {p.name: official_pass(p) for p in passes}
        return combine_guidance(velocity, guided.text_scale, guided.image_scale)

    def official_pass(p: GuidancePass) -> torch.Tensor:
        refs_seen = refs if p.with_references else None
        return official(x, t.expand(1), p.text.embeds, freqs_cis, p.text.mask, ref_image_hidden_states=refs_seen)

    return run_ours, run_official


def case_runs(case: Case, ours, official, freqs_cis, text_feat_dim: int, dtype: torch.dtype, run_dtype=None):
    """(run ours, run official) for one case, inputs drawn in `dtype` and run in `run_dtype` (default the same)."""
    inputs = make_inputs(
        case.batch, case.noise_tokens, case.num_refs, case.ref_tokens, case.text_len, text_feat_dim, dtype=dtype
    )
    negative = torch.randn(1, NEGATIVE_LEN, text_feat_dim, generator=torch.Generator().manual_seed(2)).to(dtype)
    if run_dtype is not None:
        cast = lambda t: t.to(run_dtype) if t.is_floating_point() else t
        refs = inputs["ref_image_hidden_states"]
        inputs = {name: cast(value) for name, value in inputs.items() if name != "ref_image_hidden_states"}
        inputs["ref_image_hidden_states"] = refs and [[cast(latent) for latent in sample] for sample in refs]
        negative = cast(negative)
    if case.guided:
        return guided_steps(ours, official, freqs_cis, inputs, negative)
    return forwards(ours, official, freqs_cis, inputs)


def relative_error(output: torch.Tensor, exact: torch.Tensor) -> float:
    return ((output.float() - exact).pow(2).mean().sqrt() / exact.pow(2).mean().sqrt()).item()


def forced(run, path: str):
    """`run` with the CPU kernels forced to `path` ("onednn" or "mkl"), the automatic choice restored after."""

    def run_forced():
        set_cpu_gemm(path)
        try:
            return run()
        finally:
            set_cpu_gemm(None)

    return run_forced


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--official-repo", default=DEFAULT_OFFICIAL_REPO)
    parser.add_argument("--quick", action="store_true", help="256 noise tokens, 3 rounds: well under a minute")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds per case (default 5, quick 3)")
    parser.add_argument("--layers", type=int, default=None, help="joint layers (default 8, quick 4)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--compare-kernels", action="store_true", help="also time ours with each kernel path forced")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="both models' dtype")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    dtype = getattr(torch, args.dtype)
    repeats = args.repeats or (3 if args.quick else 5)
    if args.threads:
        torch.set_num_threads(args.threads)
    config = bench_config(num_layers=args.layers or (4 if args.quick else 8))

    ours, official, freqs_cis = build_pair(args.official_repo, config)
    ours, official = ours.to(dtype), official.to(dtype)
    # bfloat16's yardstick: the official model in float32 with the same (rounded) weights
    reference = None if dtype == torch.float32 else copy.deepcopy(official).to(torch.float32)
    print(
        f"model: hidden {config.hidden_size}, heads {config.num_attention_heads}/{config.num_kv_heads}, head_dim "
        f"{config.head_dim}, {config.num_layers} layers + {config.num_refiner_layers} refiner layers, {args.dtype}; "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; {repeats} interleaved rounds"
    )
    print(kernels_line())
    # forcing oneDNN where one of its paths cannot run (bfloat16 without AVX-512) is an error: time torch's alone then
    forced_paths = ("onednn", "mkl") if runnable_paths(dtype) == ONEDNN_PATHS else ("mkl",)
    forced_paths = forced_paths if args.compare_kernels else ()
    rows = []
    for case in cases(args.quick):
        run_ours, run_official = case_runs(case, ours, official, freqs_cis, config.text_feat_dim, dtype)
        ours_out, official_out = run_ours(), run_official()
        diff = (ours_out.float() - official_out.float()).abs().max().item()
        errors = {}
        if reference is not None:
            exact = case_runs(case, ours, reference, freqs_cis, config.text_feat_dim, dtype, torch.float32)[1]()
            errors = {"ours_error": relative_error(ours_out, exact), "official_error": relative_error(official_out, exact)}
        candidates = {"ours": run_ours, "official": run_official}
        candidates.update({f"ours_{path}": forced(run_ours, path) for path in forced_paths})
        wall, cpu = time_interleaved_with_cpu(candidates, repeats, warmup=0)
        ref_tokens = case.num_refs * (case.ref_tokens or case.noise_tokens)
        row = {
            "case": case.name,
            "batch": case.batch,
            "tokens": case.text_len + ref_tokens + case.noise_tokens,
            "max_abs_diff": diff,
            **errors,
            "ours_s": median(wall["ours"]),
            "official_s": median(wall["official"]),
            "ratio": median(wall["ours"]) / median(wall["official"]),
            "ours_cpu_s": median(cpu["ours"]),
            "official_cpu_s": median(cpu["official"]),
            "cpu_ratio": median(cpu["ours"]) / median(cpu["official"]),
            "ours_all_s": wall["ours"],
            "official_all_s": wall["official"],
        }
        for path in forced_paths:
            row[f"ours_{path}_cpu_ratio"] = median(cpu[f"ours_{path}"]) / median(cpu["official"])
        rows.append(row)
        print(
            f"  {case.name}: ours {row['ours_s']:.3f}s official {row['official_s']:.3f}s ratio {row['ratio']:.2f} "
            f"(CPU time ratio {row['cpu_ratio']:.2f})",
            flush=True,
        )
    print()
    print_table(
        rows,
        [
            ("case", "case", "s"),
            ("batch", "B", "d"),
            ("tokens", "tokens/sample", "d"),
            ("max_abs_diff", "max |diff|", ".2e"),
            ("ours_error", "ours err vs fp32", ".4f"),
            ("official_error", "official err vs fp32", ".4f"),
            ("ours_s", "ours s", ".3f"),
            ("official_s", "official s", ".3f"),
            ("ratio", "ours/official", ".2f"),
            ("ours_cpu_s", "ours CPU s", ".3f"),
            ("official_cpu_s", "official CPU s", ".3f"),
            ("cpu_ratio", "CPU ratio", ".2f"),
            ("ours_onednn_cpu_ratio", "CPU ratio onednn", ".2f"),
            ("ours_mkl_cpu_ratio", "CPU ratio mkl", ".2f"),
        ],
    )
    if reference is None:
        worst = max(row["max_abs_diff"] for row in rows)
        agree = worst < TOLERANCE
        print(f"\noutputs {'agree' if agree else 'DISAGREE'}: max abs diff {worst:.2e} (tolerance {TOLERANCE:.0e})")
    else:
        worst = max(row["ours_error"] / row["official_error"] for row in rows)
        agree = worst <= BF16_ERROR_RATIO
        print(
            f"\nbfloat16 {'as faithful as' if agree else 'LESS FAITHFUL THAN'} the official's: relative error against "
            f"the official float32 output at most {worst:.3f}x the official bfloat16 one's (limit {BF16_ERROR_RATIO})"
        )
    if args.json:
        args.json.write_text(
            json.dumps({"environment": environment(), "config": dataclasses.asdict(config), "rows": rows}, indent=2)
        )
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
