"""Scaled dot-product attention with grouped-query heads and key masks: one function every block calls.

Mask rules live here only: a mask is boolean (True = may attend), either a key-padding mask [B, S_k] or a full
mask [B, S_q, S_k] (asymmetric conditioning); None means every query sees every key, which lets SDPA take its
fastest kernel, so callers pass None whenever nothing is padded.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .cpu_gemm import onednn_gemm_applies, onednn_linear
from .kernel_choice import KERNEL_DTYPES, current_kernels

SDPA_GQA = tuple(int(part) for part in torch.__version__.split(".")[:2]) >= (2, 5)  # SDPA's enable_gqa argument
ONEDNN_ROWS = 256  # query rows (all heads of a group) per score block: 256 x S_k floats stay near the L2 cache


def _check_shapes(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> None:
    if query.ndim != 4 or key.shape != value.shape or key.ndim != 4:
        raise ValueError(
            f"attention expects query [B, H, S_q, D] and key/value [B, H_kv, S_k, D]; got query {tuple(query.shape)}, "
            f"key {tuple(key.shape)}, value {tuple(value.shape)}"
        )
    B, H, _, D = query.shape
    if key.shape[0] != B or key.shape[3] != D or H % key.shape[1]:
        raise ValueError(
            f"key/value {tuple(key.shape)} do not fit query {tuple(query.shape)}: batch and head_dim must match and "
            "query heads must be a multiple of key/value heads"
        )


def normalize_mask(mask: torch.Tensor | None, batch: int, query_len: int, key_len: int) -> torch.Tensor | None:
    """Bring a boolean mask to SDPA's broadcastable [B, 1, S_q or 1, S_k] layout, checking its shape."""
    if mask is None:
        return None
    if mask.dtype != torch.bool:
        raise ValueError(f"attention masks must be boolean (True = attend), got {mask.dtype}")
    if mask.ndim == 2 and mask.shape == (batch, key_len):
        return mask[:, None, None, :]
    if mask.ndim == 3 and mask.shape == (batch, query_len, key_len):
        return mask[:, None, :, :]
    raise ValueError(
        f"attention mask of shape {tuple(mask.shape)} fits neither [B, S_k] = {(batch, key_len)} nor "
        f"[B, S_q, S_k] = {(batch, query_len, key_len)}"
    )


def attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """softmax(q k^T / sqrt(D)) v with query head i reading key/value head i // (H / H_kv).

    query [B, H, S_q, D], key/value [B, H_kv, S_k, D] -> [B, H, S_q, D].
    """
    _check_shapes(query, key, value)
    B, _, S_q, _ = query.shape
    mask = normalize_mask(mask, B, S_q, key.shape[2])
    if _blocked_is_faster(query, key, value, mask):
        return blocked_attention_onednn(query, key, value, mask)
    return sdpa_attention(query, key, value, mask)


def _blocked_is_faster(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None
) -> bool:
    """CPU inference in a dtype with a measured choice, a key mask at most, and blocks measured faster here."""
    dtype = query.dtype
    return (
        (mask is None or mask.shape[2] == 1)
        and dtype in KERNEL_DTYPES
        and onednn_gemm_applies(query, key, value, dtype=dtype)
        and current_kernels(dtype).attention == "onednn"
    )


def sdpa_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None
) -> torch.Tensor:
    """torch's SDPA over grouped heads; mask None or SDPA-broadcastable boolean.

    On the CPU the flash kernel reads shared key/value heads itself (`enable_gqa`, torch >= 2.5): no repeated copies.
    Elsewhere key/value heads are repeated to the query heads, as some GPU kernels fall back to the math path with
    `enable_gqa`."""
    groups = query.shape[1] // key.shape[1]
    if groups > 1 and query.device.type == "cpu" and SDPA_GQA:
        return F.scaled_dot_product_attention(query, key, value, attn_mask=mask, enable_gqa=True)
    if groups > 1:
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    return F.scaled_dot_product_attention(query, key, value, attn_mask=mask)


def blocked_attention_onednn(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None
) -> torch.Tensor:
    """The same attention with both products as oneDNN GEMMs, in blocks of query rows (float32 or bfloat16 CPU
    inference).

    Query heads that share a key/value head are stacked into one GEMM, so keys are never repeated; each block's
    scores [rows, S_k] are softmaxed in place and multiplied by the values at once. mask: None or [B, 1, 1, S_k].
    Scores and softmax are float32 in either dtype, as in torch's flash kernel: bfloat16 scores would double the
    error of sharp attention. Only the probabilities are rounded to bfloat16, for the product with the values.
    """
    B, H, S_q, D = query.shape
    H_kv = key.shape[1]
    groups = H // H_kv
    scaled = (query.float() * D**-0.5).view(B, H_kv, groups, S_q, D)
    out = query.new_empty(B, H_kv, groups, S_q, D)
    block = max(1, ONEDNN_ROWS // groups)
    for b in range(B):
        hidden = None if mask is None else ~mask[b, 0, 0]  # keys to drop
        for h in range(H_kv):
            k, v_t = key[b, h].float().contiguous(), value[b, h].t().contiguous()
            for start in range(0, S_q, block):
                q = scaled[b, h, :, start : start + block]
                n = q.shape[1]
                scores = onednn_linear(q.reshape(groups * n, D), k)
                if hidden is not None:
                    scores.masked_fill_(hidden, float("-inf"))
                probabilities = torch.softmax(scores, dim=-1).to(value.dtype)
                out[b, h, :, start : start + n] = onednn_linear(probabilities, v_t).view(groups, n, D)
    return out.view(B, H, S_q, D)
