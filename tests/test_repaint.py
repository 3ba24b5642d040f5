"""Token integration for repainting: only masked tokens are noise, the rest of the canvas is kept exactly."""

import numpy as np
import pytest
import torch

from omni_core import InvalidInputError
from omni_core.repaint import stitch_latents, token_mask

CANVAS = np.random.default_rng(2).integers(0, 256, (48, 64, 3), dtype=np.uint8)


def square_mask():
    mask = np.zeros((48, 64), np.float32)
    mask[16:32, 16:48] = 1.0
    return mask


def test_token_mask_marks_covered_tokens():
    tokens = token_mask(torch.from_numpy(square_mask()), (48, 64))
    assert tokens.shape == (3, 4) and tokens.sum() == 2 and tokens[1, 1:3].all()


def test_stitch_latents_keeps_known_tokens():
    known, generated = torch.zeros(16, 4, 4), torch.ones(2, 16, 4, 4)
    tokens = torch.tensor([[True, False], [False, False]])
    out = stitch_latents(known, generated, tokens)
    assert out[:, :, :2, :2].eq(1).all() and out[:, :, 2:, :].eq(0).all() and out[:, :, :, 2:].eq(0).all()


def test_repaint_runs_only_masked_tokens_and_keeps_the_rest(tiny_model):
    condition = tiny_model.encode_condition("a blue square")
    result = tiny_model.repaint(condition, CANVAS, square_mask(), steps=3, seed=2, cache_per_n_steps=2)
    images = result.images
    assert images.shape == (1, 3, 48, 64)
    original = torch.from_numpy(CANVAS).permute(2, 0, 1).float() / 255
    outside = torch.from_numpy(square_mask()) == 0
    assert torch.equal(images[0][:, outside], original[:, outside])  # untouched outside the mask
    assert (images[0][:, ~outside] - original[:, ~outside]).abs().mean() > 1e-3  # repainted inside
    stats = result.stats
    assert stats["noise_tokens"] == 2 and stats["canvas_tokens"] == 12 and stats["reference_tokens"] == 10


def test_sparse_noise_tokens_get_velocity_only_where_selected(tiny_model):
    """With noise_token_index the transformer runs only those noise tokens and returns 0 velocity elsewhere."""
    transformer = tiny_model.transformer
    x, text = torch.randn(1, 16, 6, 8), torch.randn(1, 5, 32)
    index = torch.tensor([1, 2, 9])
    sparse = transformer(x, torch.tensor([0.5]), text, torch.ones(1, 5, dtype=torch.long), noise_token_index=index)
    assert sparse.shape == x.shape
    from omni_core.packing import patchify

    rows = patchify(sparse[0], 2)
    assert rows[[0, 3, 4, 5, 6, 7, 8, 10, 11]].eq(0).all() and rows[index].abs().sum() > 0


@pytest.mark.parametrize(
    "mask,message",
    [(np.zeros((48, 64), np.float32), "selects no region"), (np.ones((10, 10), np.float32), "same size")],
)
def test_bad_masks(tiny_model, mask, message):
    with pytest.raises(InvalidInputError, match=message):
        tiny_model.repaint(tiny_model.encode_condition("x"), CANVAS, mask, steps=1)


def test_canvas_counts_as_one_of_five_references(tiny_model):
    condition = tiny_model.encode_condition("x", images=[CANVAS] * 5)
    with pytest.raises(InvalidInputError, match="at most 4 besides the canvas"):
        tiny_model.repaint(condition, CANVAS, square_mask(), steps=1)


def test_repaint_with_the_independent_condition_computes_the_canvas_once_exactly(tiny_model):
    """The known canvas is a pruned reference: under the asymmetric mask its features are computed once per run and
    the result equals recomputing them every step, bit for bit."""
    condition = tiny_model.encode_condition("a blue square")
    run = lambda n: tiny_model.repaint(condition, CANVAS, square_mask(), steps=3, seed=2, cache_per_n_steps=n,
                                       independent_condition=True)
    every_step, once = run(None), run(100)
    assert torch.equal(every_step.images, once.images)
    assert once.stats["reference_tokens_computed"] == 10 and every_step.stats["reference_tokens_computed"] > 10
