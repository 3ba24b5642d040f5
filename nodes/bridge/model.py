"""The model handle passed between nodes (model patching): loading it so ComfyUI's memory management moves its three
modules like ComfyUI's own models, and LoRAs added to it as ModelPatcher weight patches so the weights exist once."""

from __future__ import annotations

import copy
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch

import omni_core
from omni_core.errors import InvalidInputError
from omni_core.lora import Lora, check_loras_fit, lora_stack, resolve_loras, shallow_transformer

from .devices import WeightDtypes, offload_device, weight_dtypes
from .host import IN_COMFYUI, comfy_lora, model_management, model_patcher

PARTS = ("transformer", "vae", "text_encoder")


@dataclass(eq=False)
class OmniGen2Model:
    """What travels on an OMNIGEN2_MODEL socket: the engine model, plus ComfyUI patchers for its three modules.

    Inside ComfyUI each module is wrapped in a `ModelPatcher`, so `comfy.model_management` loads it to the GPU when a
    node needs it (`on_device`) and offloads it when another model needs the memory, like its own models.
    """

    engine: Any
    source: str
    patchers: dict[str, Any] = field(default_factory=dict)

    @contextmanager
    def on_device(self, *parts: str) -> Iterator[torch.device]:
        """Load the named modules where computation runs for the duration of a node's work; yields that device."""
        if IN_COMFYUI and self.patchers:
            model_management.load_models_gpu([self.patchers[p] for p in parts], force_full_load=True)
            yield self.patchers[parts[0]].load_device
        else:
            yield next(part_module(self.engine, parts[0]).parameters()).device


def part_module(engine: Any, part: str) -> torch.nn.Module:
    """The torch module behind one part of the engine (the text encoder wraps its MLLM with the tokenizer)."""
    module = getattr(engine, part)
    return module if isinstance(module, torch.nn.Module) else module.mllm


class _ManagedPart(torch.nn.Module):
    """A plain holder for one engine module, handed to ComfyUI's `ModelPatcher`.

    The patcher writes bookkeeping attributes (`device`, `model_loaded_weight_memory`, ...) onto its model; diffusers
    and transformers models have a read-only `device` property, so they get this holder instead of being touched.
    """

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.module = module
        self.device = next(module.parameters()).device


# One holder class per part, so ComfyUI's log says what it loads ("Requested to load OmniGen2Transformer").
_MANAGED = {p: type("OmniGen2" + p.title().replace("_", ""), (_ManagedPart,), {}) for p in PARTS}


def _part_dtypes(dtypes: WeightDtypes) -> dict[str, torch.dtype]:
    """Text encoder and VAE dtypes next to the transformer's; inside ComfyUI the VAE follows its VAE dtype rule."""
    if not IN_COMFYUI:
        return {}
    # bf16 or fp32 only, as ComfyUI's own FLUX VAE: in fp16 the FLUX VAE overflows (dark or black images).
    vae = model_management.vae_dtype(model_management.vae_device(), [torch.bfloat16, torch.float32])
    return {"text_encoder_dtype": dtypes.compute, "vae_dtype": vae}


def _part_devices(part: str) -> tuple[torch.device, torch.device]:
    """(load, offload) devices ComfyUI assigns to this kind of model (its --cpu-vae etc. options apply)."""
    if part == "text_encoder":
        return model_management.text_encoder_device(), model_management.text_encoder_offload_device()
    if part == "vae":
        return model_management.vae_device(), model_management.vae_offload_device()
    return model_management.get_torch_device(), model_management.unet_offload_device()


def load_model(source: str | dict[str, str], dtype_choice: str) -> OmniGen2Model:
    """Load an OmniGen2 model from a folder or single files, in the chosen dtypes, ready for ComfyUI memory management."""
    dtypes = weight_dtypes(dtype_choice)
    engine = omni_core.load_model(
        source, device=offload_device(), dtype=dtypes.compute, transformer_storage_dtype=dtypes.storage,
        **_part_dtypes(dtypes),
    )
    patchers = {}
    if IN_COMFYUI:
        patchers = {
            p: model_patcher.ModelPatcher(_MANAGED[p](part_module(engine, p)), *_part_devices(p)) for p in PARTS
        }
    label = source if isinstance(source, str) else ", ".join(f"{k}={os.path.basename(v)}" for k, v in source.items())
    return OmniGen2Model(engine=engine, source=label, patchers=patchers)


def comfy_lora_patches(lora: Lora) -> dict[str, Any]:
    """The LoRA as ComfyUI weight patches on the transformer's ModelPatcher (keys of `_ManagedPart`'s state dict),
    made by ComfyUI's own LoRA loader from the file's modules under their OmniGen2 names."""
    state_dict, to_load = {}, {}
    for name, module in lora.modules.items():
        state_dict.update({
            f"{name}.lora_up.weight": module.up,
            f"{name}.lora_down.weight": module.down,
            f"{name}.alpha": torch.tensor(module.scale * module.rank),  # ComfyUI scales by alpha / rank
        })
        to_load[name] = f"module.{name}.weight"
    return comfy_lora.load_lora(state_dict, to_load, log_missing=False)


def model_with_lora(model: OmniGen2Model, path: str, strength: float) -> OmniGen2Model:
    """A new model handle with one more LoRA; `model` (which ComfyUI may have cached for other nodes) is unchanged.

    Outside ComfyUI the engine merges it into a copy of the weights it changes (`OmniGen2.with_loras`). Inside, the
    transformer's ModelPatcher is cloned and given the LoRA as weight patches, as ComfyUI's own LoRA loader does:
    ComfyUI merges them when it loads the model and restores the weights when another clone needs them, so the
    weights exist once. The engine then gets a transformer object over the same modules that carries the LoRA's
    config default and cache fingerprint.
    """
    label = f"{model.source} + {os.path.basename(path)}@{strength:g}"
    if not model.patchers:
        return OmniGen2Model(engine=model.engine.with_loras([(path, strength)]), source=label)
    stack = lora_stack(model.engine.transformer)
    added = resolve_loras([(path, strength)])
    check_loras_fit(stack.base, added)
    engine = copy.copy(model.engine)
    engine.transformer = shallow_transformer(stack.base, stack.applied + added)
    patcher = model.patchers["transformer"].clone()
    for entry in added:
        patcher.add_patches(comfy_lora_patches(entry.lora), entry.strength)
    return OmniGen2Model(engine=engine, source=label, patchers={**model.patchers, "transformer": patcher})


def check_model(model: Any, input_name: str = "model") -> OmniGen2Model:
    if not isinstance(model, OmniGen2Model):
        raise InvalidInputError(
            f"'{input_name}' must come from a Load OmniGen2 node; got {type(model).__name__}."
        )
    return model
