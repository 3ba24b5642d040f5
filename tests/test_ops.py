"""Our default layers equal torch's to round-off (same state dict), and step aside where their fast path does not apply."""

import torch

import pytest

from omni_core.ops import RMSNorm, add_rms_norm, rms_norm

BF16_PASSES = 4  # bfloat16 roundings in our bfloat16 norm: statistic, inverse rms, x * inverse, * weight


def test_rms_norm_matches_torch_and_falls_back_under_autograd():
    norm = RMSNorm(120, eps=1e-5)
    with torch.no_grad():
        norm.weight.normal_()
    plain = torch.nn.RMSNorm(120, eps=1e-5)
    plain.load_state_dict(norm.state_dict())
    x = torch.randn(2, 37, 6, 120) * 3
    with torch.no_grad():
        assert (norm(x) - plain(x)).abs().max() < 1e-5
        half, half_norm = x.bfloat16(), RMSNorm(120, eps=1e-5, dtype=torch.bfloat16)
        half_norm.load_state_dict(norm.state_dict())
        plain.load_state_dict(half_norm.state_dict())  # the rounded weights, in float32
        exact = plain(half.float())
        # bfloat16: sums of squares in float32, then bfloat16 passes (statistic, its inverse, the product and the
        # weight each rounded once): within 4 unit round-offs of exact (measured up to 3.7)
        assert half_norm(half).dtype == torch.bfloat16
        assert ((half_norm(half).float() - exact).abs() <= BF16_PASSES * 2**-8 * exact.abs() + 1e-6).all()
    x.requires_grad_(True)
    norm(x).sum().backward()
    assert x.grad is not None


def _norm_pair(width: int) -> tuple[RMSNorm, torch.nn.RMSNorm]:
    ours = RMSNorm(width, eps=1e-6)
    with torch.no_grad():
        ours.weight.normal_()
    plain = torch.nn.RMSNorm(width, eps=1e-6)
    plain.load_state_dict(ours.state_dict())
    return ours, plain


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@torch.no_grad()
def test_scaled_norm_and_gated_residual_equal_their_composition(dtype):
    """A modulated block's norm * scale and x + gate * norm(y) (scale and gate folded into the norm's weight) against
    the plain composition of torch's RMSNorm in float32; a host's norm takes the composition itself."""
    ours, plain = _norm_pair(64)
    ours, low = ours.to(dtype), (lambda t: t.to(dtype))  # noqa: E731
    plain.load_state_dict(ours.state_dict())  # compared on the weights and inputs as rounded to `dtype`
    x, y = low(torch.randn(2, 37, 64) * 3), low(torch.randn(2, 37, 64))
    scale, gate = low(1 + torch.randn(2, 1, 64)), low(torch.randn(2, 1, 64).tanh())
    exact_scaled = plain(x.float()) * scale.float()
    exact_term = gate.float() * plain(y.float())
    exact_residual = x.float() + exact_term
    # float32: round-off of the result; bfloat16: the norm's passes on the gated term, one rounding of the sum
    step = 1e-6 if dtype == torch.float32 else BF16_PASSES * 2**-8
    sum_step, term_step = (1e-6, 0.0) if dtype == torch.float32 else (2**-8, step)
    scaled = rms_norm(ours, x, scale)
    residual = add_rms_norm(x, ours, y, gate)
    assert scaled.dtype == residual.dtype == dtype
    assert ((scaled.float() - exact_scaled).abs() <= step * exact_scaled.abs() + 1e-5).all()
    residual_bound = sum_step * exact_residual.abs() + term_step * exact_term.abs() + 1e-5
    assert ((residual.float() - exact_residual).abs() <= residual_bound).all()
    unrounded = rms_norm(ours, x, scale, dtype=torch.float32)  # for the rotation: float32 from x as given
    assert unrounded.dtype == torch.float32
    assert ((unrounded - exact_scaled).abs() <= 1e-6 * exact_scaled.abs() + 1e-5).all()
    host = plain.to(dtype)
    assert torch.equal(rms_norm(host, x, scale), host(x) * scale)
    assert torch.equal(add_rms_norm(x, host, y, gate), x + gate * host(y))
