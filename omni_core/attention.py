"""Scaled dot-product attention with grouped-query heads and key masks: one function every block calls.

Mask rules live here only: a mask is boolean (True = may attend), either a key-padding mask [B, S_k] or a full
mask [B, S_q, S_k] (asymmetric conditioning); None means every query sees every key, which lets SDPA take its
fastest kernel, so callers pass None whenever nothing is padded.
"""

from __future__ import annotations

import torch

from .cpu_gemm import cpu_inference
from .cpu_kernels import blocked_attention_onednn, sdpa_attention
from .kernel_choice import KERNEL_DTYPES, current_kernels


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
        and cpu_inference(query, key, value, dtype=dtype)
        and current_kernels(dtype).attention == "onednn"
    )
