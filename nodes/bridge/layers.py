"""ComfyUI's layer classes for the three models, so its ModelPatcher can load them partially as it does its own.

`comfy.ops.pick_operations` chooses the classes from the weight and compute dtypes (and a file's quantization
metadata): weights computed in their own dtype, or cast per call (fp8 storage, bf16 compute). Every weight-owning
layer must be one of them: ModelPatcher moves a model to the GPU layer by layer and, when memory is short, leaves the
layers that do not fit on the CPU and has them cast their weights to the GPU per call (lowvram), applying LoRA
patches on the way. A layer that is not a ComfyUI op can do neither: its weights would be stranded on the CPU.
"""

from __future__ import annotations

import functools
from types import SimpleNamespace

import torch

from .host import comfy_ops, model_management

# The torch layers our models use, by the names comfy.ops gives its counterparts.
LAYERS = ("Linear", "Conv2d", "Conv3d", "GroupNorm", "LayerNorm", "RMSNorm", "Embedding")


def comfy_operations(
    weight_dtype: torch.dtype, compute_dtype: torch.dtype, device: torch.device, quantized: bool = False
) -> SimpleNamespace:
    """The layer classes ComfyUI picks for a model stored in `weight_dtype`, computed in `compute_dtype` on `device`
    (`quantized`: a file with ComfyUI's quantization metadata, whose layers read their scales themselves:
    `reads_quantized`), plus `castable` for layers comfy.ops has no class for (see `omni_core.ops.adopt_operations`)."""
    config = SimpleNamespace(quant_config={"mixed_ops": True}) if quantized else None
    picked = comfy_ops.pick_operations(weight_dtype, compute_dtype, load_device=device, model_config=config)
    return SimpleNamespace(**{name: getattr(picked, name) for name in LAYERS}, castable=castable,
                           reads_quantized=quantized)


def castable(layer: torch.nn.Module) -> None:
    """Make a weight-owning layer a ComfyUI op, in place: one of a class comfy.ops has none for (transformers'
    Qwen2RMSNorm) casts per call by `_castable_class`; every op gets the bias entry ModelPatcher reads."""
    if not isinstance(layer, comfy_ops.CastWeightBiasOp):
        layer.__class__ = _castable_class(type(layer))
    if not hasattr(layer, "bias"):
        layer.register_parameter("bias", None)  # ModelPatcher reads every op's weight and bias


@functools.cache
def _castable_class(layer: type) -> type:
    """`layer` as a ComfyUI op: when ModelPatcher leaves its weights off the device (or patches them), each call runs
    it on copies cast to the input's device with the patches applied."""

    def forward(self, x: torch.Tensor, *args, **kwargs):
        comfy_ops.run_every_op()
        if not (self.comfy_cast_weights or self.weight_function or self.bias_function):
            return layer.forward(self, x, *args, **kwargs)
        stored = dict(self._parameters)
        functions = {"weight": self.weight_function, "bias": self.bias_function}
        for name, value in stored.items():
            if value is not None:
                cast = model_management.cast_to(value, None, x.device, copy=bool(functions.get(name)))
                self._parameters[name] = functools.reduce(lambda w, f: f(w), functions.get(name, ()), cast)
        try:
            return layer.forward(self, x, *args, **kwargs)
        finally:
            self._parameters.update(stored)

    return type(f"Comfy{layer.__name__}", (layer, comfy_ops.CastWeightBiasOp), {"forward": forward})
