"""Run with ComfyUI's Python: the pack's models under ComfyUI's own memory management, in process, on the CPU.

For each fixture pipeline case the MLLM and the VAE encode the condition, and the transformer and the VAE sample, each
loaded by benchmarks/memory.py's `load_with_budget` (`comfy.model_management.LoadedModel.model_load(budget)`: what
`load_models_gpu` does with the budget it computes from a GPU's free memory) once with no limit and once with a fraction of the weights' bytes, and sampled with the same call the sampler node makes; with a
LoRA the same again through ComfyUI's weight patches. Prints one JSON report: per run the image, ComfyUI's loaded
bytes, how many layers it left to cast per call (lowvram), and any weight-owning layer it could neither load nor cast.

Then the t2i case again for each fp8 variant in VARIANTS_JSON ({label: [transformer file or null for the fixture
folder, weight dtype choice]}), loaded whole and partially, with the layer classes and weight dtypes it got.

usage: python partial_load.py COMFYUI_DIR PACK_DIR FRACTION LORA_FILE VARIANTS_JSON OUT_FILE
"""

import json
import sys
from pathlib import Path

comfy_dir, pack_dir, fraction, lora_file, variants_file, out_file = sys.argv[1:7]
sys.path.insert(0, str(Path(pack_dir) / "benchmarks"))
from memory import load_with_budget, start_comfyui, weight_owning_layers  # noqa: E402

bridge = start_comfyui(comfy_dir, cpu=True)
import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

FIXTURES = Path(pack_dir) / "tests" / "fixtures" / "omnigen2-tiny"


def not_comfy_ops(module: torch.nn.Module) -> list[str]:
    return [f"{name} ({type(layer).__name__})" for name, layer in weight_owning_layers(module)
            if not hasattr(layer, "comfy_cast_weights")]


def non_leaf_parameters(module: torch.nn.Module) -> list[str]:
    """Parameters of modules with children: ModelPatcher never moves them; the model must cast them where used."""
    return [f"{name}.{p}".lstrip(".") for name, layer in module.named_modules() if any(True for _ in layer.children())
            for p, _ in layer.named_parameters(recurse=False)]


def encode(model, case, pixels, budget_fraction):
    report, unload = load_with_budget(model, ("text_encoder", "vae"), budget_fraction)
    condition = model.engine.encode_condition(
        case["prompt"], images=pixels or None, negative_prompt=case["negative_prompt"],
        max_pixels=case["max_pixels"], max_input_image_side_length=case["max_input_image_side_length"])
    unload()
    return report, condition


def sample(model, condition, case, budget_fraction):
    report, unload = load_with_budget(model, ("transformer", "vae"), budget_fraction)
    result = model.engine.sample(condition, width=case["width"], height=case["height"], steps=case["steps"],
                                 text_guidance_scale=case["text_guidance_scale"],
                                 image_guidance_scale=case["image_guidance_scale"], cfg_range=case["cfg_range"],
                                 seed=case["seed"])
    unload()
    return report, result.images


def main():
    tensors, meta = load_file(str(FIXTURES / "pipeline_cases.safetensors")), json.loads((FIXTURES / "pipeline_cases.json").read_text())
    model = bridge.load_model(str(FIXTURES), "fp32")
    parts = {p: bridge.part_module(model.engine, p) for p in bridge.PARTS}
    out = {"not_comfy_ops": {p: not_comfy_ops(m) for p, m in parts.items()},
           "non_leaf_parameters": {p: non_leaf_parameters(m) for p, m in parts.items()}, "cases": {}}
    lora_model = bridge.model_with_lora(model, lora_file, 0.8)
    images = {}
    for name, case in meta["cases"].items():
        pixels = [tensors[f"{name}.input_image.{j}"].numpy() for j in range(len(case["input_image_sizes"]))]
        conditions = {}
        for budget in (None, float(fraction)):
            key = f"{name}.condition.{'full' if budget is None else 'partial'}"
            out["cases"][key], conditions[key] = encode(model, case, pixels, budget)
            images[key] = conditions[key].positive.embeds
        condition = conditions[f"{name}.condition.full"]
        for label, handle in (("base", model), ("lora", lora_model)):
            for budget in (None, float(fraction)):
                key = f"{name}.{label}.{'full' if budget is None else 'partial'}"
                out["cases"][key], images[key] = sample(handle, condition, case, budget)
    case = meta["cases"]["t2i"]
    for label, (transformer, choice) in json.loads(Path(variants_file).read_text()).items():
        source = str(FIXTURES) if transformer is None else {
            "transformer": transformer, "text_encoder": str(FIXTURES / "mllm" / "model.safetensors"),
            "vae": str(FIXTURES / "vae_bfl" / "ae.safetensors"), "tokenizer": str(FIXTURES / "processor")}
        variant = bridge.load_model(source, choice)
        layers = bridge.part_module(variant.engine, "transformer").layers[0]
        condition = encode(variant, case, [], None)[1]
        for budget in (None, float(fraction)):
            key = f"{label}.{'full' if budget is None else 'partial'}"
            out["cases"][key], images[key] = sample(variant, condition, case, budget)
        out[label] = {"projection": [type(layers.attn.to_q).__qualname__, str(layers.attn.to_q.weight.dtype)],
                      "modulation": [type(layers.norm1.linear).__qualname__, str(layers.norm1.linear.weight.dtype)]}
    save_file(images, out_file + ".safetensors")
    Path(out_file).write_text(json.dumps(out, indent=1))


main()
