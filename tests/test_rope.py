"""Omni-RoPE: float-position rotations against the official integer-table form, and the position-id rules."""

import torch

from omni_core.layout import SampleLayout, TokenGrid
from omni_core.rope import OmniRoPE, apply_rotation, grid_positions, text_positions


def table_rotation(x: torch.Tensor, ids: torch.Tensor, axes_dim, theta=10000.0) -> torch.Tensor:
    """The official form: per-axis complex tables indexed by integer ids, complex multiply in float64."""
    parts = []
    for axis, d in enumerate(axes_dim):
        freqs = 1.0 / (theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
        table = torch.polar(torch.ones(512, d // 2, dtype=torch.float64), torch.outer(torch.arange(512, dtype=torch.float64), freqs))
        parts.append(table[ids[..., axis].long()])
    freqs_cis = torch.cat(parts, dim=-1)[:, :, None, :]  # (B, S, 1, D/2)
    x_complex = torch.view_as_complex(x.double().reshape(*x.shape[:-1], -1, 2))
    return torch.view_as_real(x_complex * freqs_cis).flatten(3).float()


def test_rotation_at_integer_ids_matches_complex_table():
    axes = (8, 4, 4)
    ids = torch.randint(0, 500, (2, 11, 3))
    x = torch.randn(2, 11, 3, sum(axes))
    ours = apply_rotation(x, OmniRoPE(axes)(ids.float()))
    assert (ours - table_rotation(x, ids, axes)).abs().max() < 1e-5


def test_rotation_preserves_pair_norms_and_is_identity_at_zero():
    rope = OmniRoPE((8, 8, 8))
    x = torch.randn(1, 5, 2, 24)
    assert torch.allclose(apply_rotation(x, rope(torch.zeros(1, 5, 3))), x)
    rotated = apply_rotation(x, rope(torch.rand(1, 5, 3) * 100))
    pair_norm = lambda t: t.unflatten(-1, (-1, 2)).norm(dim=-1)
    assert torch.allclose(pair_norm(rotated), pair_norm(x), atol=1e-5)


def test_text_and_grid_ids():
    assert text_positions(3).tolist() == [[0, 0, 0], [1, 1, 1], [2, 2, 2]]
    ids = grid_positions(2, 3, sequence_id=7)
    assert ids.tolist() == [[7, 0, 0], [7, 0, 1], [7, 0, 2], [7, 1, 0], [7, 1, 1], [7, 1, 2]]


def test_compact_ids_sit_at_block_centres():
    # a 2x2 grid standing for a 4x4 one: token (r, c) covers rows 2r..2r+1, centre 2r + 0.5
    ids = grid_positions(2, 2, sequence_id=0, position_scale=2.0)
    assert ids[:, 1].tolist() == [0.5, 0.5, 2.5, 2.5]
    assert ids[:, 2].tolist() == [0.5, 2.5, 0.5, 2.5]
    full = grid_positions(4, 4, 0)
    # each compact id is the mean of the full-size ids of the block it covers
    blocks = full[:, 1:].reshape(2, 2, 2, 2, 2).permute(0, 2, 1, 3, 4).reshape(4, 4, 2).mean(dim=1)
    assert torch.allclose(ids[:, 1:], blocks.double())


def test_sequence_ids_follow_the_official_shift_rule():
    layout = SampleLayout(text_len=5, references=(TokenGrid(3, 4), TokenGrid(6, 2)), noise=TokenGrid(2, 2))
    refs = layout.reference_positions()
    assert refs[0][:, 0].unique().tolist() == [5]
    assert refs[1][:, 0].unique().tolist() == [5 + 4]  # shift by the longer side of image 1
    assert layout.noise_positions()[:, 0].unique().tolist() == [5 + 4 + 6]
    assert layout.seq_len == 5 + 12 + 12 + 4
