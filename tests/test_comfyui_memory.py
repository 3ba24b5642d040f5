"""Our models under ComfyUI's own memory management, in a real ComfyUI (in process, on the CPU).

tests/comfyui_inprocess/partial_load.py runs in ComfyUI's Python: every pipeline case encoded (MLLM and VAE) and
sampled (transformer and VAE) with the models loaded whole, then with 30% of their weight bytes (the rest cast per
call, as ComfyUI's lowvram loading does on a small GPU), without and with a LoRA applied through ComfyUI's weight
patches.
"""

import json
import os
import subprocess

import pytest
import torch
from safetensors.torch import load_file, save_file

from comfyui_server import comfyui_location
from conftest import FIXTURES, ROOT, TOLERANCE
from omni_core.loading.quantized import FP8, fp8_weight_names
from omni_core.lora import save_lora
from test_fp8 import psnr, scaled_file

WORKER = ROOT / "tests" / "comfyui_inprocess" / "partial_load.py"
BUDGET = 0.3


@pytest.fixture(scope="module")
def partial_load(tmp_path_factory):
    tree, python = comfyui_location()
    folder = tmp_path_factory.mktemp("partial_load")
    g = torch.Generator().manual_seed(3)
    shapes = {"layers.0.attn.to_q": (96, 96), "layers.1.attn.to_k": (48, 96), "noise_refiner.0.feed_forward.linear_2": (96, 384)}
    lora = save_lora(folder / "lora.safetensors",
                     {m: (torch.randn(4, i, generator=g), torch.randn(o, 4, generator=g) * 0.05) for m, (o, i) in shapes.items()},
                     alpha=4.0)
    weights = load_file(str(FIXTURES / "transformer" / "diffusion_pytorch_model.safetensors"))
    narrow = fp8_weight_names({k: v.shape for k, v in weights.items()})
    save_file({k: v.to(FP8) if k in narrow else v.to(torch.bfloat16) for k, v in weights.items()}, str(folder / "fp8.safetensors"))
    variants = {"fp8_storage": [None, "fp8_e4m3fn"], "bf16": [None, "bf16"],
                "fp8_file": [str(folder / "fp8.safetensors"), "bf16"]}
    for layout in ("scaled_fp8", "comfy_quant"):
        scaled_file(folder / f"{layout}.safetensors", weights, layout)
        variants[layout] = [str(folder / f"{layout}.safetensors"), "bf16"]
    (folder / "variants.json").write_text(json.dumps(variants))
    report = folder / "report.json"
    run = subprocess.run([str(python), str(WORKER), str(tree), str(ROOT), str(BUDGET), str(lora),
                          str(folder / "variants.json"), str(report)],
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-4000:]
    return json.loads(report.read_text()), load_file(str(report) + ".safetensors")


def test_every_weight_owning_layer_is_a_comfyui_op(partial_load):
    report, _ = partial_load
    assert report["not_comfy_ops"] == {"transformer": [], "vae": [], "text_encoder": []}
    # the one weight outside a layer is cast where it is used (ModelPatcher never moves it)
    assert report["non_leaf_parameters"] == {"transformer": ["image_index_embedding"], "vae": [], "text_encoder": []}


def test_a_partial_load_stays_within_its_budget_and_strands_no_weight(partial_load):
    report, _ = partial_load
    for key, run in report["cases"].items():
        for part, loaded in run.items():
            assert loaded["stranded"] == [], (key, part)
            if key.endswith("partial"):
                assert 0 < loaded["budget"] < loaded["size"]
                assert loaded["loaded_bytes"] <= loaded["budget"], (key, part, loaded)
                assert loaded["lowvram_layers"] > 0, (key, part)
            else:
                assert loaded["loaded_bytes"] == loaded["size"] and loaded["lowvram_layers"] == 0, (key, part)
        if key.endswith("lora.partial"):
            assert run["transformer"]["lowvram_patches"] > 0  # the LoRA applied by the layers that cast per call


def test_a_partial_load_gives_the_full_loads_image_bit_for_bit(partial_load):
    _, images = partial_load
    for name in ("t2i", "edit", "in_context"):
        for label in ("condition", "base", "lora"):
            assert torch.equal(images[f"{name}.{label}.partial"], images[f"{name}.{label}.full"]), (name, label)
        assert not torch.equal(images[f"{name}.lora.full"], images[f"{name}.base.full"])  # the LoRA did apply


def test_comfyui_layers_keep_parity_with_the_official_pipeline(partial_load):
    _, images = partial_load
    official = load_file(str(FIXTURES / "pipeline_cases.safetensors"))
    for name in ("t2i", "edit", "in_context"):
        assert (images[f"{name}.base.full"] - official[f"{name}.output"]).abs().max().item() < TOLERANCE, name


def test_fp8_weights_load_whole_and_partially_in_comfyui(partial_load):
    """fp8 storage by weight dtype, an fp8 e4m3fn file and both scaled-fp8 formats, through ComfyUI's layer classes:
    projections stay fp8 (scaled ones as ComfyUI's quantized tensors), modulation in bf16; a 30% load gives the full
    load's image bit for bit, and each is close to bf16."""
    report, images = partial_load
    for label in ("fp8_storage", "fp8_file", "scaled_fp8", "comfy_quant"):
        assert report[label]["modulation"][1] == "torch.bfloat16", (label, report[label])
        assert report[label]["projection"][1] in ("torch.float8_e4m3fn", "torch.bfloat16"), (label, report[label])
        assert torch.equal(images[f"{label}.partial"], images[f"{label}.full"]), label
        assert report["cases"][f"{label}.partial"]["transformer"]["loaded_bytes"] <= report["cases"][f"{label}.partial"]["transformer"]["budget"]
        assert psnr(images[f"{label}.full"], images["bf16.full"]) > 35, label
    assert report["fp8_storage"]["projection"][1] == report["fp8_file"]["projection"][1] == "torch.float8_e4m3fn"
    for label in ("scaled_fp8", "comfy_quant"):  # ComfyUI's quantized layers, holding 8-bit weights
        assert report[label]["projection"][0].startswith("mixed_precision_ops"), report[label]
        sizes = [report["cases"][f"{name}.full"]["transformer"]["size"] for name in (label, "fp8_storage", "bf16")]
        assert sizes[0] < 1.01 * sizes[1] < 0.7 * sizes[2], sizes


def test_the_memory_benchmark_checks_partial_against_full_on_the_cpu(tmp_path):
    tree, python = comfyui_location()
    out = tmp_path / "memory.json"
    run = subprocess.run([str(python), str(ROOT / "benchmarks" / "memory.py"), "--cpu", "--json", str(out)],
                         capture_output=True, text=True, timeout=600, env={**os.environ, "COMFYUI_DIR": str(tree)})
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["partial_equals_full"] and result["partial"]["transformer"]["lowvram_layers"] > 0
