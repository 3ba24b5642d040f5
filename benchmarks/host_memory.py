"""Host memory while loading (issue 28): peak RSS of each layout against the weight bytes it loads.

Why: a loader that holds the weights twice (the file's pages beside their converted copy, a fresh buffer per tensor)
needs 2x the model in RAM; every layout should peak at <= 1.2x (PEAK_RATIO) the bytes it loads.

How: write random weights in the released configuration, then measure the cases whose files are under OUT (so
layouts can be written and measured one at a time when disk is short):

  python benchmarks/random_weights.py OUT [--layouts folder comfy_fp16 ...] [--parts transformer ...]   # full size
  python benchmarks/host_memory.py OUT [--cases NAME ...] [--json PATH]

Each case loads in a fresh process (one at a time), touches every loaded weight once and reports its peak RSS
(VmHWM) above the RSS it held before loading. tests/test_host_memory.py runs the same cases on `--reduced` weights.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from _common import REPO_ROOT, environment, print_table

PEAK_RATIO = 1.2
GIB = 2**30
PROCESSOR = REPO_ROOT / "tests" / "fixtures" / "omnigen2-tiny" / "processor"  # loads; never tokenizes here
WORKER = """
import json, sys, torch
from omni_core.loading.text_encoder_loader import load_text_encoder
from omni_core.loading.transformer_loader import load_transformer
from omni_core.loading.vae_loader import load_vae

part, path, dtype, storage, tokenizer = sys.argv[1:6]
dtype, storage = getattr(torch, dtype), None if storage == "none" else getattr(torch, storage)
def status_kib(field):
    return int(open("/proc/self/status").read().split(field + ":")[1].split()[0])
before = status_kib("VmRSS")
if part == "transformer":
    model = load_transformer(path, dtype=dtype, storage_dtype=storage)
elif part == "text_encoder":
    model = load_text_encoder(path, tokenizer_path=tokenizer, dtype=dtype, storage_dtype=storage).mllm
else:
    model = load_vae(path, dtype=dtype)
tensors = {t.data_ptr(): t for t in model.state_dict().values()}.values()  # tied weights once
for tensor in tensors:
    tensor.reshape(-1).view(torch.uint8).max()  # every weight touched once (max: no wider copy, unlike sum)
loaded = sum(t.numel() * t.element_size() for t in tensors)
# VmHWM: this process's own peak. Not ru_maxrss, which exec() seeds with the spawning process's peak (subprocess
# forks with vfork: the parent's, often above a GB, would be counted as the loader's)
peak = status_kib("VmHWM")
print(json.dumps({"loaded_bytes": loaded, "before_bytes": before * 1024, "peak_bytes": peak * 1024,
                  "ratio": (peak - before) * 1024 / loaded, "dtypes": sorted({str(t.dtype) for t in tensors})}))
"""

CASES = {  # id: (part, layout, file or folder in it, dtype, storage dtype)
    "transformer-folder-bf16": ("transformer", "folder", "transformer", "bfloat16", "none"),
    "transformer-fp16-file-as-bf16": ("transformer", "comfy_fp16", "transformer.safetensors", "bfloat16", "none"),
    "transformer-bf16-file-as-fp8": ("transformer", "comfy_bf16", "transformer.safetensors", "bfloat16", "float8_e4m3fn"),
    "transformer-fp16-file-as-fp8": ("transformer", "comfy_fp16", "transformer.safetensors", "bfloat16", "float8_e4m3fn"),
    "transformer-fp8-file": ("transformer", "comfy_fp8", "transformer.safetensors", "bfloat16", "none"),
    "transformer-scaled-fp8-file": ("transformer", "comfy_scaled_fp8", "transformer.safetensors", "bfloat16", "none"),
    "mllm-folder-bf16": ("text_encoder", "folder", "mllm", "bfloat16", "none"),
    "mllm-fp16-file-as-fp8": ("text_encoder", "comfy_fp16", "text_encoder.safetensors", "bfloat16", "float8_e4m3fn"),
    "mllm-fp16-file-as-bf16": ("text_encoder", "comfy_fp16", "text_encoder.safetensors", "bfloat16", "none"),
    "vae-fp16-file-as-bf16": ("vae", "comfy_fp16", "vae.safetensors", "bfloat16", "none"),
}


def case_path(root: Path, case: str) -> Path:
    """The file or folder a case loads, under a root written by random_weights.py."""
    _, layout, name, _, _ = CASES[case]
    return root / layout / name


def measure(root: Path, case: str, timeout: float = 1800) -> dict:
    """Load one case in a fresh process; its report (bytes loaded, RSS before and at peak, ratio) and wall seconds."""
    part, _, _, dtype, storage = CASES[case]
    start = time.perf_counter()
    run = subprocess.run([sys.executable, "-c", WORKER, part, str(case_path(root, case)), dtype, storage,
                          str(PROCESSOR)], capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT)
    if run.returncode != 0:
        raise RuntimeError(f"{case} failed:\n{run.stderr[-3000:]}")
    return {**json.loads(run.stdout.strip().splitlines()[-1]), "seconds": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="the OUT folder of benchmarks/random_weights.py")
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    env = environment()
    print(f"Host RSS while loading, {args.root}; CPU {env['cpu']}, {env['cpu_count']} cores, torch {env['torch']}")
    present = [case for case in args.cases if case_path(args.root, case).exists()]
    print("skipped (files absent):", ", ".join(sorted(set(args.cases) - set(present))) or "none")
    results = {}
    for case in present:
        results[case] = measure(args.root, case)
        print(case, json.dumps(results[case]), flush=True)
    rows = [{"case": case, "loaded": r["loaded_bytes"] / GIB, "peak": (r["peak_bytes"] - r["before_bytes"]) / GIB,
             "ratio": r["ratio"], "ok": "yes" if r["ratio"] <= PEAK_RATIO else "NO", "seconds": r["seconds"]}
            for case, r in results.items()]
    print_table(rows, [("case", "case", "s"), ("loaded", "loaded GiB", ".2f"), ("peak", "peak RSS GiB", ".2f"),
                       ("ratio", "ratio", ".3f"), ("ok", f"<= {PEAK_RATIO}", "s"), ("seconds", "s", ".0f")])
    if args.json:
        args.json.write_text(json.dumps({"environment": env, "root": str(args.root), "peak_ratio": PEAK_RATIO,
                                         "cases": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
