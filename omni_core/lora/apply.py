"""Applying LoRAs to a transformer without touching it: a copy that shares every tensor but the adapted weights.

The adapted weights are merged (W + sum of strength * scale * B @ A, computed in float32 and cast back to the
weight's dtype), so the copy runs at the base model's speed (plain Linear layers, float32 CPU GEMMs on oneDNN) and
costs memory only for the weights a LoRA changes. The copy remembers its pristine base and the LoRAs on it: LoRAs
added later are merged from the base again, and removing them gives the base itself back, bit for bit.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, Union

import torch

from ..errors import CheckpointMismatchError, InvalidInputError
from ..transformer import OmniGen2Transformer
from .reader import read_lora
from .weights import Lora


@dataclass(frozen=True)
class AppliedLora:
    """A LoRA at a strength, as it is applied (strength 0 is dropped: it changes nothing)."""

    lora: Lora
    strength: float

    @property
    def fingerprint(self) -> str:
        return f"{self.lora.content_hash}@{self.strength!r}"


# (LoRA file or one already read, strength), or an AppliedLora as `resolve_loras` returns it
LoraSpec = Union[tuple[Union[str, Path, Lora], float], AppliedLora]


@dataclass(frozen=True)
class LoraStack:
    """What a LoRA'd transformer is: its pristine base and the LoRAs merged into it, in order."""

    base: OmniGen2Transformer
    applied: tuple[AppliedLora, ...]


def lora_stack(transformer: torch.nn.Module) -> LoraStack:
    """The LoRAs a transformer carries (none for one loaded from a checkpoint)."""
    return getattr(transformer, "lora_stack", None) or LoraStack(base=transformer, applied=())


def lora_fingerprint(transformer: torch.nn.Module) -> str:
    """Identifies the LoRAs (file contents and strengths, in order) merged into a transformer; "" for none. Part of
    every cache key of features the transformer computes."""
    applied = lora_stack(transformer).applied
    if not applied:
        return ""
    return hashlib.sha256("|".join(a.fingerprint for a in applied).encode()).hexdigest()


def resolve_loras(loras: Sequence[LoraSpec]) -> tuple[AppliedLora, ...]:
    """Read each (path or Lora, strength), checking the strength (AppliedLora entries are taken as they are);
    strength-0 entries are dropped."""
    applied = []
    for entry in loras:
        if isinstance(entry, AppliedLora):
            applied.append(entry)
            continue
        if not isinstance(entry, (tuple, list)) or len(entry) != 2:
            raise InvalidInputError(f"each LoRA must be given as (path, strength); got {entry!r}.")
        source, strength = entry
        if isinstance(strength, bool) or not isinstance(strength, (int, float)) or strength != strength:
            raise InvalidInputError(f"LoRA strength for '{source}' must be a number, got {strength!r}.")
        lora = source if isinstance(source, Lora) else read_lora(source)  # read even at strength 0: a bad file is an error
        if strength != 0:
            applied.append(AppliedLora(lora, float(strength)))
    return tuple(applied)


def adapted_linear(model: torch.nn.Module, module: str, lora: Lora) -> torch.nn.Linear:
    """The Linear a LoRA module adapts, checked: it exists in the model and its weight has the LoRA's shape."""
    try:
        linear = model.get_submodule(module)
    except AttributeError:
        linear = None
    if not isinstance(linear, torch.nn.Linear):
        raise CheckpointMismatchError(
            f"'{lora.path}' adapts '{module}', which is not a Linear of OmniGen2's transformer: the LoRA was made for "
            "another model. Use a LoRA trained on OmniGen2."
        )
    shape = lora.modules[module].delta_shape
    if tuple(linear.weight.shape) != shape:
        raise CheckpointMismatchError(
            f"'{lora.path}': {module} has shape {shape} in the LoRA (up {tuple(lora.modules[module].up.shape)} @ down "
            f"{tuple(lora.modules[module].down.shape)}) but {tuple(linear.weight.shape)} in the model: the LoRA was "
            "made for another size of OmniGen2."
        )
    return linear


def check_loras_fit(transformer: torch.nn.Module, applied: Sequence[AppliedLora]) -> None:
    """Raise CheckpointMismatchError unless every module of every LoRA is a Linear of `transformer` of its shape."""
    for entry in applied:
        for module in entry.lora.modules:
            adapted_linear(transformer, module, entry.lora)


def merged_weights(base: torch.nn.Module, applied: Sequence[AppliedLora]) -> dict[str, torch.Tensor]:
    """{module: base weight + sum of strength * delta} for every module any LoRA adapts, in the weight's dtype."""
    totals: dict[str, torch.Tensor] = {}
    for entry in applied:
        for module, pair in entry.lora.modules.items():
            weight = adapted_linear(base, module, entry.lora).weight
            if module not in totals:
                totals[module] = weight.detach().to(torch.float32, copy=True)
            totals[module] += pair.delta(entry.strength, weight.device)
    return {module: total.to(base.get_submodule(module).weight.dtype) for module, total in totals.items()}


def independent_condition_of(applied: Sequence[AppliedLora]) -> bool | None:
    """The conditioning mode the LoRAs were trained with: the last one that records it decides (None: none does)."""
    recorded = [a.lora.training.independent_condition for a in applied if a.lora.training.independent_condition is not None]
    return recorded[-1] if recorded else None


def _with_identity(transformer: OmniGen2Transformer, base: OmniGen2Transformer, applied: tuple[AppliedLora, ...]):
    """Give a copy of `base` what makes it the LoRA'd model besides its weights: config and `lora_stack`."""
    mode = independent_condition_of(applied)
    if mode is not None:
        transformer.config = dataclasses.replace(base.config, independent_condition=mode)
    transformer.lora_stack = LoraStack(base=base, applied=applied)
    return transformer


def shallow_transformer(base: OmniGen2Transformer, applied: tuple[AppliedLora, ...]) -> OmniGen2Transformer:
    """A new transformer object over `base`'s very modules, with its own config and `lora_stack`: the LoRA'd
    model's identity (default mode, cache fingerprint) when its weights are patched by someone else (ComfyUI)."""
    return _with_identity(copy.copy(base), base, applied)


def transformer_with_loras(
    transformer: OmniGen2Transformer, loras: Sequence[LoraSpec], replace: bool = False
) -> OmniGen2Transformer:
    """`transformer` with `loras` added to the ones it has (or instead of them, with replace=True); never modified.

    The result shares every tensor of the pristine base except the merged weights, and its config takes the
    LoRAs' independent_condition. With no LoRA left (none given, all at strength 0) it is the pristine base.
    """
    stack, added = lora_stack(transformer), resolve_loras(loras)
    if not added and not replace:
        return transformer
    applied = added if replace else stack.applied + added
    if not applied:
        return stack.base
    merged = merged_weights(stack.base, applied)
    shared = {id(t): t for t in itertools.chain(stack.base.parameters(), stack.base.buffers())}
    result = _with_identity(copy.deepcopy(stack.base, memo=shared), stack.base, applied)
    for module, weight in merged.items():
        result.get_submodule(module).weight = torch.nn.Parameter(weight, requires_grad=False)
    return result
