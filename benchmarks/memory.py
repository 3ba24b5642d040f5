"""The pack's models under ComfyUI's own memory management: peak device memory and seconds per image at the VRAM
budgets of small cards on a GPU; on a CPU, a reduced run that checks a partial load gives the full load's image.

Runs in ComfyUI's Python, ComfyUI imported in process from COMFYUI_DIR (default ../shared/comfyui):

  .comfyui-venv/bin/python benchmarks/memory.py --cpu [--weights FOLDER]          # CPU: partial == full, bit for bit
  .comfyui-venv/bin/python benchmarks/memory.py --weights OUT/folder [--dtype fp8_e4m3fn] [--budgets 6 8 12 16 24]

Weights: benchmarks/random_weights.py writes the released configuration in every layout (the CPU run defaults to the
tiny fixture model). On a GPU each budget emulates a card of that many GB on the bigger one at hand the way
`--reserve-vram` does (ComfyUI reserves the rest), and each mode (text only; 1 reference; 3 references with their
features computed once) is sampled at 1024x1024 through the nodes' own calls, reporting
`torch.cuda.max_memory_allocated` and seconds per image. On the CPU the transformer, VAE and MLLM are loaded whole
and then with a fraction of their bytes (what `load_models_gpu` does with the budget it computes on a GPU).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURE_MODEL = REPO_ROOT / "tests" / "fixtures" / "omnigen2-tiny"
PACK_NAME = "omnigen2_pack"
GB = 2**30


def start_comfyui(comfy_dir: str | Path, cpu: bool) -> Any:
    """Import ComfyUI in process (model management as its server sets it up) and the pack as ComfyUI imports custom
    nodes; returns the pack's bridge."""
    sys.path.insert(0, str(comfy_dir))
    import comfy.cli_args

    comfy.cli_args.args.cpu = cpu
    spec = importlib.util.spec_from_file_location(PACK_NAME, REPO_ROOT / "__init__.py",
                                                  submodule_search_locations=[str(REPO_ROOT)])
    pack = importlib.util.module_from_spec(spec)
    sys.modules[PACK_NAME] = pack
    spec.loader.exec_module(pack)
    return sys.modules[f"{PACK_NAME}.nodes.bridge"]


def weight_owning_layers(module) -> list:
    """(name, layer) of the leaf layers that own weights: what ModelPatcher loads or casts, layer by layer."""
    return [(name, layer) for name, layer in module.named_modules()
            if not any(True for _ in layer.children()) and any(True for _ in layer.parameters(recurse=False))]


def stranded(module) -> list[str]:
    """Weight-owning layers that ModelPatcher neither moved to the load device nor set to cast per call (lowvram:
    it keeps the layer's own setting in `prev_comfy_cast_weights`)."""
    return [name for name, layer in weight_owning_layers(module)
            if not getattr(layer, "comfy_patched_weights", False) and not hasattr(layer, "prev_comfy_cast_weights")]


def load_with_budget(model, parts, fraction: float | None) -> tuple[dict, Callable[[], None]]:
    """Load the parts as `load_models_gpu` does with a budget of `fraction` of each one's bytes (None: no limit);
    returns ComfyUI's account of each load and a function that unloads them."""
    import comfy.model_management as model_management

    report, loaded = {}, []
    for part in parts:
        patcher = model.patchers[part]
        budget = 0 if fraction is None else int(patcher.model_size() * fraction)
        entry = model_management.LoadedModel(patcher)
        entry.model_load(budget)
        loaded.append(entry)
        report[part] = {"budget": budget, "loaded_bytes": int(patcher.loaded_size()), "size": int(patcher.model_size()),
                        "lowvram_layers": sum(hasattr(m, "prev_comfy_cast_weights") for m in patcher.model.modules()),
                        "lowvram_patches": int(patcher.lowvram_patch_counter()), "stranded": stranded(patcher.model)}
    return report, lambda: [entry.model_unload() for entry in loaded]


def cpu_run(bridge, weights: str, fraction: float, size: int, steps: int) -> dict:
    """Encode and sample once whole and once with `fraction` of each part's bytes; the images must be equal."""
    import torch

    model = bridge.load_model(weights, "fp32")
    results = {}
    for label, budget in (("full", None), ("partial", fraction)):
        report, unload = load_with_budget(model, ("text_encoder", "vae"), budget)
        condition = model.engine.encode_condition("a red circle on a blue background")
        unload()
        sampled, unload = load_with_budget(model, ("transformer", "vae"), budget)
        start = time.perf_counter()
        images = model.engine.sample(condition, width=size, height=size, steps=steps, seed=0).images
        report.update(sampled, seconds=time.perf_counter() - start)
        unload()
        results[label] = (report, images)
    equal = torch.equal(results["partial"][1], results["full"][1])
    return {"partial_equals_full": equal, "fraction": fraction,
            **{label: report for label, (report, _) in results.items()}}


def gpu_run(bridge, weights: str, dtype: str, budgets: list[float], size: int, steps: int) -> list[dict]:
    """Per budget and mode: peak device memory and seconds per image, through the nodes' load and sampling calls."""
    import comfy.model_management as model_management
    import numpy as np
    import torch

    total = torch.cuda.get_device_properties(0).total_memory
    model = bridge.load_model(weights, dtype)
    pictures = [np.random.default_rng(i).integers(0, 256, (size, size, 3), dtype=np.uint8) for i in range(3)]
    modes = {"text_only": [], "1_reference": pictures[:1], "3_references_compute_once": pictures}
    rows = []
    for budget in budgets:
        if budget * GB > total:
            continue
        # what --reserve-vram sets: all but `budget` GB held back (0: no limit, the whole card)
        model_management.EXTRA_RESERVED_VRAM = int(total - budget * GB) if budget else 0
        for mode, images in modes.items():
            model_management.unload_all_models()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            with model.on_device("text_encoder", "vae"):
                condition = model.engine.encode_condition("a red circle on a blue background", images=images or None)
            start = time.perf_counter()
            with model.on_device("transformer", "vae"):
                model.engine.sample(condition, width=size, height=size, steps=steps, seed=0,  # compute-once: exact
                                    cache_per_n_steps=steps + 1 if images else None, independent_condition=bool(images))
            torch.cuda.synchronize()
            rows.append({"budget_gb": budget, "mode": mode, "dtype": dtype, "seconds_per_image": time.perf_counter() - start,
                         "peak_allocated_gb": torch.cuda.max_memory_allocated() / GB,
                         "loaded_gb": {p: model.patchers[p].loaded_size() / GB for p in model.patchers}})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu", action="store_true", help="the reduced CPU check: a partial load equals a full one")
    parser.add_argument("--weights", help="an OmniGen2 folder (random_weights.py's `folder` layout, or a release)")
    parser.add_argument("--dtype", default="bf16", help="the loader's weight dtype (bf16, fp8_e4m3fn, ...)")
    parser.add_argument("--budgets", nargs="+", type=float, default=[6, 8, 12, 16, 24, 0], help="GB (GPU); 0: no limit")
    parser.add_argument("--fraction", type=float, default=0.3, help="share of each part's bytes loaded (CPU)")
    parser.add_argument("--size", type=int, default=None, help="image side (default 1024 on a GPU, 64 on the CPU)")
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (default 50 on a GPU, 3 on the CPU)")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    comfy_dir = os.environ.get("COMFYUI_DIR") or REPO_ROOT.parent / "shared" / "comfyui"
    bridge = start_comfyui(comfy_dir, args.cpu)
    if args.cpu:
        result = cpu_run(bridge, args.weights or str(FIXTURE_MODEL), args.fraction, args.size or 64, args.steps or 3)
        ok = result["partial_equals_full"] and all(
            not part["stranded"] and part["loaded_bytes"] <= part["budget"]
            for name, part in result["partial"].items() if name != "seconds")
    else:
        if not args.weights:
            parser.error("--weights: a GPU run needs full-size weights (benchmarks/random_weights.py OUT --layouts folder)")
        result = gpu_run(bridge, args.weights, args.dtype, args.budgets, args.size or 1024, args.steps or 50)
        ok = True
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
