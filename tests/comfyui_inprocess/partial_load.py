"""Run with ComfyUI's Python: the pack's models under ComfyUI's own memory management, in process, on the CPU.

For each fixture pipeline case the MLLM and the VAE encode the condition, and the transformer and the VAE are loaded by `comfy.model_management.LoadedModel
.model_load(budget)` (what `load_models_gpu` does with the budget it computes from a GPU's free memory) once with no
limit and once with a fraction of the weights' bytes, and sampled with the same call the sampler node makes; with a
LoRA the same again through ComfyUI's weight patches. Prints one JSON report: per run the image, ComfyUI's loaded
bytes, how many layers it left to cast per call (lowvram), and any weight-owning layer it could neither load nor cast.

Then the t2i case again for each fp8 variant in VARIANTS_JSON ({label: [transformer file or null for the fixture
folder, weight dtype choice]}), loaded whole and partially, with the layer classes and weight dtypes it got.

usage: python partial_load.py COMFYUI_DIR PACK_DIR FRACTION LORA_FILE VARIANTS_JSON OUT_FILE
"""

import importlib.util
import json
import sys
from pathlib import Path

comfy_dir, pack_dir, fraction, lora_file, variants_file, out_file = sys.argv[1:7]
sys.path.insert(0, comfy_dir)
import comfy.cli_args  # noqa: E402

comfy.cli_args.args.cpu = True
import comfy.model_management as model_management  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

spec = importlib.util.spec_from_file_location("omnigen2_pack", Path(pack_dir) / "__init__.py",
                                              submodule_search_locations=[pack_dir])
pack = importlib.util.module_from_spec(spec)
sys.modules["omnigen2_pack"] = pack
spec.loader.exec_module(pack)
bridge = sys.modules["omnigen2_pack.nodes.bridge"]
FIXTURES = Path(pack_dir) / "tests" / "fixtures" / "omnigen2-tiny"


def weight_owning_layers(module: torch.nn.Module):
    """(name, layer) of the leaf layers that own weights: what ModelPatcher loads or casts, layer by layer."""
    return [(name, layer) for name, layer in module.named_modules()
            if not any(True for _ in layer.children()) and any(True for _ in layer.parameters(recurse=False))]


def stranded(module: torch.nn.Module) -> list[str]:
    """Weight-owning layers that ModelPatcher neither moved to the load device nor set to cast per call (lowvram:
    it keeps the layer's own setting in `prev_comfy_cast_weights`)."""
    return [name for name, layer in weight_owning_layers(module)
            if not getattr(layer, "comfy_patched_weights", False) and not hasattr(layer, "prev_comfy_cast_weights")]


def not_comfy_ops(module: torch.nn.Module) -> list[str]:
    return [f"{name} ({type(layer).__name__})" for name, layer in weight_owning_layers(module)
            if not hasattr(layer, "comfy_cast_weights")]


def non_leaf_parameters(module: torch.nn.Module) -> list[str]:
    """Parameters of modules with children: ModelPatcher never moves them; the model must cast them where used."""
    return [f"{name}.{p}".lstrip(".") for name, layer in module.named_modules() if any(True for _ in layer.children())
            for p, _ in layer.named_parameters(recurse=False)]


def load(model, parts, budget_fraction):
    """Load the parts with the budget (None: no limit) as load_models_gpu does; their report and an unload."""
    report, loaded = {}, []
    for part in parts:
        patcher = model.patchers[part]
        budget = 0 if budget_fraction is None else int(patcher.model_size() * budget_fraction)
        entry = model_management.LoadedModel(patcher)
        entry.model_load(budget)
        loaded.append(entry)
        report[part] = {"budget": budget, "loaded_bytes": int(patcher.loaded_size()), "size": int(patcher.model_size()),
                        "lowvram_layers": sum(hasattr(m, "prev_comfy_cast_weights") for m in patcher.model.modules()),
                        "lowvram_patches": int(patcher.lowvram_patch_counter()),
                        "stranded": stranded(patcher.model)}
    return report, lambda: [entry.model_unload() for entry in loaded]


def encode(model, case, pixels, budget_fraction):
    report, unload = load(model, ("text_encoder", "vae"), budget_fraction)
    condition = model.engine.encode_condition(
        case["prompt"], images=pixels or None, negative_prompt=case["negative_prompt"],
        max_pixels=case["max_pixels"], max_input_image_side_length=case["max_input_image_side_length"])
    unload()
    return report, condition


def sample(model, condition, case, budget_fraction):
    report, unload = load(model, ("transformer", "vae"), budget_fraction)
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
