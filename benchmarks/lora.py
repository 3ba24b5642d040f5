"""LoRA inference cost: the merged copy (what `OmniGen2.with_loras` and ComfyUI's patches give) against the plain
model and against PEFT's unmerged LoRA layers (the wrap-the-Linear alternative), with the memory the merge holds.

The benchmark model (see _common.py) gets a rank-16 LoRA on every attention projection (to_q, to_k, to_v, to_out.0
of every block, OmniGen2's usual LoRA targets). One transformer forward per call, interleaved A B C A B C ...;
medians of wall and process CPU time. Also: seconds to merge, bytes of weights the merged copy does not share with
the base, and the merged output against PEFT's (they must agree to float32 round-off).
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from pathlib import Path

import torch

from _common import bench_config, build_ours, environment, make_inputs, median, print_table, time_interleaved_with_cpu
from omni_core.lora import save_lora, transformer_with_loras

TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
TOLERANCE = 1e-3  # float32 round-off over a forward of the benchmark model (outputs of order 1)


def random_lora(model: torch.nn.Module, rank: int, seed: int = 2) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    weights = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and name.endswith(TARGETS):
            out_features, in_features = module.weight.shape
            weights[name] = (torch.randn(rank, in_features, generator=g) / in_features**0.5,
                             0.1 * torch.randn(out_features, rank, generator=g) / rank**0.5)
    return weights


def peft_wrapped(model: torch.nn.Module, weights: dict, rank: int, alpha: float) -> torch.nn.Module:
    """The same LoRA as PEFT's unmerged layers around a copy of the model."""
    from peft import LoraConfig, get_peft_model

    wrapped = get_peft_model(copy.deepcopy(model), LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(TARGETS)))
    with torch.no_grad():
        for name, (down, up) in weights.items():
            layer = wrapped.base_model.model.get_submodule(name)
            layer.lora_A["default"].weight.copy_(down)
            layer.lora_B["default"].weight.copy_(up)
    return wrapped.eval()


def unshared_bytes(model: torch.nn.Module, base: torch.nn.Module) -> int:
    shared = {id(p) for p in base.parameters()}
    return sum(p.numel() * p.element_size() for p in model.parameters() if id(p) not in shared)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="4 layers, 256 noise tokens, 3 rounds")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (default 5, quick 3)")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    repeats = args.repeats or (3 if args.quick else 5)
    config = bench_config(num_layers=4 if args.quick else 8)
    base = build_ours(config)
    weights = random_lora(base, args.rank)
    alpha = float(args.rank)
    with tempfile.TemporaryDirectory() as folder:
        path = save_lora(Path(folder) / "bench_lora.safetensors", weights, alpha=alpha)
        start = time.perf_counter()
        merged = transformer_with_loras(base, [(path, 1.0)])
        merge_seconds = time.perf_counter() - start
    wrapped = peft_wrapped(base, weights, args.rank, alpha)
    noise_tokens = 256 if args.quick else 1024
    inputs = make_inputs(1, noise_tokens, 1, None, 64, config.text_feat_dim)

    def forward(model):
        return lambda: model(**inputs)

    with torch.no_grad():
        diff = (forward(merged)() - forward(wrapped)()).abs().max().item()
        wall, cpu = time_interleaved_with_cpu(
            {"plain": forward(base), "merged": forward(merged), "peft_unmerged": forward(wrapped)}, repeats
        )
    rows = [
        {"model": name, "wall_s": median(wall[name]), "cpu_s": median(cpu[name]),
         "wall_ratio": median(wall[name]) / median(wall["plain"]), "cpu_ratio": median(cpu[name]) / median(cpu["plain"])}
        for name in wall
    ]
    base_bytes = sum(p.numel() * p.element_size() for p in base.parameters())
    extra = unshared_bytes(merged, base)
    print(
        f"model: hidden {config.hidden_size}, {config.num_layers} + 3x{config.num_refiner_layers} blocks, float32; LoRA "
        f"rank {args.rank} on {len(weights)} attention projections; {noise_tokens} noise + {noise_tokens} reference + 64 "
        f"text tokens; torch {torch.__version__}, {torch.get_num_threads()} threads; {repeats} interleaved rounds\n"
    )
    print_table(rows, [("model", "model", "s"), ("wall_s", "wall s", ".3f"), ("wall_ratio", "/ plain", ".2f"),
                       ("cpu_s", "CPU s", ".3f"), ("cpu_ratio", "CPU / plain", ".2f")])
    print(f"\nmerge: {merge_seconds:.3f} s; merged copy holds {extra / 2**20:.1f} MiB of its own weights "
          f"({100 * extra / base_bytes:.1f}% of the model's {base_bytes / 2**20:.1f} MiB), the rest is shared")
    agree = diff < TOLERANCE
    print(f"merged vs PEFT unmerged: max abs diff {diff:.2e} ({'agree' if agree else 'DISAGREE'}, tolerance {TOLERANCE:.0e})")
    if args.json:
        args.json.write_text(json.dumps({
            "environment": environment(), "rank": args.rank, "noise_tokens": noise_tokens, "rows": rows,
            "all_wall_s": wall, "all_cpu_s": cpu, "merge_seconds": merge_seconds, "merged_own_bytes": extra,
            "model_bytes": base_bytes, "max_abs_diff_vs_peft": diff,
        }, indent=2))
    return 0 if agree else 1


if __name__ == "__main__":
    raise SystemExit(main())
