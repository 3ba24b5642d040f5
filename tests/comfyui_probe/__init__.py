"""A test-only ComfyUI custom node pack (installed into the test server beside ours, never shipped to users).

OmniGen2TestUnloadAll reports which models ComfyUI's memory manager holds, calls
`comfy.model_management.unload_all_models()` and reports again; OmniGen2TestLoadedModels only reports. Both take our
OMNIGEN2_MODEL handles so the report can say which loaded entries are whose, and an IMAGE so they run after a
sampler. They always run (IS_CHANGED is NaN, never equal to itself), so ComfyUI's cache never skips them.
OmniGen2TestImportedFiles reports the source files of every module the server has imported from a folder whose path
contains `under` (the pack's folder), after an IMAGE.
"""

import sys

import comfy.model_management as model_management

CATEGORY = "_for_testing"


def _report(models: dict) -> list[dict]:
    """One row per model ComfyUI holds: its class, whose part it is (handle name and part), its loaded bytes."""
    owners = {id(patcher): f"{name}.{part}" for name, handle in models.items() for part, patcher in handle.patchers.items()}
    return [{"class": type(loaded.model.model).__name__, "owner": owners.get(id(loaded.model)),
             "loaded_bytes": int(loaded.model.loaded_size())} for loaded in model_management.current_loaded_models
            if loaded.model is not None]


class OmniGen2TestLoadedModels:
    RETURN_TYPES = ("OMNIGEN2_MODEL",)
    FUNCTION = "probe"
    OUTPUT_NODE = True
    CATEGORY = CATEGORY

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("OMNIGEN2_MODEL",), "after": ("IMAGE",)},
                "optional": {"other_model": ("OMNIGEN2_MODEL",), "after_other": ("IMAGE",)}}

    @classmethod
    def IS_CHANGED(cls, **_):
        return float("nan")

    def probe(self, model, after, other_model=None, after_other=None):
        handles = {"model": model, **({"other_model": other_model} if other_model is not None else {})}
        return {"ui": {"loaded": _report(handles)}, "result": (model,)}


class OmniGen2TestUnloadAll(OmniGen2TestLoadedModels):
    def probe(self, model, after, other_model=None, after_other=None):
        handles = {"model": model, **({"other_model": other_model} if other_model is not None else {})}
        before = _report(handles)
        model_management.unload_all_models()
        return {"ui": {"loaded_before": before, "loaded_after": _report(handles)}, "result": (model,)}


class OmniGen2TestImportedFiles:
    RETURN_TYPES = ()
    FUNCTION = "probe"
    OUTPUT_NODE = True
    CATEGORY = CATEGORY

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"under": ("STRING", {"default": ""}), "after": ("IMAGE",)}}

    @classmethod
    def IS_CHANGED(cls, **_):
        return float("nan")

    def probe(self, under, after):
        files = sorted({getattr(module, "__file__", None) or "" for module in list(sys.modules.values())})
        return {"ui": {"files": [path for path in files if under and under in path]}}


NODE_CLASS_MAPPINGS = {"OmniGen2TestLoadedModels": OmniGen2TestLoadedModels, "OmniGen2TestUnloadAll": OmniGen2TestUnloadAll,
                       "OmniGen2TestImportedFiles": OmniGen2TestImportedFiles}
