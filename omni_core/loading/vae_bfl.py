"""Tell the FLUX VAE's original BFL/LDM key layout from diffusers', and rename a BFL state dict to diffusers keys.

ComfyUI ships the FLUX VAE as `ae.safetensors` in the layout of the original code: `encoder.down.N.block.M`,
`mid.block_1`, `mid.attn_1.q` (attention projections as 1x1 convolutions), `norm_out`. Diffusers' `AutoencoderKL`
names the same weights `down_blocks.N.resnets.M`, `mid_block.resnets.0`, `mid_block.attentions.0.to_q` (Linear)
and `conv_norm_out`, and numbers the decoder's up blocks in the opposite order. Pure functions, no model built.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import torch

from ..errors import CheckpointMismatchError

BFL = "bfl"
DIFFUSERS = "diffusers"

# Keys only one layout has; the detector needs one hit from exactly one side.
_BFL_MARKERS = ("encoder.down.", "decoder.up.", ".mid.attn_1.", ".mid.block_1.", "encoder.norm_out.")
_DIFFUSERS_MARKERS = ("encoder.down_blocks.", "decoder.up_blocks.", ".mid_block.", "encoder.conv_norm_out.")


_RESNET = r"(?P<layer>norm1|conv1|norm2|conv2|nin_shortcut)\.(?P<param>weight|bias)"
_PARAM = r"(?P<param>weight|bias)"
_PART = r"(?P<part>encoder|decoder)"

# (BFL key pattern, diffusers key template, squeeze a 1x1 conv weight to a Linear weight). The fields of the match
# fill the template after `_RENAMES`; `{up}` is also renumbered (see `convert_bfl_vae`).
_RULES: tuple[tuple[re.Pattern[str], str, bool], ...] = tuple(
    (re.compile(pattern + r"$"), template, squeeze)
    for pattern, template, squeeze in (
        (_PART + r"\.(?P<conv>conv_in|conv_out)\." + _PARAM, "{part}.{conv}.{param}", False),
        (_PART + r"\.norm_out\." + _PARAM, "{part}.conv_norm_out.{param}", False),
        (r"encoder\.down\.(?P<down>\d+)\.block\.(?P<block>\d+)\." + _RESNET,
         "encoder.down_blocks.{down}.resnets.{block}.{layer}.{param}", False),
        (r"encoder\.down\.(?P<down>\d+)\.downsample\.conv\." + _PARAM,
         "encoder.down_blocks.{down}.downsamplers.0.conv.{param}", False),
        (r"decoder\.up\.(?P<up>\d+)\.block\.(?P<block>\d+)\." + _RESNET,
         "decoder.up_blocks.{up}.resnets.{block}.{layer}.{param}", False),
        (r"decoder\.up\.(?P<up>\d+)\.upsample\.conv\." + _PARAM,
         "decoder.up_blocks.{up}.upsamplers.0.conv.{param}", False),
        (_PART + r"\.mid\.block_1\." + _RESNET, "{part}.mid_block.resnets.0.{layer}.{param}", False),
        (_PART + r"\.mid\.block_2\." + _RESNET, "{part}.mid_block.resnets.1.{layer}.{param}", False),
        (_PART + r"\.mid\.attn_1\.norm\." + _PARAM, "{part}.mid_block.attentions.0.group_norm.{param}", False),
        (_PART + r"\.mid\.attn_1\.(?P<proj>q|k|v|proj_out)\." + _PARAM,
         "{part}.mid_block.attentions.0.{proj}.{param}", True),
        (r"(?P<conv>quant_conv|post_quant_conv)\." + _PARAM, "{conv}.{param}", False),
    )
)
_RENAMES = {"nin_shortcut": "conv_shortcut", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}


def detect_vae_layout(keys: Iterable[str]) -> str:
    """`BFL` or `DIFFUSERS`: which key layout a VAE checkpoint uses, so the loader knows whether to convert."""
    keys = list(keys)
    bfl = any(marker in key for key in keys for marker in _BFL_MARKERS)
    diffusers = any(marker in key for key in keys for marker in _DIFFUSERS_MARKERS)
    if bfl and not diffusers:
        return BFL
    if diffusers and not bfl:
        return DIFFUSERS
    found = "both layouts mixed" if bfl else "neither layout"
    raise CheckpointMismatchError(
        f"Cannot tell the VAE key layout: found {found} (first keys: {sorted(keys)[:5]}). Expected a FLUX VAE with "
        "BFL keys like 'encoder.down.0.block.0.conv1.weight' (ComfyUI's ae.safetensors) or diffusers keys like "
        "'encoder.down_blocks.0.resnets.0.conv1.weight' (a diffusers vae/ folder)."
    )


def _decoder_levels(keys: Iterable[str]) -> int:
    """How many decoder levels the BFL keys have: `decoder.up.N` runs 0..levels-1."""
    levels = {int(match.group(1)) for key in keys if (match := re.match(r"decoder\.up\.(\d+)\.", key))}
    return max(levels) + 1 if levels else 0


def _as_linear_weight(key: str, tensor: torch.Tensor) -> torch.Tensor:
    """A 1x1 convolution weight [out, in, 1, 1] as the equal Linear weight [out, in]; biases pass through."""
    if tensor.ndim == 1:
        return tensor
    if tensor.ndim != 4 or tuple(tensor.shape[2:]) != (1, 1):
        raise CheckpointMismatchError(
            f"'{key}' has shape {tuple(tensor.shape)}; an attention projection must be a 1x1 convolution "
            "[out, in, 1, 1]. The file is not a FLUX/LDM VAE."
        )
    return tensor.reshape(tensor.shape[0], tensor.shape[1])


def convert_bfl_vae(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same tensors under diffusers `AutoencoderKL` keys; attention 1x1 conv weights become Linear weights.

    BFL `decoder.up.0` is the level nearest the image and diffusers `decoder.up_blocks.0` the one nearest the latent,
    so decoder levels are renumbered `levels - 1 - N`. Tensors are views, not copies.
    """
    levels = _decoder_levels(state_dict)
    converted: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for key, tensor in state_dict.items():
        for pattern, template, squeeze in _RULES:
            match = pattern.match(key)
            if match:
                fields = {name: _RENAMES.get(value, value) for name, value in match.groupdict().items()}
                if "up" in fields:
                    fields["up"] = str(levels - 1 - int(fields["up"]))
                converted[template.format(**fields)] = _as_linear_weight(key, tensor) if squeeze else tensor
                break
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointMismatchError(
            f"{len(unknown)} keys of the BFL-layout VAE have no diffusers equivalent: {sorted(unknown)[:20]}. "
            "The file is not a FLUX/LDM AutoencoderKL; use ComfyUI's FLUX ae.safetensors or a diffusers vae/ folder."
        )
    return converted
