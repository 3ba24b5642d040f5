"""Why sampling produced NaN or infinite values, from what can be checked afterwards: the transformer's weights, the
condition it was given, and the dtype it computed in. Only float16 earns the overflow hint; damaged weights or a
damaged condition are named, so the fix offered is the one that helps."""

from __future__ import annotations

import torch
from torch import nn

from .condition import Condition

SHOWN_NAMES = 3  # damaged tensors named in the message; the count says how many there are


def _is_finite(tensor: torch.Tensor) -> bool:
    return bool(torch.isfinite(tensor.float()).all())  # .float(): float8 storage has no isfinite of its own


def explain_non_finite(transformer: nn.Module, condition: Condition, dtype: torch.dtype) -> str:
    """The error message for non-finite latents: what was found non-finite, and what to do about it."""
    damaged = [name for name, tensor in transformer.state_dict().items() if not _is_finite(tensor)]
    if damaged:
        return (
            f"sampling produced NaN or infinite values: {len(damaged)} transformer weight tensor(s) hold NaN or "
            f"infinite values (e.g. {', '.join(damaged[:SHOWN_NAMES])}). The weight file, or a LoRA merged into it, "
            "is damaged: download it again."
        )
    parts = {"the prompt's text features": condition.positive.embeds}
    if condition.negative is not None:
        parts["the negative prompt's text features"] = condition.negative.embeds
    parts.update({f"reference image {i + 1}'s latent": ref.latent for i, ref in enumerate(condition.references)})
    bad_inputs = [name for name, tensor in parts.items() if not _is_finite(tensor)]
    if bad_inputs:
        return (
            f"sampling produced NaN or infinite values: {', '.join(bad_inputs)} already held them (the transformer's "
            "weights are finite). Check the text encoder and VAE files, or the images, that made the condition."
        )
    if dtype == torch.float16:
        return (
            f"sampling produced NaN or infinite values with finite weights and condition, computing in {dtype}: "
            "OmniGen2's transformer overflows float16. Load the model in bfloat16 or float32 instead."
        )
    wider = "" if dtype == torch.float32 else ", or load the model in float32"
    return (
        f"sampling produced NaN or infinite values with finite weights and condition, computing in {dtype}: the "
        f"values grew out of range while sampling. Lower the guidance scales{wider}."
    )
