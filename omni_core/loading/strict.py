"""Strict loading of a state dict into a module built on the meta device (no second copy of the weights)."""

from __future__ import annotations

from typing import Mapping

import torch

from ..errors import CheckpointMismatchError, InvalidInputError

SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def check_dtype(dtype: torch.dtype, what: str) -> torch.dtype:
    if dtype not in SUPPORTED_DTYPES:
        raise InvalidInputError(
            f"dtype {dtype} is not supported for the {what}; use torch.float32, torch.bfloat16 or torch.float16."
        )
    return dtype


def check_state_dict(
    expected: Mapping[str, tuple], state_dict: Mapping[str, torch.Tensor], what: str, hint: str
) -> None:
    """Raise one error naming every missing, unexpected and wrongly shaped tensor (up to ten of each).

    `what` says what the weights were checked against (e.g. "'ae.safetensors' does not fit an AutoencoderKL");
    `hint` says what to do about it.
    """
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    shapes = [
        f"{key}: file {tuple(state_dict[key].shape)}, model {tuple(expected[key])}"
        for key in sorted(set(expected) & set(state_dict))
        if tuple(state_dict[key].shape) != tuple(expected[key])
    ]
    problems = [
        f"{label} ({len(items)}): [{', '.join(items[:10])}{', ...' if len(items) > 10 else ''}]"
        for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes))
        if items
    ]
    if problems:
        raise CheckpointMismatchError(f"{what}: {'; '.join(problems)}. {hint}")


def assign_state_dict(
    module: torch.nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    source: str,
    hint: str = "Check that the file is the right model and that its config matches its weights.",
) -> torch.nn.Module:
    """Check names and shapes, then let the module's parameters take the checkpoint's tensors (assign=True), so a
    meta-device module never holds a second copy. Returns the module in eval mode without gradients."""
    expected = {name: tuple(tensor.shape) for name, tensor in module.state_dict().items()}
    check_state_dict(expected, state_dict, f"'{source}' does not fit the {type(module).__name__} it is loaded into", hint)
    module.load_state_dict(state_dict, strict=True, assign=True)
    return module.eval().requires_grad_(False)
