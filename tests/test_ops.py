"""Our default layers equal torch's to round-off (same state dict), and step aside where their fast path does not apply."""

import torch

from omni_core.ops import RMSNorm


def test_rms_norm_matches_torch_and_falls_back_under_autograd():
    norm = RMSNorm(120, eps=1e-5)
    with torch.no_grad():
        norm.weight.normal_()
    plain = torch.nn.RMSNorm(120, eps=1e-5)
    plain.load_state_dict(norm.state_dict())
    x = torch.randn(2, 37, 6, 120) * 3
    with torch.no_grad():
        assert (norm(x) - plain(x)).abs().max() < 1e-5
        half = x.bfloat16()
        assert torch.equal(norm(half), plain(half))  # not the float32 CPU path: torch's own
    x.requires_grad_(True)
    norm(x).sum().backward()
    assert x.grad is not None
