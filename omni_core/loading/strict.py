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


def assign_state_dict(module: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], source: str) -> torch.nn.Module:
    """Load every tensor by name, checking names and shapes first so errors list all problems at once.

    The module's parameters take the checkpoint's tensors (assign=True), so a meta-device module never holds a
    second copy. Missing, unexpected and mis-shaped keys are all reported with the file they came from.
    """
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mis_shaped = [
        f"{key}: checkpoint {tuple(state_dict[key].shape)} vs model {tuple(expected[key].shape)}"
        for key in sorted(set(expected) & set(state_dict))
        if tuple(state_dict[key].shape) != tuple(expected[key].shape)
    ]
    if missing or unexpected or mis_shaped:
        problems = []
        if missing:
            problems.append(f"missing keys {_abbreviate(missing)}")
        if unexpected:
            problems.append(f"unexpected keys {_abbreviate(unexpected)}")
        if mis_shaped:
            problems.append(f"shape mismatches {_abbreviate(mis_shaped)}")
        raise CheckpointMismatchError(
            f"'{source}' does not fit the {type(module).__name__} it is loaded into: " + "; ".join(problems)
            + ". Check that the file is the right model and that its config matches its weights."
        )
    module.load_state_dict(state_dict, strict=True, assign=True)
    return module.eval().requires_grad_(False)


def _abbreviate(items: list[str], limit: int = 8) -> str:
    shown = ", ".join(items[:limit])
    return f"[{shown}{f', ... ({len(items) - limit} more)' if len(items) > limit else ''}]"
