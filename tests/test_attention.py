"""Attention against a naive reference (explicit softmax, as nanoGPT keeps beside SDPA), with GQA and masks."""

import math

import pytest
import torch

from omni_core.attention import attention


def manual_attention(q, k, v, mask=None):
    groups = q.shape[1] // k.shape[1]
    k = torch.stack([k[:, h // groups] for h in range(q.shape[1])], dim=1)
    v = torch.stack([v[:, h // groups] for h in range(q.shape[1])], dim=1)
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~(mask[:, None, None, :] if mask.ndim == 2 else mask[:, None]), float("-inf"))
    return scores.softmax(-1) @ v


@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (6, 2), (21, 7)])
def test_grouped_query_attention(heads, kv_heads):
    q, k, v = torch.randn(2, heads, 9, 8), torch.randn(2, kv_heads, 9, 8), torch.randn(2, kv_heads, 9, 8)
    assert (attention(q, k, v) - manual_attention(q, k, v)).abs().max() < 1e-5


def test_key_padding_and_full_masks():
    q, k, v = torch.randn(2, 4, 6, 8), torch.randn(2, 2, 7, 8), torch.randn(2, 2, 7, 8)
    padding = torch.tensor([[True] * 7, [True] * 4 + [False] * 3])
    assert (attention(q, k, v, padding) - manual_attention(q, k, v, padding)).abs().max() < 1e-5
    full = torch.rand(2, 6, 7) > 0.3
    full[..., 0] = True
    assert (attention(q, k, v, full) - manual_attention(q, k, v, full)).abs().max() < 1e-5


def test_bad_shapes_and_masks_are_named():
    q, k = torch.randn(1, 4, 3, 8), torch.randn(1, 3, 3, 8)
    with pytest.raises(ValueError, match="multiple of key/value heads"):
        attention(q, k, k)
    k = torch.randn(1, 2, 3, 8)
    with pytest.raises(ValueError, match=r"fits neither"):
        attention(q, k, k, torch.ones(1, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="boolean"):
        attention(q, k, k, torch.ones(1, 3))
