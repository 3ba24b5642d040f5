"""fp8 weights: storage by weight dtype, fp8 e4m3fn files and ComfyUI's scaled fp8 files (made here from the fixture
model), the MLLM in fp8, and what fp8 costs against bf16 on the pipeline cases."""

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import omni_core
from conftest import FIXTURES
from omni_core.errors import ModelFileError
from omni_core.options import options_among
from omni_core.loading.quantized import FP8, comfy_quant_entry, fp8_weight_names, quantize_scaled
from omni_core.loading.text_encoder_loader import load_text_encoder
from omni_core.loading.transformer_loader import load_transformer
from omni_core.ops import storage_cast_operations
from test_transformer import forward_inputs

TRANSFORMER = FIXTURES / "transformer" / "diffusion_pytorch_model.safetensors"
MODULATION = "layers.0.norm1.linear.weight"  # kept in the compute dtype even where a file scales it
KEPT = ("norm1.linear", "norm_out", "x_embedder", "ref_image_patch_embedder", "time_caption_embed", "norm")


@pytest.fixture(scope="module")
def fixture_weights():
    return load_file(str(TRANSFORMER))


def _narrow(weights):
    return fp8_weight_names({k: v.shape for k, v in weights.items()})


def scaled_file(path: Path, weights, layout: str) -> Path:
    """The fixture transformer as ComfyUI's scaled fp8 ('scaled_fp8': scale_weight + marker; 'comfy_quant': per-layer
    JSON + weight_scale), the modulation of layer 0 scaled too; and the weights it stands for, dequantized."""
    out, dequantized = {}, {}
    for key, value in weights.items():
        if key in _narrow(weights) or key == MODULATION:
            values, scale = quantize_scaled(value)
            layer = key[: -len(".weight")]
            out[key] = values
            if layout == "scaled_fp8":
                out[f"{layer}.scale_weight"] = scale
                out[f"{layer}.scale_input"] = torch.ones(())
            else:
                out[f"{layer}.weight_scale"] = scale
                out[f"{layer}.comfy_quant"] = comfy_quant_entry()
            dequantized[key] = values.float() * scale
        else:
            out[key] = dequantized[key] = value.float()
    if layout == "scaled_fp8":
        out["scaled_fp8"] = torch.empty(0, dtype=FP8)
    save_file(out, str(path))
    return dequantized


def test_fp8_storage_narrows_only_the_blocks_projections(fixture_weights):
    model = load_transformer(TRANSFORMER, dtype=torch.bfloat16, storage_dtype=FP8)
    stored = {name: p.dtype for name, p in model.named_parameters()}
    assert {stored[name] for name in _narrow(fixture_weights)} == {FP8}
    kept = {name: dtype for name, dtype in stored.items() if name not in _narrow(fixture_weights)}
    assert set(kept.values()) == {torch.bfloat16}
    for part in KEPT:  # modulation, embedders, norms, output norm and final projection stay in the compute dtype
        assert any(part in name for name in kept), part
    assert not any(".attn.to_" in name or ".feed_forward." in name for name in kept)


@torch.no_grad()
def test_an_fp8_file_keeps_its_fp8_weights_and_equals_fp8_storage(fixture_weights, reference_cases, tmp_path):
    bf16 = {k: v.to(torch.bfloat16) for k, v in fixture_weights.items()}
    save_file(bf16, str(tmp_path / "bf16.safetensors"))
    save_file({k: v.to(FP8) if k in _narrow(bf16) else v for k, v in bf16.items()}, str(tmp_path / "fp8.safetensors"))
    from_file = load_transformer(tmp_path / "fp8.safetensors", dtype=torch.bfloat16)  # no storage_dtype asked
    stored = load_transformer(tmp_path / "bf16.safetensors", dtype=torch.bfloat16, storage_dtype=FP8)
    assert all(from_file.get_parameter(k).dtype == FP8 for k in _narrow(bf16))
    inputs = forward_inputs(reference_cases[0])
    cast = [[x.to(torch.bfloat16) for x in inputs[0]], inputs[1], inputs[2].to(torch.bfloat16), inputs[3],
            [None if r is None else [x.to(torch.bfloat16) for x in r] for r in inputs[4]]]
    for a, b in zip(from_file(*cast), stored(*cast)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("layout", ["scaled_fp8", "comfy_quant"])
@torch.no_grad()
def test_a_scaled_fp8_file_computes_its_dequantized_weights(fixture_weights, reference_cases, tmp_path, layout):
    dequantized = scaled_file(tmp_path / "scaled.safetensors", fixture_weights, layout)
    save_file(dequantized, str(tmp_path / "dequantized.safetensors"))
    scaled = load_transformer(tmp_path / "scaled.safetensors", dtype=torch.float32)
    # the same layer classes (storage-casting Linear), so the only difference is where the scale is applied
    plain = load_transformer(tmp_path / "dequantized.safetensors", dtype=torch.float32, operations=storage_cast_operations)
    assert scaled.get_parameter("layers.0.attn.to_q.weight").dtype == FP8
    assert scaled.get_parameter(MODULATION).dtype == torch.float32  # dequantized at load: compute dtype
    inputs = forward_inputs(reference_cases[0])
    for a, b in zip(scaled(*inputs), plain(*inputs)):
        assert torch.equal(a, b)


def test_a_quantization_other_than_e4m3fn_is_refused_naming_the_layer(fixture_weights, tmp_path):
    path = tmp_path / "nvfp4.safetensors"
    scaled_file(path, fixture_weights, "comfy_quant")
    tensors = load_file(str(path))
    tensors["layers.1.attn.to_k.comfy_quant"] = torch.tensor(list(b'{"format": "nvfp4"}'), dtype=torch.uint8)
    save_file(tensors, str(path))
    with pytest.raises(ModelFileError, match=r"layers\.1\.attn\.to_k.*nvfp4"):
        load_transformer(path, dtype=torch.bfloat16)


@torch.no_grad()
def test_the_mllm_loads_in_fp8():
    fp8 = load_text_encoder(FIXTURES, dtype=torch.bfloat16, storage_dtype=FP8)
    bf16 = load_text_encoder(FIXTURES, dtype=torch.bfloat16)
    stored = {name: p.dtype for name, p in fp8.mllm.named_parameters()}
    narrow = [name for name, dtype in stored.items() if dtype == FP8]
    assert narrow and all(name.endswith("proj.weight") or ".qkv." in name or ".proj." in name for name in narrow)
    assert stored["model.language_model.embed_tokens.weight"] == torch.bfloat16
    a, b = fp8.encode_prompt("a red circle").embeds.float(), bf16.encode_prompt("a red circle").embeds.float()
    assert torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0) > 0.99


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Images in [0, 1]."""
    return 10 * math.log10(1 / (a.float() - b.float()).pow(2).mean().item())


def test_fp8_against_bf16_on_the_pipeline_cases(pipeline_cases):
    tensors, meta = pipeline_cases
    models = {
        "bf16": omni_core.load_model(FIXTURES, dtype=torch.bfloat16),
        "fp8": omni_core.load_model(FIXTURES, dtype=torch.bfloat16, transformer_storage_dtype=FP8,
                                    text_encoder_storage_dtype=FP8),
    }
    report = {}
    for name, case in meta["cases"].items():
        images = [tensors[f"{name}.input_image.{j}"].numpy() for j in range(len(case["input_image_sizes"]))]
        out = {label: model.generate(case["prompt"], case["negative_prompt"], images or None, options_among(case)).images
               for label, model in models.items()}
        report[name] = {"fp8_vs_bf16": psnr(out["fp8"], out["bf16"]),
                        "bf16_vs_official": psnr(out["bf16"], tensors[f"{name}.output"]),
                        "fp8_vs_official": psnr(out["fp8"], tensors[f"{name}.output"])}
    print(json.dumps(report, indent=1))
    for name, figures in report.items():
        assert figures["fp8_vs_bf16"] > 35, (name, figures)  # measured 43-46 dB (AMD EPYC, 2 cores)
