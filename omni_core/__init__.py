"""omni_core: OmniGen2 in plain PyTorch (no ComfyUI imports), faithful to the official implementation.

The public API: `load_model(...)` returns an `OmniGen2` with `.generate(...)`, or `.encode_condition(...)` then
`.sample(...)`, each taking a `SamplingOptions` (or its fields as keywords). Everything else is importable from its
own module.
"""

from .condition import Condition, ReferenceImage, TextCondition
from .config import TransformerConfig
from .errors import CheckpointMismatchError, InvalidInputError, ModelFileError, OmniGen2Error
from .loading.model_loader import (
    DEFAULT_MODEL_DIR, DEFAULT_MODEL_SIZE, DEFAULT_MODEL_TEXT_GUIDANCE, INDEPENDENT_CONDITION_LORA, load_model,
)
from .options import SamplingOptions
from .pipeline import GenerationResult, OmniGen2
from .step_cache import TaylorSeer, TeaCache, TeaCacheCalibration
from .transformer import OmniGen2Transformer
from .vae import latents_to_raw

__all__ = [
    "CheckpointMismatchError",
    "Condition",
    "DEFAULT_MODEL_DIR",
    "DEFAULT_MODEL_SIZE",
    "DEFAULT_MODEL_TEXT_GUIDANCE",
    "GenerationResult",
    "INDEPENDENT_CONDITION_LORA",
    "InvalidInputError",
    "ModelFileError",
    "OmniGen2",
    "OmniGen2Error",
    "OmniGen2Transformer",
    "ReferenceImage",
    "SamplingOptions",
    "TaylorSeer",
    "TeaCache",
    "TeaCacheCalibration",
    "TextCondition",
    "TransformerConfig",
    "latents_to_raw",
    "load_model",
]
