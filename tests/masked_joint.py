"""A naive reference of OminiControl2's independent condition: one joint sequence [text | refs | noise] through the
model's own blocks, reference tokens modulated at the clean timestep and an explicit asymmetric mask (reference rows
attend only to their own image). Tests compare the engine's condition branch (inference and training) against it."""

from __future__ import annotations

import torch

from omni_core.condition import ReferenceImage
from omni_core.layout import SampleLayout, TokenGrid
from omni_core.packing import unpatchify


def masked_joint_forward(model, x: torch.Tensor, t: torch.Tensor, text_embeds: torch.Tensor, text_mask: torch.Tensor,
                         refs: list, condition_timestep: float = 1.0) -> torch.Tensor:
    """Velocity [C, H, W] of one sample x [C, H, W] at t [1]; text [1, L, D] unpadded; refs latents or ReferenceImages."""
    latents = [r.latent if isinstance(r, ReferenceImage) else r for r in refs]
    scales = [r.position_scale if isinstance(r, ReferenceImage) else 1.0 for r in refs]
    L = text_embeds.shape[1]
    grids = tuple(TokenGrid(r.shape[1] // 2, r.shape[2] // 2, s) for r, s in zip(latents, scales))
    noise_grid = TokenGrid(x.shape[1] // 2, x.shape[2] // 2)
    layout = SampleLayout(L, grids, noise_grid)
    temb = model.embed_time(t, x.dtype)
    temb_clean = model.embed_time(torch.full((1,), condition_timestep), x.dtype)
    txt = model.refine_text(text_embeds, text_mask)[0]
    noise = model.refine_noise([x], [layout.noise], temb)[0]
    ref_tokens = model.refine_references([list(zip(latents, grids))], temb_clean)[0]
    seq = torch.cat([txt, *ref_tokens, noise])[None]
    positions = torch.cat([layout.text_positions(), *layout.reference_positions(), layout.noise_positions()])[None]
    rotation = model.rope(positions)
    S, owner = seq.shape[1], torch.full((seq.shape[1],), -1)
    start = L
    for j, g in enumerate(grids):
        owner[start : start + g.num_tokens] = j
        start += g.num_tokens
    is_ref = owner >= 0
    mask = torch.ones(1, S, S, dtype=torch.bool)
    mask[0, is_ref] = owner[is_ref][:, None] == owner[None, :]
    for block in model.layers:
        mod_t, mod_c = block.norm1(temb), block.norm1(temb_clean)
        pick = lambda a, b: torch.where(is_ref[None, :, None], b[:, None], a[:, None])
        scale_msa, gate_msa = pick(mod_t.scale_msa, mod_c.scale_msa), pick(mod_t.gate_msa, mod_c.gate_msa)
        scale_mlp, gate_mlp = pick(mod_t.scale_mlp, mod_c.scale_mlp), pick(mod_t.gate_mlp, mod_c.gate_mlp)
        attn = block.attn(block.norm1.norm(seq) * (1 + scale_msa), rotation, mask)
        seq = seq + gate_msa.tanh() * block.norm2(attn)
        seq = seq + gate_mlp.tanh() * block.ffn_norm2(block.feed_forward(block.ffn_norm1(seq) * (1 + scale_mlp)))
    out = model.norm_out(seq, temb)[0, -noise_grid.num_tokens :]
    return unpatchify(out, (noise_grid.height, noise_grid.width), 2)
