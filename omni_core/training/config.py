"""The training configuration: typed dataclasses read from YAML, with `dotted.key=value` overrides.

Every key is checked against the schema: an unknown key, a value of the wrong type or out of range raises a
`ConfigError` that names the dotted key, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from ..errors import OmniGen2Error
from .data import TASK_TYPES

# OmniGen2's own fine-tuning (options/ft_lora.yml and train.py): rank 8, alpha = rank, the attention projections.
DEFAULT_LORA_TARGETS = ("to_k", "to_q", "to_v", "to_out.0")


class ConfigError(OmniGen2Error, ValueError):
    """A training config key is unknown, missing, of the wrong type or out of range."""


@dataclass(frozen=True)
class ModelConfig:
    """Where the weights come from.

    path: a model folder in the release layout (transformer/, vae/, mllm/, processor/); the defaults below read it.
    transformer_config: a transformer config.json: the transformer starts from random weights (training from
        scratch); otherwise it is loaded from `transformer` or `<path>/transformer`.
    transformer, text_encoder, vae: override a component's folder (text_encoder: a release root or its mllm/).
    """

    path: str | None = None
    transformer_config: str | None = None
    transformer: str | None = None
    text_encoder: str | None = None
    vae: str | None = None


@dataclass(frozen=True)
class LoraConfig:
    """peft LoRA on the transformer; defaults as OmniGen2's fine-tuning (rank 8, alpha = rank, the attention
    projections of every block, no dropout). The update is scaled by alpha / rank; alpha null means alpha = rank."""

    rank: int = 8
    alpha: float | None = None
    target_modules: tuple[str, ...] = DEFAULT_LORA_TARGETS
    dropout: float = 0.0

    @property
    def scale_alpha(self) -> float:
        return float(self.rank if self.alpha is None else self.alpha)


@dataclass(frozen=True)
class DataConfig:
    """OmniGen2's jsonl data and how images are sized (the official preprocessing: fit the pixel budget, floor to
    multiples of 16).

    jsonl: one file or a list of files; relative image paths are read from each file's folder.
    max_input_pixels: one budget, or one per reference count (entry k for k + 1 images), as the official config.
    bucket_by_size: every batch holds outputs of one size (whole latents stacked, no padded noise tokens).
    cache_features: keep each prompt's and image's frozen features in memory (false: recompute every time).
    latent_sampling: "sample" draws from the VAE posterior each step (the official training), "mean" uses its mean.
    prompt_dropout / condition_dropout: the probabilities that a sample trains with the empty prompt (the negative
        prompt of guidance) / without its reference images (image guidance's unconditional pass).
    task_types: train on the lines of these task types only (a curriculum phase, e.g. [t2i] before the mix).
    """

    jsonl: tuple[str, ...] = ()
    max_output_pixels: int = 1024 * 1024
    max_input_pixels: tuple[int, ...] = (1024 * 1024,)
    max_side_length: int = 1024
    bucket_by_size: bool = True
    cache_features: bool = True
    latent_sampling: str = "sample"
    prompt_dropout: float = 0.1
    condition_dropout: float = 0.1
    task_types: tuple[str, ...] = TASK_TYPES


@dataclass(frozen=True)
class TimestepConfig:
    """OmniGen2's training times (its `transport` with snr_type lognorm, do_shift, dynamic_time_shift): t =
    sigmoid(u), u ~ N(logit_mean, logit_std^2), then shifted towards noise by the output's token count."""

    logit_mean: float = 0.0
    logit_std: float = 1.0
    dynamic_shift: bool = True


@dataclass(frozen=True)
class TrainConfig:
    """The optimisation. batch_size is per process and micro-step: one optimizer step sees
    batch_size * processes * gradient_accumulation_steps samples.

    lr_scheduler: "constant" (OmniGen2's, after the warm-up) or "cosine" (decays to min_learning_rate at the last step).
    mixed_precision: "auto" (bf16 where the device has it, "no" on CPU), "no", "bf16" or "fp16".
    checkpoint_every: save a resumable checkpoint every N steps (0: only at the end).
    resume: null, "latest" (the newest checkpoint in output_dir, if any) or a checkpoint folder.
    num_threads: torch CPU threads (null: torch's default).
    """

    steps: int = 1000
    batch_size: int = 1
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1e-4
    warmup_steps: int = 0
    lr_scheduler: str = "constant"
    min_learning_rate: float = 0.0
    weight_decay: float = 0.01
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    mixed_precision: str = "auto"
    gradient_checkpointing: bool = False
    seed: int = 0
    checkpoint_every: int = 0
    checkpoints_total_limit: int | None = None
    resume: str | None = None
    num_threads: int | None = None
    log_every: int = 10


@dataclass(frozen=True)
class TrainingConfig:
    """A whole training run.

    lora: null trains every transformer parameter; a mapping trains a peft LoRA (see `LoraConfig`).
    independent_condition: OminiControl2's asymmetric mask: reference tokens attend only to themselves at the clean
        `condition_timestep` (1 = clean), so their features can be computed once at inference.
    condition_size: the longest side (pixels) reference images are downscaled to (compact condition), or null.
    position_scale: stretch of the compact reference's row/column ids onto the full-size grid; null derives it
        from the sizes as inference's `compact_condition` does.
    """

    output_dir: str
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    timesteps: TimestepConfig = field(default_factory=TimestepConfig)
    lora: LoraConfig | None = None
    independent_condition: bool = False
    condition_timestep: float = 1.0
    condition_size: int | None = None
    position_scale: float | None = None


CHOICES = {
    "data.latent_sampling": ("sample", "mean"),
    "train.mixed_precision": ("auto", "no", "bf16", "fp16"),
    "train.lr_scheduler": ("constant", "cosine"),
}
POSITIVE = {"train.steps", "train.batch_size", "train.gradient_accumulation_steps", "data.max_output_pixels",
            "data.max_side_length", "train.log_every", "condition_size", "lora.rank", "train.num_threads",
            "train.checkpoints_total_limit"}
PROBABILITIES = {"data.prompt_dropout", "data.condition_dropout", "lora.dropout"}


def _type_name(kind: Any) -> str:
    return getattr(kind, "__name__", str(kind))


def _convert(value: Any, kind: Any, key: str) -> Any:
    """`value` as the annotated `kind`, or a ConfigError naming `key`."""
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(kind)
        if value is None and type(None) in options:
            return None
        inner = [option for option in options if option is not type(None)]
        return _convert(value, inner[0], key)
    if dataclasses.is_dataclass(kind):
        if not isinstance(value, Mapping):
            raise ConfigError(f"'{key}' must be a mapping of {_type_name(kind)} keys, got {value!r}.")
        return _build(kind, value, key + ".")
    if origin is tuple:
        element = typing.get_args(kind)[0]
        items = [value] if isinstance(value, (str, int, float)) and not isinstance(value, bool) else value
        if not isinstance(items, Sequence) or isinstance(items, str):
            raise ConfigError(f"'{key}' must be a list of {_type_name(element)}, got {value!r}.")
        return tuple(_convert(item, element, f"{key}[{i}]") for i, item in enumerate(items))
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"'{key}' must be true or false, got {value!r}.")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"'{key}' must be a whole number, got {value!r}.")
        return value
    if kind is float:
        if isinstance(value, str):  # YAML 1.1 reads 2e-5 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"'{key}' must be a number, got {value!r}.")
        return float(value)
    if kind is str:
        if value is False and "no" in CHOICES.get(key, ()):
            return "no"  # YAML 1.1 reads an unquoted no as false
        if not isinstance(value, str):
            raise ConfigError(f"'{key}' must be a string, got {value!r}.")
        return value
    raise ConfigError(f"'{key}' has an unsupported type {kind!r}.")  # a schema error, not the user's


def _build(cls: type, values: Mapping[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown config key{'s' if len(unknown) > 1 else ''} {', '.join(prefix + k for k in unknown)}; "
            f"{_type_name(cls)} takes {', '.join(prefix + k for k in fields)}."
        )
    missing = [name for name, f in fields.items() if name not in values
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"missing config key {', '.join(prefix + k for k in missing)}.")
    converted = {}
    for name, value in values.items():
        key = prefix + name
        converted[name] = _convert(value, hints[name], key)
        _check_range(key, converted[name])
    return cls(**converted)


def _check_range(key: str, value: Any) -> None:
    if value is None:
        return
    if key in CHOICES and value not in CHOICES[key]:
        raise ConfigError(f"'{key}' must be one of {', '.join(CHOICES[key])}, got {value!r}.")
    if key == "data.task_types" and (not value or set(value) - set(TASK_TYPES)):
        raise ConfigError(f"'{key}' must be a non-empty list of {', '.join(TASK_TYPES)}, got {list(value)!r}.")
    if key in POSITIVE and value < 1:
        raise ConfigError(f"'{key}' must be >= 1, got {value!r}.")
    if key in PROBABILITIES and not 0.0 <= value <= 1.0:
        raise ConfigError(f"'{key}' must be a probability in [0, 1], got {value!r}.")
    if key in ("train.learning_rate", "position_scale", "lora.alpha") and value <= 0:
        raise ConfigError(f"'{key}' must be > 0, got {value!r}.")
    if key == "condition_timestep" and not 0.0 <= value <= 1.0:
        raise ConfigError(f"'{key}' must be in [0, 1] (1 = clean), got {value!r}.")
    if key in ("train.warmup_steps", "train.checkpoint_every", "train.max_grad_norm", "train.weight_decay",
               "train.min_learning_rate") and value < 0:
        raise ConfigError(f"'{key}' must be >= 0, got {value!r}.")


def apply_overrides(values: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """`dotted.key=value` strings (values parsed as YAML: numbers, true/false, null, lists) applied to a mapping."""
    for override in overrides:
        key, sep, text = override.partition("=")
        if not sep or not key:
            raise ConfigError(f"override '{override}' must look like dotted.key=value (e.g. train.steps=100).")
        node = values
        parts = key.split(".")
        for part in parts[:-1]:
            if node.get(part) is None:
                node[part] = {}
            if not isinstance(node[part], dict):
                raise ConfigError(f"override '{override}': '{part}' is not a mapping in the config.")
            node = node[part]
        node[parts[-1]] = yaml.safe_load(text)
    return values


def resolve_paths(values: dict[str, Any], base: Path) -> dict[str, Any]:
    """Relative paths in the config are read from the config file's folder (so a config works from any cwd)."""
    def absolute(path: Any) -> Any:
        return str(base / path) if isinstance(path, str) and not Path(path).is_absolute() else path

    for section, keys in (("model", ("path", "transformer_config", "transformer", "text_encoder", "vae")), ("data", ("jsonl",))):
        node = values.get(section)
        if isinstance(node, dict):
            for key in keys:
                if isinstance(node.get(key), list):
                    node[key] = [absolute(p) for p in node[key]]
                elif key in node:
                    node[key] = absolute(node[key])
    if "output_dir" in values:
        values["output_dir"] = absolute(values["output_dir"])
    return values


def load_config(path: str | Path | None, overrides: Sequence[str] = (), base: Path | None = None) -> TrainingConfig:
    """Read a YAML config (or none: overrides only), apply overrides, resolve relative paths, check the schema.

    Relative paths are taken from the config file's folder; those given in overrides from `base` (default: cwd).
    """
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"training config '{path}' does not exist.")
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"training config '{path}' is not valid YAML: {error}") from error
        if not isinstance(values, dict):
            raise ConfigError(f"training config '{path}' must be a mapping of keys, got {type(values).__name__}.")
        values = resolve_paths(values, path.resolve().parent)
    override_values = resolve_paths(apply_overrides({}, overrides), base or Path.cwd())
    values = _merge(values, override_values)
    config = _build(TrainingConfig, values)
    _check_consistency(config)
    return config


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _check_consistency(config: TrainingConfig) -> None:
    model = config.model
    if model.transformer_config is None and model.transformer is None and model.path is None:
        raise ConfigError("set model.path (a model folder) or model.transformer_config (train from random weights).")
    if model.transformer_config is not None and model.transformer is not None:
        raise ConfigError("model.transformer_config (random weights) and model.transformer (trained weights) exclude "
                          "each other; keep one.")
    if config.lora is not None and model.transformer_config is not None:
        raise ConfigError("a LoRA needs trained base weights: set lora: null to train from model.transformer_config, "
                          "or start from model.path / model.transformer.")
    for name in ("text_encoder", "vae"):
        if getattr(model, name) is None and model.path is None:
            raise ConfigError(f"set model.{name} (or model.path, whose {name} is used).")
    if not config.data.jsonl:
        raise ConfigError("set data.jsonl: the training data (one OmniGen2 jsonl file or a list of them).")
    if config.position_scale is not None and config.condition_size is None:
        raise ConfigError("position_scale applies to a compact condition: set condition_size too, or remove it.")


def to_dict(config: TrainingConfig) -> dict[str, Any]:
    """The config as plain YAML-able values (saved beside outputs and checkpoints)."""
    def plain(value: Any) -> Any:
        if isinstance(value, tuple):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(dataclasses.asdict(config))
