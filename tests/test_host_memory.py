"""Host memory while loading: every layout peaks at <= 1.2x the weight bytes it loads, in RSS.

Random weights in the released structure, reduced (benchmarks/random_weights.py --reduced: a 200M-parameter
transformer, a 195M MLLM, the FLUX VAE), written in the layouts users have; each load runs in a fresh process that
touches every loaded weight once and reports its peak RSS above what it held before loading.
"""

import json
import subprocess
import sys
import pytest

from conftest import FIXTURES, ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import random_weights  # noqa: E402

PEAK_RATIO = 1.2
PROCESSOR = FIXTURES / "processor"
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
# forks with vfork: the pytest process's, often above a GB, would be counted as the loader's)
peak = status_kib("VmHWM")
print(json.dumps({"loaded_bytes": loaded, "ratio": (peak - before) * 1024 / loaded,
                  "dtypes": sorted({str(t.dtype) for t in tensors})}))
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


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    out = tmp_path_factory.mktemp("layouts")
    for layout in sorted({case[1] for case in CASES.values()}):
        parts = sorted({case[0] for case in CASES.values() if case[1] == layout})
        random_weights.write_layout(out, layout, parts, reduced=True)
    return out


@pytest.mark.parametrize("case", CASES)
def test_loading_peaks_at_most_1_2x_the_loaded_weight_bytes(layouts, case):
    part, layout, name, dtype, storage = CASES[case]
    run = subprocess.run([sys.executable, "-c", WORKER, part, str(layouts / layout / name), dtype, storage,
                          str(PROCESSOR)], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    print(case, report)
    assert report["loaded_bytes"] > 60 * 2**20  # weights dominate the process, so the ratio measures the loader
    assert report["ratio"] <= PEAK_RATIO, report
