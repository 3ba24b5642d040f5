"""The transformer's configuration: one typed dataclass whose fields are the released `config.json` names."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch

from .errors import CheckpointMismatchError, ModelFileError


def is_polynomial(values) -> bool:
    """Whether `values` can be a rescale polynomial: a non-empty sequence of real numbers (no strings, no bools)."""
    return (
        not isinstance(values, (str, bytes)) and hasattr(values, "__len__") and len(values) > 0
        and all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in values)
    )


# The keys a config.json must give: the sizes of the weights (the others have one value across OmniGen2 models).
SHAPE_KEYS = (
    "patch_size", "in_channels", "hidden_size", "num_layers", "num_refiner_layers", "num_attention_heads",
    "num_kv_heads", "multiple_of", "axes_dim_rope", "text_feat_dim",
)


@dataclass(frozen=True)
class TransformerConfig:
    """OmniGen2 transformer hyper-parameters.

    Defaults are the released `OmniGen2/OmniGen2` transformer (the official class defaults are stale).

    Args:
        patch_size (int, 2): latent pixels per token side.
        in_channels (int, 16): latent channels (FLUX VAE).
        out_channels (int | None, None): predicted channels; None means in_channels.
        hidden_size (int, 2520): model width.
        num_layers (int, 32): joint transformer blocks.
        num_refiner_layers (int, 2): blocks in each of the noise, reference and context refiners.
        num_attention_heads (int, 21): query heads.
        num_kv_heads (int, 7): key/value heads (grouped-query attention).
        multiple_of (int, 256): the feed-forward width is rounded up to a multiple of this.
        ffn_dim_multiplier (float | None, None): optional factor on the 4 * hidden feed-forward width.
        norm_eps (float, 1e-5): RMSNorm epsilon.
        axes_dim_rope (tuple, (40, 40, 40)): head_dim slices rotated by the sequence, row and column ids.
        axes_lens (tuple, (1024, 1664, 1664)): table lengths of the official RoPE; kept for config round-trips.
        text_feat_dim (int, 2048): width of the MLLM hidden states.
        timestep_scale (float, 1000.0): t in [0, 1] is multiplied by this before the sinusoidal embedding.
        independent_condition (bool, False): the weights were trained with OminiControl2's asymmetric mask
            (references attend only to themselves at a clean timestep); not a key of the official release, which
            was trained without it. It sets the default conditioning mode.
        teacache_coefficients (tuple | None, None): TeaCache's rescale polynomial fitted to these weights (highest
            power first; `python -m omni_core.training.calibrate_teacache` writes it); not a key of the official release,
            whose polynomial (fitted to the released model) is the default when it is absent.
    """

    patch_size: int = 2
    in_channels: int = 16
    out_channels: int | None = None
    hidden_size: int = 2520
    num_layers: int = 32
    num_refiner_layers: int = 2
    num_attention_heads: int = 21
    num_kv_heads: int = 7
    multiple_of: int = 256
    ffn_dim_multiplier: float | None = None
    norm_eps: float = 1e-5
    axes_dim_rope: tuple[int, int, int] = (40, 40, 40)
    axes_lens: tuple[int, int, int] = (1024, 1664, 1664)
    text_feat_dim: int = 2048
    timestep_scale: float = 1000.0
    independent_condition: bool = False
    teacache_coefficients: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "axes_dim_rope", tuple(self.axes_dim_rope))
        object.__setattr__(self, "axes_lens", tuple(self.axes_lens))
        if self.teacache_coefficients is not None:
            if not is_polynomial(self.teacache_coefficients):
                raise CheckpointMismatchError(
                    "teacache_coefficients must be a non-empty list of numbers (highest power first), "
                    f"got {self.teacache_coefficients!r}."
                )
            object.__setattr__(self, "teacache_coefficients", tuple(float(c) for c in self.teacache_coefficients))
        if self.hidden_size % self.num_attention_heads:
            raise CheckpointMismatchError(
                f"hidden_size {self.hidden_size} is not divisible by num_attention_heads {self.num_attention_heads}."
            )
        if self.num_attention_heads % self.num_kv_heads:
            raise CheckpointMismatchError(
                f"num_attention_heads {self.num_attention_heads} is not divisible by num_kv_heads {self.num_kv_heads}."
            )
        if sum(self.axes_dim_rope) != self.head_dim or any(d % 2 for d in self.axes_dim_rope):
            raise CheckpointMismatchError(
                f"axes_dim_rope {self.axes_dim_rope} must be even and sum to head_dim {self.head_dim} "
                f"(hidden_size {self.hidden_size} / num_attention_heads {self.num_attention_heads})."
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def time_embed_dim(self) -> int:
        """Width of the timestep embedding: the hidden size, capped at 1024."""
        return min(self.hidden_size, 1024)

    @property
    def ffn_inner_dim(self) -> int:
        """4 * hidden (times ffn_dim_multiplier), rounded up to a multiple of `multiple_of`."""
        inner = 4 * self.hidden_size
        if self.ffn_dim_multiplier is not None:
            inner = int(self.ffn_dim_multiplier * inner)
        return self.multiple_of * -(-inner // self.multiple_of)

    @property
    def patch_channels(self) -> int:
        return self.patch_size * self.patch_size * self.in_channels

    @property
    def output_channels(self) -> int:
        return self.out_channels or self.in_channels

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "TransformerConfig":
        """Build from a `config.json` mapping; diffusers bookkeeping keys (`_class_name`, ...) are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(k for k in values if k not in names and not k.startswith("_"))
        if unknown:
            raise CheckpointMismatchError(f"Unknown OmniGen2 transformer config keys {unknown}; is this an OmniGen2 config?")
        return cls(**{k: v for k, v in values.items() if k in names})

    @classmethod
    def from_json(cls, path: str | Path) -> "TransformerConfig":
        """Read a `config.json`; it must give every size of the weights (`SHAPE_KEYS`): a missing one would silently
        take the released model's value and fail later, blaming another key."""
        path = Path(path)
        try:
            values = json.loads(path.read_text())
        except FileNotFoundError as error:
            raise ModelFileError(f"Transformer config '{path}' not found.") from error
        except json.JSONDecodeError as error:
            raise ModelFileError(f"Transformer config '{path}' is not valid JSON: {error}.") from error
        if not isinstance(values, dict):
            raise ModelFileError(f"Transformer config '{path}' must hold a JSON object, got {type(values).__name__}.")
        missing = [key for key in SHAPE_KEYS if key not in values]
        if missing:
            raise ModelFileError(
                f"Transformer config '{path}' lacks {missing}: it must give every size of the weights "
                f"({', '.join(SHAPE_KEYS)}). Restore the config.json that came with the weights."
            )
        return cls.from_dict(values)

    @classmethod
    def from_state_dict(cls, state_dict: Mapping[str, torch.Tensor]) -> "TransformerConfig":
        """Infer the architecture from tensor shapes, for single-file checkpoints that carry no config.

        Head counts cannot be read from shapes alone; the released head_dim (120) is assumed unless the qk-norm
        weight says otherwise, which it always does: its length is head_dim.
        """
        try:
            patch_channels, hidden = state_dict["x_embedder.weight"].shape[1], state_dict["x_embedder.weight"].shape[0]
            head_dim = state_dict["layers.0.attn.norm_q.weight"].shape[0]
            kv_dim = state_dict["layers.0.attn.to_k.weight"].shape[0]
            inner = state_dict["layers.0.feed_forward.linear_1.weight"].shape[0]
            text_feat_dim = state_dict["time_caption_embed.caption_embedder.0.weight"].shape[0]
            out_patch = state_dict["norm_out.linear_2.weight"].shape[0]
        except KeyError as error:
            raise CheckpointMismatchError(
                f"Not an OmniGen2 transformer checkpoint: tensor {error} is missing."
            ) from error
        num_layers = 1 + max(int(k.split(".")[1]) for k in state_dict if k.startswith("layers."))
        num_refiner_layers = 1 + max(int(k.split(".")[1]) for k in state_dict if k.startswith("noise_refiner."))
        in_channels = 16 if patch_channels % 16 == 0 else patch_channels
        patch_size = int(round((patch_channels / in_channels) ** 0.5))
        rope_axis = (head_dim // 3) // 2 * 2
        axes = (head_dim - 2 * rope_axis, rope_axis, rope_axis)
        multiple_of = 256 if inner % 256 == 0 else _largest_power_of_two_divisor(inner)
        return cls(
            patch_size=patch_size,
            in_channels=in_channels,
            out_channels=None if out_patch == patch_channels else out_patch // (patch_size * patch_size),
            hidden_size=hidden,
            num_layers=num_layers,
            num_refiner_layers=num_refiner_layers,
            num_attention_heads=hidden // head_dim,
            num_kv_heads=kv_dim // head_dim,
            multiple_of=multiple_of,
            ffn_dim_multiplier=None if -(-4 * hidden // multiple_of) * multiple_of == inner else inner / (4 * hidden),
            axes_dim_rope=axes,
            text_feat_dim=text_feat_dim,
        )


def _largest_power_of_two_divisor(value: int) -> int:
    return value & -value
