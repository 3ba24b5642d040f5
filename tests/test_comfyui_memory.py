"""Our models under ComfyUI's own memory management, in a real ComfyUI (in process, on the CPU).

tests/comfyui_inprocess/partial_load.py runs in ComfyUI's Python: every pipeline case encoded (MLLM and VAE) and
sampled (transformer and VAE) with the models loaded whole, then with 30% of their weight bytes (the rest cast per
call, as ComfyUI's lowvram loading does on a small GPU), without and with a LoRA applied through ComfyUI's weight
patches.
"""

import json
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from comfyui_server import ROOT, comfyui_location
from omni_core.lora import save_lora

FIXTURES = ROOT / "tests" / "fixtures" / "omnigen2-tiny"
WORKER = ROOT / "tests" / "comfyui_inprocess" / "partial_load.py"
BUDGET = 0.3
TOLERANCE = 1e-4  # float32 round-off against the official pipeline's recorded output


@pytest.fixture(scope="module")
def partial_load(tmp_path_factory):
    tree, python = comfyui_location()
    folder = tmp_path_factory.mktemp("partial_load")
    g = torch.Generator().manual_seed(3)
    shapes = {"layers.0.attn.to_q": (96, 96), "layers.1.attn.to_k": (48, 96), "noise_refiner.0.feed_forward.linear_2": (96, 384)}
    lora = save_lora(folder / "lora.safetensors",
                     {m: (torch.randn(4, i, generator=g), torch.randn(o, 4, generator=g) * 0.05) for m, (o, i) in shapes.items()},
                     alpha=4.0)
    report = folder / "report.json"
    run = subprocess.run([str(python), str(WORKER), str(tree), str(ROOT), str(BUDGET), str(lora), str(report)],
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
