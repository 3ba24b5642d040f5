"""Shared pieces of the benchmarks: the scaled-down architecture, deterministic random weights, inputs, timing.

The benchmark model is the released OmniGen2 transformer scaled down: head_dim 120 with Omni-RoPE axes (40, 40, 40)
and 3 query heads per key/value head as released (21 / 7), but 6 heads (hidden 720) and 8 joint layers instead of
21 heads and 32 layers, and a 256-wide text input. Timings therefore show the engine's overheads at realistic head
shapes on a machine where the full 4B model does not fit a benchmark budget.

`bench_config(width="release")` keeps the released layer itself (hidden 2520, 21 / 7 heads, feed-forward 10240) and
scales down depth only: every joint layer of the release is identical, so per-layer cost proportions (the attention
over reference keys against the linear layers, which hidden 720 overstates ~3.4x) are exactly the release's.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from omni_core.config import TransformerConfig  # noqa: E402
from omni_core.transformer import OmniGen2Transformer  # noqa: E402

LATENT_CHANNELS = 16
PATCH = 2


WIDTHS = {  # hidden size, query heads, key/value heads (head_dim 120 in both)
    "bench": (720, 6, 2),
    "release": (2520, 21, 7),
}


def bench_config(
    num_layers: int = 8, num_refiner_layers: int = 2, text_feat_dim: int = 256, width: str = "bench"
) -> TransformerConfig:
    """The released architecture scaled down (see the module docstring)."""
    hidden, heads, kv_heads = WIDTHS[width]
    return TransformerConfig(
        hidden_size=hidden,
        num_attention_heads=heads,
        num_kv_heads=kv_heads,
        axes_dim_rope=(40, 40, 40),
        num_layers=num_layers,
        num_refiner_layers=num_refiner_layers,
        text_feat_dim=text_feat_dim,
    )


@torch.no_grad()
def randomize_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Fill every parameter with deterministic random values of a sane scale (no zero-initialised gates).

    Matrices ~ N(0, 1 / fan_in); norm weights ~ 1 + N(0, 0.1); biases and other vectors ~ N(0, 0.02).
    Values depend only on the parameter names and the seed, so two models with equal keys get equal weights.
    """
    generator = torch.Generator().manual_seed(seed)
    for name, parameter in sorted(model.named_parameters()):
        if parameter.ndim >= 2 and name != "image_index_embedding":
            values = torch.randn(parameter.shape, generator=generator) / parameter.shape[1] ** 0.5
        elif "norm" in name and name.endswith("weight"):
            values = 1.0 + 0.1 * torch.randn(parameter.shape, generator=generator)
        else:
            values = 0.02 * torch.randn(parameter.shape, generator=generator)
        parameter.copy_(values.to(parameter.dtype))
    return model


def build_ours(config: TransformerConfig, seed: int = 0, dtype: torch.dtype = torch.float32) -> OmniGen2Transformer:
    return randomize_(OmniGen2Transformer(config), seed).to(dtype).eval()


def latent_side(noise_tokens: int) -> int:
    """Latent side length (pixels / 8) of a square image with `noise_tokens` 2x2 patches."""
    side = round(noise_tokens**0.5)
    if side * side != noise_tokens:
        raise ValueError(f"{noise_tokens} is not a square number of tokens")
    return side * PATCH


def make_inputs(
    batch: int,
    noise_tokens: int,
    num_refs: int,
    ref_tokens: int | None,
    text_len: int,
    text_feat_dim: int,
    seed: int = 1,
    dtype: torch.dtype = torch.float32,
) -> dict:
    """Random transformer inputs: latents [B, 16, H, W], timestep [B], text [B, L, D] + mask, refs per sample.
    Values are drawn in float32 and then cast, so every dtype gets the same inputs, rounded."""
    g = torch.Generator().manual_seed(seed)
    side = latent_side(noise_tokens)
    ref_side = latent_side(ref_tokens or noise_tokens)

    def draw(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g).to(dtype)

    latents = draw(batch, LATENT_CHANNELS, side, side)
    refs = [[draw(LATENT_CHANNELS, ref_side, ref_side) for _ in range(num_refs)] for _ in range(batch)]
    return {
        "hidden_states": latents,
        "timestep": torch.full((batch,), 0.3, dtype=dtype),
        "text_hidden_states": draw(batch, text_len, text_feat_dim),
        "text_attention_mask": torch.ones(batch, text_len, dtype=torch.long),
        "ref_image_hidden_states": refs if num_refs else None,
    }


def time_interleaved(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Run each function `warmup` times, then `repeats` rounds of A B A B ..., returning the wall seconds of each call."""
    return time_interleaved_with_cpu(fns, repeats, warmup)[0]


def time_interleaved_with_cpu(
    fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 1
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """As `time_interleaved`, returning (wall seconds, process CPU seconds) of each call.

    On a shared machine CPU time is the steadier measure, most of all with one thread (no OpenMP spin-waiting while
    descheduled).
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    wall: dict[str, list[float]] = {name: [] for name in fns}
    cpu: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    return wall, cpu


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def max_rss_mb() -> float:
    """This process's peak resident set size so far, in MiB: Linux's VmHWM, else ru_maxrss (KiB on Linux). On Linux
    ru_maxrss is seeded at exec() with the spawning process's peak (subprocess spawns with vfork), VmHWM is not."""
    try:
        return int(Path("/proc/self/status").read_text().split("VmHWM:")[1].split()[0]) / 1024.0
    except (OSError, IndexError, ValueError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_worker(script: Path, args: Sequence[str], timeout: float | None = None) -> dict:
    """Run `python script args...` in a fresh process and parse the JSON line it prints last on stdout."""
    process = subprocess.run(
        [sys.executable, str(script), *args], capture_output=True, text=True, timeout=timeout, env=dict(os.environ)
    )
    if process.returncode != 0:
        raise RuntimeError(f"worker {' '.join(args)} failed:\n{process.stderr[-4000:]}")
    return json.loads(process.stdout.strip().splitlines()[-1])


def environment() -> dict:
    """What the figures depend on, including the CPU and the kernels chosen for it in each dtype (kernel_choice.py)."""
    import dataclasses

    from omni_core.kernel_choice import cpu_description, current_kernels

    return {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "cpu": cpu_description()[0],
        "cpu_kernels": dataclasses.asdict(current_kernels()),
        "cpu_kernels_bfloat16": dataclasses.asdict(current_kernels(torch.bfloat16)),
        "python": sys.version.split()[0],
    }


def kernels_line() -> str:
    """The CPU and the kernel paths in force, for a benchmark's header."""
    env = environment()
    kernels, bf16 = env["cpu_kernels"], env["cpu_kernels_bfloat16"]
    return (
        f"CPU {env['cpu']}; float32 kernels: linear {kernels['linear']}, attention {kernels['attention']} "
        f"({kernels['source']}); bfloat16 attention {bf16['attention']} ({bf16['source']}); "
        "override with OMNI_CORE_CPU_GEMM=onednn|mkl"
    )


def print_table(rows: list[dict], columns: list[tuple[str, str, str]]) -> None:
    """columns: (key, header, format spec); missing values print as '-'."""
    cells = [[header for _, header, _ in columns]]
    for row in rows:
        cells.append([format(row[key], spec) if row.get(key) is not None else "-" for key, _, spec in columns])
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    for n, line in enumerate(cells):
        print("  ".join(cell.rjust(width) if i else cell.ljust(width) for i, (cell, width) in enumerate(zip(line, widths))))
        if n == 0:
            print("  ".join("-" * width for width in widths))
