"""The oneDNN CPU paths equal torch's own kernels to round-off, and step aside where they do not apply or cannot run
(here, or under tests/test_avx2.py's AVX2-only oneDNN)."""

import pytest
import torch
import torch.nn.functional as F

from omni_core import cpu_gemm, kernel_choice
from omni_core.attention import normalize_mask
from omni_core.cpu_kernels import blocked_attention_onednn
from omni_core.ops import Linear


@torch.no_grad()
def test_linear_matches_f_linear():
    x, weight, bias = torch.randn(3, 37, 64), torch.randn(48, 64), torch.randn(48)
    assert (cpu_gemm.linear(x, weight, bias) - F.linear(x, weight, bias)).abs().max() < 1e-4
    transposed = torch.randn(64, 48).t()  # a non-contiguous weight
    assert (cpu_gemm.linear(x, transposed) - F.linear(x, transposed)).abs().max() < 1e-4


@torch.no_grad()
def test_fused_silu_matches_silu_of_linear():
    x, weight, bias = torch.randn(2, 37, 64), torch.randn(48, 64), torch.randn(48)
    assert (cpu_gemm.linear_silu(x, weight, bias) - F.silu(F.linear(x, weight, bias))).abs().max() < 1e-5
    layer = Linear(64, 48, bias=False)
    assert (layer.forward_silu(x) - F.silu(F.linear(x, layer.weight))).abs().max() < 1e-5
    half, half_weight = x.bfloat16(), weight.bfloat16()
    exact = F.silu(F.linear(half.float(), half_weight.float()))
    unfused = F.silu(F.linear(half, half_weight)).float()
    fused = cpu_gemm.linear_silu(half, half_weight)
    assert fused.dtype == torch.bfloat16
    roundings = 1
    if kernel_choice.current_kernels(torch.bfloat16).fused:
        # bfloat16 fused on oneDNN rounds once (after the activation), not twice: no further from exact than unfused
        assert (fused.float() - exact).abs().max() <= (unfused - exact).abs().max()
    else:  # no oneDNN bfloat16 here: torch's own kernels, unfused, rounding the product and then the activation
        assert torch.equal(fused.float(), unfused)
        roundings = 2
    assert ((fused.float() - exact).abs() <= roundings * 2**-8 * exact.abs() + 1e-2).all()


def test_falls_back_under_autograd_and_other_dtypes():
    layer = Linear(8, 4)
    x = torch.randn(2, 8, requires_grad=True)
    layer(x).sum().backward()  # autograd works: the oneDNN op is only used without grad
    assert x.grad is not None
    assert not cpu_gemm.cpu_inference(torch.randn(2, dtype=torch.bfloat16))
    with torch.no_grad():
        out = layer.to(torch.bfloat16)(torch.randn(2, 8, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16


@pytest.mark.skipif(not kernel_choice.onednn_available(), reason="no oneDNN GEMM runs here")
@torch.no_grad()
def test_blocked_attention_matches_sdpa_with_padding():
    q, k, v = torch.randn(2, 6, 300, 24), torch.randn(2, 2, 310, 24), torch.randn(2, 2, 310, 24)
    mask = torch.ones(2, 310, dtype=torch.bool)
    mask[1, 200:] = False
    reference = F.scaled_dot_product_attention(
        q, k.repeat_interleave(3, dim=1), v.repeat_interleave(3, dim=1), attn_mask=mask[:, None, None, :]
    )
    assert cpu_gemm.cpu_inference(q, k, v)
    blocked = blocked_attention_onednn(q, k, v, normalize_mask(mask, 2, 300, 310))
    assert (blocked - reference).abs().max() < 1e-5
