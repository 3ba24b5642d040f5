"""The model handle passed between nodes (model patching): loading it so ComfyUI's memory management moves its three
modules like ComfyUI's own models, and LoRAs added to it as ModelPatcher weight patches so the weights exist once."""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch

import omni_core
from omni_core.errors import InvalidInputError
from omni_core.loading.model_loader import component_path
from omni_core.loading.transformer_loader import file_is_scaled, file_storage_dtype
from omni_core.lora import Lora, check_loras_fit, lora_stack, resolve_loras, shallow_transformer

from .devices import WeightDtypes, offload_device, weight_dtypes
from .host import IN_COMFYUI, comfy_lora, model_management, model_patcher
from .layers import comfy_operations

PARTS = ("transformer", "vae", "text_encoder")


@dataclass(eq=False)
class OmniGen2Model:
    """What travels on an OMNIGEN2_MODEL socket: the engine model, plus ComfyUI patchers for its three modules.

    Inside ComfyUI each module is built from ComfyUI's layer classes and wrapped in a `ModelPatcher`, so
    `comfy.model_management` loads it to the GPU when a node needs it (`on_device`), partially when memory is short,
    and offloads it when another model needs the memory, like its own models.
    """

    engine: Any
    source: str
    patchers: dict[str, Any] = field(default_factory=dict)

    @contextmanager
    def on_device(self, *parts: str) -> Iterator[torch.device]:
        """Load the named modules where computation runs for the duration of a node's work; yields that device."""
        if IN_COMFYUI and self.patchers:
            # partially where memory is short: layers left on the CPU cast their weights per call (lowvram)
            model_management.load_models_gpu([self.patchers[p] for p in parts])
            for part in parts:
                _buffers_to(part_module(self.engine, part), self.patchers[part].load_device)
            yield self.patchers[parts[0]].load_device
        else:
            yield next(part_module(self.engine, parts[0]).parameters()).device


def _buffers_to(module: torch.nn.Module, device: torch.device) -> None:
    """Move the module's buffers (the MLLM's rotary frequencies) where it computes: ModelPatcher moves the layers that
    own weights, so a partial load leaves the buffers of weightless modules behind."""
    for layer in module.modules():
        for name, buffer in layer._buffers.items():
            if buffer is not None and buffer.device != device:
                layer._buffers[name] = buffer.to(device)


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


def _part_dtypes(dtypes: WeightDtypes, transformer_file: torch.dtype | None) -> dict[str, tuple[torch.dtype, torch.dtype]]:
    """(weight, compute) dtype of each part inside ComfyUI, ComfyUI's layer classes being picked by them: an fp8
    transformer file (`transformer_file`) keeps its fp8 weights; the VAE follows ComfyUI's VAE dtype rule."""
    # bf16 or fp32 only, as ComfyUI's own FLUX VAE: in fp16 the FLUX VAE overflows (dark or black images).
    vae = model_management.vae_dtype(model_management.vae_device(), [torch.bfloat16, torch.float32])
    return {
        "transformer": (dtypes.storage or transformer_file or dtypes.compute, dtypes.compute),
        "text_encoder": (dtypes.storage or dtypes.compute, dtypes.compute),
        "vae": (vae, vae),
    }


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
    storage = {"transformer_storage_dtype": dtypes.storage, "text_encoder_storage_dtype": dtypes.storage}
    if not IN_COMFYUI:
        engine = omni_core.load_model(source, device=offload_device(), dtype=dtypes.compute, **storage)
        return OmniGen2Model(engine=engine, source=_label(source))
    transformer_file = component_path(source, "transformer")
    part_dtypes = _part_dtypes(dtypes, file_storage_dtype(transformer_file))
    operations = {p: comfy_operations(*part_dtypes[p], _part_devices(p)[0]) for p in PARTS}
    if file_is_scaled(transformer_file):
        operations["transformer"] = comfy_operations(*part_dtypes["transformer"], _part_devices("transformer")[0], True)
    engine = omni_core.load_model(
        source, device=offload_device(), dtype=dtypes.compute, **storage,
        text_encoder_dtype=part_dtypes["text_encoder"][1], vae_dtype=part_dtypes["vae"][1], operations=operations,
    )
    patchers = {}
    for part in PARTS:
        load, offload = _part_devices(part)
        module = part_module(engine, part)
        module.execution_device = load  # weights left on the CPU by a partial load say nothing of where it computes
        patchers[part] = model_patcher.ModelPatcher(_MANAGED[part](module), load, offload)
    return OmniGen2Model(engine=engine, source=_label(source), patchers=patchers)


def _label(source: str | dict[str, str]) -> str:
    return source if isinstance(source, str) else ", ".join(f"{k}={os.path.basename(v)}" for k, v in source.items())


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
    engine = model.engine.with_transformer(shallow_transformer(stack.base, stack.applied + added))
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
