"""The OmniGen2 diffusion transformer, with state-dict keys equal to the official checkpoints.

Reads top-down like diffusers' Lumina2 file, its ancestor: leaves first (embeddings, feed-forward, modulation,
attention, block, output norm), the model last. Weight-owning constructors take an `operations` namespace
(see `ops.py`) so ComfyUI can supply its own layer classes. Numbers follow `shared/docs/omnigen2-facts.md`.

The file holds the model only. What caches or reuses its work attaches at one seam, as diffusers' attention
processors and ComfyUI's `transformer_options` patches do: a `KVHook`, which `forward` and the joint stages take as
`reference_kv` and every joint layer's attention calls with the layer's index and its rotated keys/values (reference
reuse records, supplies or captures them there: `reference_cache.py`). Step caching needs no hook: its runner
(`reference_passes.py`) calls the stages of `forward` itself and on some steps estimates `joint_hidden`'s output.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from types import SimpleNamespace
from typing import Protocol, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .attention import attention
from .condition import MAX_REFERENCE_IMAGES, ReferenceImage, check_reference_count
from .config import TransformerConfig
from .errors import InvalidInputError
from .layout import SampleLayout, TokenGrid
from .ops import Linear, add_rms_norm, default_operations, rms_norm
from .packing import pad_sequences, patchify, unpatchify
from .rope import OmniRoPE, Rotation, apply_rotation, text_positions

TIMESTEP_FREQUENCY_DIM = 256


def timestep_sinusoids(timestep: torch.Tensor, dim: int = TIMESTEP_FREQUENCY_DIM, scale: float = 1000.0) -> torch.Tensor:
    """[cos | sin] of scale * t * 10000^(-k / (dim / 2)), float32: diffusers' Timesteps(flip_sin_to_cos, shift 0)."""
    half = dim // 2
    frequencies = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=timestep.device) / half)
    angles = scale * (timestep[:, None].float() * frequencies[None, :])
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


class TimestepEmbedder(nn.Module):
    """Sinusoids -> Linear -> SiLU -> Linear."""

    def __init__(self, width: int, operations: SimpleNamespace, dtype=None, device=None) -> None:
        super().__init__()
        self.linear_1 = operations.Linear(TIMESTEP_FREQUENCY_DIM, width, dtype=dtype, device=device)
        self.linear_2 = operations.Linear(width, width, dtype=dtype, device=device)

    def forward(self, sinusoids: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(sinusoids)))


class TimeCaptionEmbedding(nn.Module):
    """Embeds the timestep (depends on t only) and projects MLLM hidden states to the model width."""

    def __init__(self, config: TransformerConfig, operations: SimpleNamespace, dtype=None, device=None) -> None:
        super().__init__()
        self.timestep_scale = config.timestep_scale
        self.timestep_embedder = TimestepEmbedder(config.time_embed_dim, operations, dtype, device)
        self.caption_embedder = nn.Sequential(
            operations.RMSNorm(config.text_feat_dim, eps=config.norm_eps, dtype=dtype, device=device),
            operations.Linear(config.text_feat_dim, config.hidden_size, dtype=dtype, device=device),
        )

    def embed_time(self, timestep: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return self.timestep_embedder(timestep_sinusoids(timestep, scale=self.timestep_scale).to(dtype))

    def embed_caption(self, text_hidden_states: torch.Tensor) -> torch.Tensor:
        return self.caption_embedder(text_hidden_states)


class FeedForward(nn.Module):
    """SwiGLU: linear_2(silu(linear_1 x) * linear_3 x)."""

    def __init__(self, config: TransformerConfig, operations: SimpleNamespace, dtype=None, device=None) -> None:
        super().__init__()
        dim, inner = config.hidden_size, config.ffn_inner_dim
        self.linear_1 = operations.Linear(dim, inner, bias=False, dtype=dtype, device=device)
        self.linear_2 = operations.Linear(inner, dim, bias=False, dtype=dtype, device=device)
        self.linear_3 = operations.Linear(dim, inner, bias=False, dtype=dtype, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # our Linear fuses the activation into the GEMM; a host's layer classes (ComfyUI's ops) run it apart
        gate = self.linear_1.forward_silu(x) if isinstance(self.linear_1, Linear) else F.silu(self.linear_1(x))
        # in place when nothing records for backward: one [S, inner] buffer fewer per call
        gate = gate * self.linear_3(x) if torch.is_grad_enabled() else gate.mul_(self.linear_3(x))
        return self.linear_2(gate)


@dataclass(frozen=True)
class ModulationOut:
    """Per-sample [B, D] modulation of a block; there is no shift term in OmniGen2."""

    scale_msa: torch.Tensor
    gate_msa: torch.Tensor
    scale_mlp: torch.Tensor
    gate_mlp: torch.Tensor


class Modulation(nn.Module):
    """`norm1` of a modulated block: RMSNorm plus the linear map from the time embedding to scales and gates."""

    def __init__(self, config: TransformerConfig, operations: SimpleNamespace, dtype=None, device=None) -> None:
        super().__init__()
        dim = config.hidden_size
        self.linear = operations.Linear(config.time_embed_dim, 4 * dim, dtype=dtype, device=device)
        self.norm = operations.RMSNorm(dim, eps=config.norm_eps, dtype=dtype, device=device)

    def forward(self, temb: torch.Tensor) -> ModulationOut:
        return ModulationOut(*self.linear(F.silu(temb)).chunk(4, dim=1))


class KVHook(Protocol):
    """The seam (see the module docstring): every joint layer's attention calls it with its index, rotated keys and
    values [B, H_kv, S, D] and key mask [B, S] (True: attend; None: all) and attends to what it returns. Subclass it
    to inherit `supplies_references`: True when it appends the references' keys/values itself (`forward` skips them)."""

    supplies_references: bool = False

    def __call__(
        self, layer: int, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]: ...


class Attention(nn.Module):
    """Grouped-query self-attention with RMSNorm on queries and keys, rotated by Omni-RoPE."""

    def __init__(self, config: TransformerConfig, operations: SimpleNamespace, dtype=None, device=None) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = config.num_attention_heads, config.num_kv_heads, config.head_dim
        dim, kv_dim = config.hidden_size, config.num_kv_heads * config.head_dim
        self.to_q = operations.Linear(dim, dim, bias=False, dtype=dtype, device=device)
        self.to_k = operations.Linear(dim, kv_dim, bias=False, dtype=dtype, device=device)
        self.to_v = operations.Linear(dim, kv_dim, bias=False, dtype=dtype, device=device)
        self.norm_q = operations.RMSNorm(self.head_dim, eps=1e-5, dtype=dtype, device=device)
        self.norm_k = operations.RMSNorm(self.head_dim, eps=1e-5, dtype=dtype, device=device)
        self.to_out = nn.ModuleList([operations.Linear(dim, dim, bias=False, dtype=dtype, device=device)])

    def project(
        self, x: torch.Tensor, rotation: Rotation, query_rows: slice = slice(None)
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [B, S, dim] -> rotated q [B, H, S_q, D] for the `query_rows` tokens and k, v [B, H_kv, S, D] for all."""
        B, S, _ = x.shape
        queries = x[:, query_rows]
        # normed in float32, where the rotation runs: a bfloat16 model rounds q and k once, not twice
        query = self.to_q(queries).view(B, queries.shape[1], self.heads, self.head_dim)
        query = rms_norm(self.norm_q, query, dtype=torch.float32)
        key = rms_norm(self.norm_k, self.to_k(x).view(B, S, self.kv_heads, self.head_dim), dtype=torch.float32)
        value = self.to_v(x).view(B, S, self.kv_heads, self.head_dim)
        query = apply_rotation(query, rotation.select(query_rows), x.dtype)
        key = apply_rotation(key, rotation, x.dtype)
        return query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2)

    def forward(
        self, x: torch.Tensor, rotation: Rotation, mask: torch.Tensor | None, kv_hook=None, query_rows: slice = slice(None)
    ) -> torch.Tensor:
        """Attention output for the `query_rows` tokens (all by default), attending to every token and to what
        kv_hook(key, value, mask) -> (key, value, mask) returns (a `KVHook` bound to its layer's index)."""
        query, key, value = self.project(x, rotation, query_rows)
        if kv_hook is not None:
            key, value, mask = kv_hook(key, value, mask)
        out = attention(query, key, value, mask)  # (B, H, S, D)
        return self.to_out[0](out.transpose(1, 2).flatten(2))


class TransformerBlock(nn.Module):
    """Sandwich-normed attention and SwiGLU, each added back through a tanh gate when modulated by time."""

    def __init__(
        self, config: TransformerConfig, modulation: bool, operations: SimpleNamespace, dtype=None, device=None
    ) -> None:
        super().__init__()
        dim, eps = config.hidden_size, config.norm_eps
        self.modulation = modulation
        self.attn = Attention(config, operations, dtype, device)
        self.feed_forward = FeedForward(config, operations, dtype, device)
        self.norm1 = (
            Modulation(config, operations, dtype, device)
            if modulation
            else operations.RMSNorm(dim, eps=eps, dtype=dtype, device=device)
        )
        self.norm2 = operations.RMSNorm(dim, eps=eps, dtype=dtype, device=device)
        self.ffn_norm1 = operations.RMSNorm(dim, eps=eps, dtype=dtype, device=device)
        self.ffn_norm2 = operations.RMSNorm(dim, eps=eps, dtype=dtype, device=device)
        self.gradient_checkpointing = False

    def attention_input(self, x: torch.Tensor, mod: ModulationOut) -> torch.Tensor:
        """The modulated input of a modulated block's attention."""
        return rms_norm(self.norm1.norm, x, 1 + mod.scale_msa[:, None])

    def forward(
        self,
        x: torch.Tensor,
        rotation: Rotation,
        mask: torch.Tensor | None,
        temb: torch.Tensor | None = None,
        kv_hook=None,
        query_rows: slice = slice(None),
    ) -> torch.Tensor:
        """The block's output for the `query_rows` tokens (all by default; the last joint block needs only noise).

        With `gradient_checkpointing` and autograd on (training), activations are recomputed in the backward pass
        instead of kept; inference never takes that path.
        """
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return checkpoint(self._forward, x, rotation, mask, temb, kv_hook, query_rows, use_reentrant=False)
        return self._forward(x, rotation, mask, temb, kv_hook, query_rows)

    def _forward(self, x, rotation, mask, temb, kv_hook, query_rows) -> torch.Tensor:
        if not self.modulation:
            attn_out = self.attn(self.norm1(x), rotation, mask, query_rows=query_rows)
            x = add_rms_norm(x[:, query_rows], self.norm2, attn_out)
            return add_rms_norm(x, self.ffn_norm2, self.feed_forward(self.ffn_norm1(x)))
        mod = self.norm1(temb)
        attn_out = self.attn(self.attention_input(x, mod), rotation, mask, kv_hook, query_rows)
        x = add_rms_norm(x[:, query_rows], self.norm2, attn_out, mod.gate_msa[:, None].tanh())
        ffn_out = self.feed_forward(rms_norm(self.ffn_norm1, x, 1 + mod.scale_mlp[:, None]))
        return add_rms_norm(x, self.ffn_norm2, ffn_out, mod.gate_mlp[:, None].tanh())


class OutputNorm(nn.Module):
    """LayerNorm without affine, scaled by (1 + linear_1(silu(temb))), then projected to patch pixels."""

    def __init__(self, config: TransformerConfig, operations: SimpleNamespace, dtype=None, device=None) -> None:
        super().__init__()
        dim = config.hidden_size
        self.linear_1 = operations.Linear(config.time_embed_dim, dim, dtype=dtype, device=device)
        self.norm = operations.LayerNorm(dim, eps=1e-6, elementwise_affine=False, dtype=dtype, device=device)
        out_dim = config.patch_size * config.patch_size * config.output_channels
        self.linear_2 = operations.Linear(dim, out_dim, dtype=dtype, device=device)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        scale = self.linear_1(F.silu(temb).to(x.dtype))
        return self.linear_2(self.norm(x) * (1 + scale)[:, None, :])


def _token_index(index: torch.Tensor | None, latent: torch.Tensor, patch_size: int) -> tuple[int, ...] | None:
    """Validated row-major token indices (sorted, unique, in range) as a tuple, or None for all tokens."""
    if index is None:
        return None
    count = (latent.shape[1] // patch_size) * (latent.shape[2] // patch_size)
    values = sorted({int(k) for k in index})
    if not values or values[0] < 0 or values[-1] >= count:
        raise InvalidInputError(f"token indices must be a non-empty subset of 0..{count - 1}; got {len(values)} in range {values[:1]}..{values[-1:]}.")
    return tuple(values)


def _check_latent(latent: torch.Tensor, name: str, channels: int, patch_size: int) -> None:
    if latent.ndim != 3 or latent.shape[0] != channels:
        raise InvalidInputError(f"{name} must be a [{channels}, H, W] latent, got shape {tuple(latent.shape)}.")
    if latent.shape[1] % patch_size or latent.shape[2] % patch_size or min(latent.shape[1:]) == 0:
        raise InvalidInputError(
            f"{name} has spatial size {tuple(latent.shape[1:])}; both sides must be positive multiples of the patch "
            f"size {patch_size} (image sides multiples of {8 * patch_size} pixels)."
        )


class OmniGen2Transformer(nn.Module):
    """OmniGen2's diffusion transformer: refiners per modality, then joint blocks over [text | references | noise].

    `forward` takes the official argument names; RoPE is computed inside from each sample's layout.
    """

    def __init__(
        self, config: TransformerConfig, operations: SimpleNamespace | None = None, dtype=None, device=None
    ) -> None:
        super().__init__()
        ops = operations or default_operations
        self.config = config
        # 1. Positional, patch and conditional embeddings
        self.rope = OmniRoPE(config.axes_dim_rope)
        self.x_embedder = ops.Linear(config.patch_channels, config.hidden_size, dtype=dtype, device=device)
        self.ref_image_patch_embedder = ops.Linear(config.patch_channels, config.hidden_size, dtype=dtype, device=device)
        self.image_index_embedding = nn.Parameter(torch.empty(MAX_REFERENCE_IMAGES, config.hidden_size, dtype=dtype, device=device))
        self.time_caption_embed = TimeCaptionEmbedding(config, ops, dtype, device)
        # 2. Refiners: noise and references modulated by time, text not
        refiners = range(config.num_refiner_layers)
        self.noise_refiner = nn.ModuleList([TransformerBlock(config, True, ops, dtype, device) for _ in refiners])
        self.ref_image_refiner = nn.ModuleList([TransformerBlock(config, True, ops, dtype, device) for _ in refiners])
        self.context_refiner = nn.ModuleList([TransformerBlock(config, False, ops, dtype, device) for _ in refiners])
        # 3. Joint transformer blocks
        self.layers = nn.ModuleList([TransformerBlock(config, True, ops, dtype, device) for _ in range(config.num_layers)])
        # 4. Output norm and projection
        self.norm_out = OutputNorm(config, ops, dtype, device)

    def forward(
        self,
        hidden_states: torch.Tensor | Sequence[torch.Tensor],
        timestep: torch.Tensor,
        text_hidden_states: torch.Tensor,
        text_attention_mask: torch.Tensor,
        ref_image_hidden_states: Sequence[Sequence[torch.Tensor | ReferenceImage] | None] | None = None,
        reference_kv: KVHook | None = None,
        noise_token_index: torch.Tensor | None = None,
    ) -> torch.Tensor | list[torch.Tensor]:
        """Predict the velocity (data - noise) for each latent.

        hidden_states: [B, C, H, W] or a list of [C, H_i, W_i]; timestep [B] in [0, 1] (0 = noise);
        text_hidden_states [B, L, text_feat_dim] right-padded with text_attention_mask [B, L];
        ref_image_hidden_states: per sample a list of 0..5 reference latents [C, h, w] or `ReferenceImage`s
        (compact or pruned tokens), or None.
        reference_kv: the `KVHook` every joint layer's attention calls (see the module docstring); when it
        `supplies_references`, the reference tokens are not run at all (only their layout is read).
        noise_token_index: row-major indices of the only noise tokens to run, the same for every sample (token
        integration: a repainted region); the velocity elsewhere is returned as 0.
        Returns the same container type as hidden_states.
        """
        latents = list(hidden_states)
        layouts, references = self.plan(
            latents, text_hidden_states, text_attention_mask, ref_image_hidden_states, noise_token_index
        )
        temb = self.embed_time(timestep.to(latents[0].device).expand(len(latents)), latents[0].dtype)
        text = self.refine_text(text_hidden_states, text_attention_mask)
        noise = self.refine_noise(latents, [layout.noise for layout in layouts], temb)
        supplied = reference_kv is not None and reference_kv.supplies_references
        refs = None if supplied else self.refine_references(references, temb)
        outputs = self.joint(text, refs, noise, layouts, temb, reference_kv)
        return torch.stack(outputs) if isinstance(hidden_states, torch.Tensor) else outputs

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        """Recompute each block's activations in the backward pass (training memory for compute); no effect on
        inference, which runs without autograd."""
        for module in self.modules():
            if isinstance(module, TransformerBlock):
                module.gradient_checkpointing = enabled

    # The stages of `forward`, in order. A guidance runner calls them itself to compute once what its passes share:
    # the refined text depends on the text only, the refined noise and references on the step only (the refiners'
    # attention stays inside one image, where Omni-RoPE's sequence angle is common to every token and cancels, so
    # they rotate by row and column alone and do not depend on where the image sits in the joint sequence).

    def embed_time(self, timestep: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """timestep [B] in [0, 1] -> [B, time_embed_dim]."""
        return self.time_caption_embed.embed_time(timestep, dtype)

    def refine_text(self, text_hidden_states: torch.Tensor, text_attention_mask: torch.Tensor) -> torch.Tensor:
        """MLLM hidden states [B, L, text_feat_dim] (right-padded) -> refined text tokens [B, L, hidden]."""
        text = self.time_caption_embed.embed_caption(text_hidden_states)
        B, L, _ = text.shape
        padded = text_attention_mask.bool()
        mask = None if bool(padded.all()) else padded
        rotation = self.rope(text_positions(L, text.device)[None].expand(B, L, 3))
        for layer in self.context_refiner:
            text = layer(text, rotation, mask)
        return text

    def refine_noise(self, latents: Sequence[torch.Tensor], grids: Sequence[TokenGrid], temb: torch.Tensor) -> torch.Tensor:
        """Noisy latents [C, H_i, W_i] with their token grids -> refined noise tokens [B, max tokens, hidden]."""
        p, device = self.config.patch_size, latents[0].device
        tokens = [patchify(latent, p) for latent in latents]
        tokens = [t if grid.keep_index is None else t[list(grid.keep_index)] for t, grid in zip(tokens, grids)]
        x, mask = pad_sequences(tokens)
        x = self.x_embedder(x)
        rotation = self.rope(pad_sequences([grid.positions(0.0, device) for grid in grids])[0])
        for layer in self.noise_refiner:
            x = layer(x, rotation, mask, temb)
        return x

    def refine_references(
        self, references: Sequence[Sequence[tuple[torch.Tensor, TokenGrid]]], temb: torch.Tensor
    ) -> list[list[torch.Tensor]]:
        """Per sample its reference images (latent, grid) and temb [B, time_dim] -> per sample, per image its refined
        tokens [n_j, hidden]. Each image is refined on its own (images do not see each other), all in one batch."""
        owners = [i for i, refs in enumerate(references) for _ in refs]
        if not owners:
            return [[] for _ in references]
        x, _, _ = self.reference_batch(references, temb[owners])
        refined: list[list[torch.Tensor]] = [[] for _ in references]
        grids = [grid for refs in references for _, grid in refs]
        for row, (owner, grid) in enumerate(zip(owners, grids)):
            refined[owner].append(x[row, : grid.num_tokens])
        return refined

    def joint(
        self,
        text: torch.Tensor,
        references: Sequence[Sequence[torch.Tensor]] | None,
        noise: torch.Tensor,
        layouts: Sequence[SampleLayout],
        temb: torch.Tensor,
        reference_kv: KVHook | None = None,
    ) -> list[torch.Tensor]:
        """The joint blocks over [text | references | noise] and the output layers -> per sample its velocity
        [C, H, W]. references: per sample its refined reference tokens, or None when there are none or `reference_kv`
        supplies them."""
        x, noise_rows = self.joint_hidden(text, references, noise, layouts, temb, reference_kv)
        return self.velocity(x, noise_rows, layouts, temb)

    def joint_tokens(
        self, text: torch.Tensor, references: Sequence[Sequence[torch.Tensor]] | None, noise: torch.Tensor, layouts: Sequence[SampleLayout]
    ) -> list[torch.Tensor]:
        """Per sample its joint sequence [text | references | noise] of refined tokens [S_i, hidden], unpadded."""
        return [
            torch.cat([text[i, : layout.text_len], *([] if references is None else references[i]), noise[i, : layout.noise_len]])
            for i, layout in enumerate(layouts)
        ]

    def first_block_input(self, tokens: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        """The first joint block's modulated attention input for joint tokens [B, S, hidden] (TeaCache's measure)."""
        return self.layers[0].attention_input(tokens, self.layers[0].norm1(temb))

    def joint_hidden(
        self,
        text: torch.Tensor,
        references: Sequence[Sequence[torch.Tensor]] | None,
        noise: torch.Tensor,
        layouts: Sequence[SampleLayout],
        temb: torch.Tensor,
        reference_kv: KVHook | None = None,
    ) -> tuple[torch.Tensor, list[slice]]:
        """The joint blocks (see `joint`) -> the last block's output and, per sample, the rows of its noise tokens."""
        device = noise.device
        joint_tokens = self.joint_tokens(text, references, noise, layouts)
        joint_positions = [
            torch.cat([layout.text_positions(device), *([] if references is None else layout.reference_positions(device)), layout.noise_positions(device)])
            for layout in layouts
        ]
        x, mask = pad_sequences(joint_tokens)
        rotation = self.rope(pad_sequences(joint_positions)[0])
        noise_rows = [slice(len(tokens) - layout.noise_len, len(tokens)) for tokens, layout in zip(joint_tokens, layouts)]
        # Only noise tokens are read after the last block: when they sit at the same rows in every sample, the last
        # block computes those rows alone (exact; its queries, feed-forward and output norm shrink to the noise).
        last_rows = noise_rows[0] if all(rows == noise_rows[0] for rows in noise_rows) else slice(None)
        x = self.joint_blocks(x, rotation, mask, temb, reference_kv, last_rows)
        if last_rows != slice(None):
            noise_rows = [slice(0, layout.noise_len) for layout in layouts]
        return x, noise_rows

    def joint_blocks(
        self, x: torch.Tensor, rotation: Rotation, mask: torch.Tensor | None, temb: torch.Tensor,
        kv_hook: KVHook | None = None, last_rows: slice = slice(None),
    ) -> torch.Tensor:
        """The joint blocks on a padded batch x [B, S, hidden] -> the last block's output at its `last_rows` (the
        blocks before it compute every row); kv_hook sees every layer's keys and values."""
        for index, layer in enumerate(self.layers):
            hook = None if kv_hook is None else partial(kv_hook, index)
            rows = last_rows if index == len(self.layers) - 1 else slice(None)
            x = layer(x, rotation, mask, temb, hook, rows)
        return x

    def velocity(self, x: torch.Tensor, noise_rows: Sequence[slice], layouts: Sequence[SampleLayout], temb: torch.Tensor) -> list[torch.Tensor]:
        """The output layers on the last joint block's output x (noise tokens at `noise_rows`) -> per sample its
        velocity [C, H, W] (0 at noise tokens that did not run)."""
        x = self.norm_out(x, temb)
        p = self.config.patch_size
        outputs = []
        for i, (layout, rows) in enumerate(zip(layouts, noise_rows)):
            predicted, grid = x[i, rows], layout.noise
            if grid.keep_index is not None:
                full = predicted.new_zeros(grid.height * grid.width, predicted.shape[-1])
                full[list(grid.keep_index)] = predicted
                predicted = full
            outputs.append(unpatchify(predicted, (grid.height, grid.width), p))
        return outputs

    def plan(
        self,
        latents: Sequence[torch.Tensor],
        text_hidden_states: torch.Tensor,
        text_attention_mask: torch.Tensor,
        ref_image_hidden_states: Sequence[Sequence[torch.Tensor | ReferenceImage] | None] | None,
        noise_token_index: torch.Tensor | None,
    ) -> tuple[list[SampleLayout], list[list[tuple[torch.Tensor, TokenGrid]]]]:
        """Validate `forward`'s inputs; per sample its sequence layout and its references as (latent, grid)."""
        config, p = self.config, self.config.patch_size
        B = len(latents)
        if text_hidden_states.ndim != 3 or text_hidden_states.shape[0] != B or text_hidden_states.shape[2] != config.text_feat_dim:
            raise InvalidInputError(
                f"text_hidden_states must be [{B}, L, {config.text_feat_dim}], got {tuple(text_hidden_states.shape)}."
            )
        if text_attention_mask.shape != text_hidden_states.shape[:2]:
            raise InvalidInputError(
                f"text_attention_mask {tuple(text_attention_mask.shape)} does not match text_hidden_states "
                f"{tuple(text_hidden_states.shape[:2])}."
            )
        text_lens = text_attention_mask.sum(dim=1).tolist()
        positions = torch.arange(text_attention_mask.shape[1], device=text_attention_mask.device)
        if not torch.equal(text_attention_mask.bool(), positions[None, :] < text_attention_mask.sum(dim=1, keepdim=True)):
            raise InvalidInputError("text_attention_mask must be right-padded (ones, then zeros) in every row.")
        if ref_image_hidden_states is None:
            ref_image_hidden_states = [None] * B
        if len(ref_image_hidden_states) != B:
            raise InvalidInputError(f"ref_image_hidden_states has {len(ref_image_hidden_states)} entries for {B} samples.")
        layouts, references = [], []
        for i, (latent, refs) in enumerate(zip(latents, ref_image_hidden_states)):
            refs = list(refs or [])
            check_reference_count(len(refs), detail=f" for sample {i}")
            _check_latent(latent, f"hidden_states[{i}]", config.in_channels, p)
            refs = [self.reference_input(ref, f"ref_image_hidden_states[{i}][{j}]") for j, ref in enumerate(refs)]
            grids = tuple(grid for _, grid in refs)
            noise = TokenGrid(latent.shape[1] // p, latent.shape[2] // p, keep_index=_token_index(noise_token_index, latent, p))
            layouts.append(SampleLayout(int(text_lens[i]), grids, noise))
            references.append(refs)
        return layouts, references

    def reference_input(self, ref: torch.Tensor | ReferenceImage, name: str) -> tuple[torch.Tensor, TokenGrid]:
        """A reference latent, validated (`name` in messages), and its token grid; from a plain latent or a
        `ReferenceImage` (compact, pruned)."""
        channels, p = self.config.in_channels, self.config.patch_size
        latent = ref.latent if isinstance(ref, ReferenceImage) else ref
        _check_latent(latent, name, channels, p)
        grid = TokenGrid(latent.shape[1] // p, latent.shape[2] // p)
        if isinstance(ref, ReferenceImage):
            grid = TokenGrid(grid.height, grid.width, ref.position_scale, _token_index(ref.keep_index, latent, p))
        return latent, grid

    def reference_batch(
        self, references: Sequence[Sequence[tuple[torch.Tensor, TokenGrid]]], temb: torch.Tensor, slots: Sequence[int] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None, Rotation]:
        """Reference images (latent, grid) grouped per sample, the j-th in slot j of the image index embedding (or
        slots[j]), through the reference refiner as one padded batch (one row per image, seeing only itself; temb
        [images, time_dim]) -> the tokens, their key mask and row/column rotations (sequence id 0, see the stages)."""
        tokens, positions = [], []
        for j, (latent, grid) in ((j, image) for sample in references for j, image in enumerate(sample)):
            patches = patchify(latent, self.config.patch_size)
            if grid.keep_index is not None:
                patches = patches[list(grid.keep_index)]
            slot = j if slots is None else slots[j]
            embedded = self.ref_image_patch_embedder(patches)
            # cast where it is used: a host loading layer by layer (ComfyUI) never moves a parameter of the root module
            tokens.append(embedded + self.image_index_embedding[slot].to(embedded.device, embedded.dtype))
            positions.append(grid.positions(0.0, latent.device))
        x, mask = pad_sequences(tokens)
        rotation = self.rope(pad_sequences(positions)[0])
        for layer in self.ref_image_refiner:
            x = layer(x, rotation, mask, temb)
        return x, mask, rotation
