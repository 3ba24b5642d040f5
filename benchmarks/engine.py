"""Speed and memory of our engine on the CPU, over a list of named configurations.

    python benchmarks/engine.py [--quick] [--only NAME ...] [--repeats N] [--threads N] [--dtypes D ...] [--json PATH]
                                [--list]

The model is the released OmniGen2 transformer scaled down (see `_common.bench_config`) with random weights, float32
unless `--dtypes` names others (`--dtypes float32 bfloat16` runs every configuration in both, transformer and VAE
alike, and adds the ratio of their CPU times, "/fp32").
Two kinds of configuration:

* `step`: one denoising step, i.e. one call of the velocity of `omni_core.denoise.GuidedRun` running 1, 2 or 3
  guidance passes (cond; cond + uncond; cond + ref + uncond) through the transformer.
* `sample`: a whole sampling run as `OmniGen2.sample` does it (`omni_core.denoise.denoise`, then decoding with the
  tiny test VAE from tests/fixtures/omnigen2-tiny).
Prompts are random embeddings (positive 128 tokens, negative 96), so no text encoder runs.

Every configuration runs in its own Python process so that its peak RSS (VmHWM) is its own: the table
shows the peak and its growth over the process right after building the model ("+MiB"). Seconds are the median of
`--repeats` timed runs after one warm-up run, in wall time and in process CPU time ("CPU s"; with several threads
it sums them). On a shared machine wall times swing with other load: compare CPU times, or run with --threads 1,
where CPU time is the steadiest measure. "tokens" is what the transformer processed per step: the sum over the
step's passes and samples of text + reference + noise tokens; s/1k tok divides the seconds by it (for `sample`:
by steps times it).

To add a benchmark, append a `Bench` to `CONFIGS` (or `QUICK_CONFIGS`); names must stay unique and stable, since
JSON results are compared across issues by name.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    LATENT_CHANNELS,
    REPO_ROOT,
    bench_config,
    build_ours,
    environment,
    kernels_line,
    latent_side,
    max_rss_mb,
    median,
    print_table,
    run_worker,
)

TINY_VAE = REPO_ROOT / "tests" / "fixtures" / "omnigen2-tiny" / "vae"
PASS_SCALES = {1: (1.0, 1.0), 2: (5.0, 1.0), 3: (5.0, 2.0)}  # passes -> (text_guidance_scale, image_guidance_scale)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclasses.dataclass(frozen=True)
class Bench:
    name: str
    kind: str  # "step" or "sample"
    noise_tokens: int  # output image tokens (2x2 latent patches): 256 = 256 px, 1024 = 512 px, 2304 = 768 px
    num_refs: int = 0
    passes: int = 1  # guidance passes per step: 1 cond, 2 cond + uncond, 3 cond + ref + uncond (needs references)
    steps: int = 1  # sampling steps (kind "sample")
    ref_tokens: int | None = None  # tokens per reference image; None: as many as the output
    text_len: int = 128
    negative_text_len: int = 96  # differs from text_len, so passes run as separate forwards, as with real prompts
    num_layers: int = 8
    num_refiner_layers: int = 2
    repeats: int | None = None  # overrides --repeats (long runs)

    def __post_init__(self) -> None:
        if self.kind not in ("step", "sample"):
            raise ValueError(f"{self.name}: kind must be 'step' or 'sample'")
        if self.passes == 3 and not self.num_refs:
            raise ValueError(f"{self.name}: 3 passes (image guidance) need reference images")

    def tokens_per_step(self) -> int:
        """Text + reference + noise tokens the transformer processes in one step, summed over passes."""
        refs = self.num_refs * (self.ref_tokens or self.noise_tokens)
        cond = self.text_len + refs + self.noise_tokens
        if self.passes == 1:
            return cond
        uncond = self.negative_text_len + self.noise_tokens
        return cond + uncond + (self.negative_text_len + refs + self.noise_tokens if self.passes == 3 else 0)


CONFIGS = [
    Bench("step-256", "step", 256),
    Bench("step-1024", "step", 1024),
    Bench("step-2304", "step", 2304),
    Bench("step-1024-cfg2", "step", 1024, passes=2),
    Bench("step-1024-ref1", "step", 1024, num_refs=1),
    Bench("step-1024-ref1-cfg3", "step", 1024, num_refs=1, passes=3),
    Bench("step-1024-ref3", "step", 1024, num_refs=3),
    Bench("step-1024-ref3-cfg3", "step", 1024, num_refs=3, passes=3, repeats=2),
    Bench("step-2304-ref1", "step", 2304, num_refs=1),
    Bench("sample-256-cfg2-4steps", "sample", 256, passes=2, steps=4),
    Bench("sample-1024-ref1-cfg3-3steps", "sample", 1024, num_refs=1, passes=3, steps=3, repeats=1),
]

QUICK_CONFIGS = [
    Bench("quick-step-256", "step", 256, num_layers=2, num_refiner_layers=1),
    Bench("quick-step-576-ref1-cfg3", "step", 576, num_refs=1, passes=3, num_layers=2, num_refiner_layers=1),
    Bench("quick-sample-256-cfg2-2steps", "sample", 256, passes=2, steps=2, num_layers=2, num_refiner_layers=1),
]


def _condition(bench: Bench, text_feat_dim: int, seed: int = 1):
    from omni_core.condition import Condition, ReferenceImage, TextCondition

    g = torch.Generator().manual_seed(seed)

    def text(length: int) -> TextCondition:
        return TextCondition(torch.randn(1, length, text_feat_dim, generator=g), torch.ones(1, length, dtype=torch.long))

    side = latent_side(bench.ref_tokens or bench.noise_tokens)
    references = tuple(
        ReferenceImage(torch.randn(LATENT_CHANNELS, side, side, generator=g), (side * 8, side * 8))
        for _ in range(bench.num_refs)
    )
    return Condition(positive=text(bench.text_len), negative=text(bench.negative_text_len), references=references)


def _tiny_vae(dtype: torch.dtype):
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_pretrained(TINY_VAE).to(dtype).eval()


def _runner(bench: Bench, dtype: torch.dtype):
    """Build everything for `bench`; return (a function doing the timed work once, RSS MiB after building)."""
    from omni_core.denoise import GuidedRun, denoise
    from omni_core.options import SamplingOptions
    from omni_core.vae import decode_latents

    config = bench_config(bench.num_layers, bench.num_refiner_layers)
    transformer = build_ours(config, dtype=dtype)
    condition = _condition(bench, config.text_feat_dim)
    text_scale, image_scale = PASS_SCALES[bench.passes]
    options = SamplingOptions(
        steps=bench.steps if bench.kind == "sample" else 50, text_guidance_scale=text_scale,
        image_guidance_scale=image_scale, independent_condition=False,
    )
    side = latent_side(bench.noise_tokens)

    if bench.kind == "sample":
        # OmniGen2.sample without encoding: the engine's denoising run, then the tiny VAE's decode
        vae = _tiny_vae(dtype)

        def run():
            with torch.no_grad():
                return decode_latents(vae, denoise(transformer, condition, (side, side), options)[0])

        return run, max_rss_mb()

    velocity = GuidedRun(transformer, condition, options).velocity
    noise = torch.randn(1, LATENT_CHANNELS, side, side, generator=torch.Generator().manual_seed(0))
    t = torch.tensor(0.3)

    def run():
        with torch.no_grad():
            return velocity(noise, t, 10)

    return run, max_rss_mb()


def worker(name: str, repeats: int, dtype: str) -> dict:
    bench = next(b for b in CONFIGS + QUICK_CONFIGS if b.name == name)
    run, built_rss = _runner(bench, DTYPES[dtype])
    run()  # warm-up
    seconds, cpu_seconds = [], []
    for _ in range(bench.repeats or repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        run()
        seconds.append(time.perf_counter() - start)
        cpu_seconds.append(time.process_time() - start_cpu)
    peak = max_rss_mb()
    tokens = bench.tokens_per_step()
    s = median(seconds)
    return {
        **dataclasses.asdict(bench),
        "dtype": dtype,
        "tokens": tokens,
        "seconds": s,
        "seconds_all": seconds,
        "cpu_seconds": median(cpu_seconds),
        "cpu_seconds_all": cpu_seconds,
        "s_per_1k_tokens": s / (tokens * (bench.steps if bench.kind == "sample" else 1)) * 1000,
        "peak_rss_mib": peak,
        "peak_over_model_mib": peak - built_rss,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny configurations, under a minute")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these configurations")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per configuration (default 3)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads in every worker")
    parser.add_argument("--dtypes", nargs="+", choices=sorted(DTYPES), default=["float32"], help="run each in these")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--list", action="store_true", help="list the configurations and exit")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    repeats = args.repeats or 3
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:
        print(json.dumps(worker(args.worker, repeats, args.dtypes[0])))
        return 0
    benches = QUICK_CONFIGS if args.quick else CONFIGS
    if args.only:
        known = {b.name: b for b in CONFIGS + QUICK_CONFIGS}
        missing = [n for n in args.only if n not in known]
        if missing:
            parser.error(f"unknown configuration(s) {missing}; see --list")
        benches = [known[n] for n in args.only]
    if args.list:
        for b in benches:
            print(b.name)
        return 0
    dtypes = ", ".join(args.dtypes)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {dtypes}, random weights; {repeats} repeats")
    print(kernels_line())
    rows = []
    for bench in benches:
        threads = ["--threads", str(args.threads)] if args.threads else []
        for dtype in args.dtypes:
            worker_args = ["--worker", bench.name, "--repeats", str(repeats), "--dtypes", dtype, *threads]
            row = run_worker(Path(__file__), worker_args)
            fp32 = next((r for r in rows if r["name"] == bench.name and r["dtype"] == "float32"), None)
            row["cpu_over_fp32"] = None if fp32 is None else row["cpu_seconds"] / fp32["cpu_seconds"]
            rows.append(row)
            print(f"  {bench.name} {dtype}: {row['seconds']:.3f}s", flush=True)
    print()
    print_table(
        rows,
        [
            ("name", "configuration", "s"),
            ("dtype", "dtype", "s"),
            ("num_layers", "layers", "d"),
            ("noise_tokens", "noise tok", "d"),
            ("num_refs", "refs", "d"),
            ("passes", "passes", "d"),
            ("steps", "steps", "d"),
            ("tokens", "tokens/step", "d"),
            ("seconds", "seconds", ".3f"),
            ("s_per_1k_tokens", "s/1k tok", ".3f"),
            ("cpu_seconds", "CPU s", ".3f"),
            ("cpu_over_fp32", "/fp32", ".2f"),
            ("peak_rss_mib", "peak MiB", ".0f"),
            ("peak_over_model_mib", "+MiB", ".0f"),
        ],
    )
    if args.json:
        args.json.write_text(json.dumps({"environment": environment(), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
