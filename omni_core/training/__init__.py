"""Training OmniGen2 transformers and condition-independent LoRAs: `python -m omni_core.training --config X.yaml`.

Modules, one job each: config (YAML schema), data (jsonl), features (frozen encoders' outputs, cached), order (which
items each step sees), batch (a micro-batch and its random draws), objective (flow matching), forward (the training
forward), model (build, initialise, save), checkpoint (resume), loop (the run under accelerate).
"""

from .config import ConfigError, TrainingConfig, load_config
from .data import TrainingDataError
from .loop import train

__all__ = ["ConfigError", "TrainingConfig", "TrainingDataError", "load_config", "train"]
