"""Compact (downscaled) and pruned reference tokens."""

import numpy as np
import pytest
import torch

from omni_core import InvalidInputError
from omni_core.compact import compact_size, least_informative_tokens
from omni_core.packing import patchify

IMAGE = np.random.default_rng(1).integers(0, 256, (64, 96, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def condition(tiny_model):
    return tiny_model.encode_condition("put it in the sky", images=[IMAGE])


def test_half_scale_cuts_reference_tokens_four_times(tiny_model, condition):
    compact = tiny_model.compact_condition(condition, condition_scale=0.5)
    full, small = condition.references[0], compact.references[0]
    assert small.latent.shape[1:] == (4, 6) and full.latent.shape[1:] == (8, 12)
    assert full.num_tokens == 4 * small.num_tokens and small.position_scale == 2.0
    assert compact.fingerprint != condition.fingerprint
    result = tiny_model.sample(compact, width=48, height=32, steps=2, cache_per_n_steps=10)
    assert result.stats["tokens_saved_by_compaction"] == full.num_tokens - small.num_tokens
    assert result.images.shape == (1, 3, 32, 48)


def test_compact_sizes_stay_on_the_token_grid():
    assert compact_size((64, 96), 0.5) == (32, 48)
    assert compact_size((48, 16), 0.25) == (16, 16)  # never below one token a side


def test_pruning_keeps_the_most_varied_tokens_in_order():
    latent = torch.zeros(16, 4, 4)
    latent[:, 0:2, 2:4] = torch.randn(16, 2, 2)  # token (0, 1) varies
    latent[:, 2:4, 0:2] = torch.randn(16, 2, 2) * 3  # token (1, 0) varies more
    keep = least_informative_tokens(latent, prune_ratio=0.5)
    assert keep.tolist() == [1, 2]
    assert len(least_informative_tokens(torch.randn(16, 8, 8), 0.25)) == 12


def test_pruned_reference_runs_with_its_original_positions(tiny_model, condition):
    pruned = tiny_model.compact_condition(condition, prune_ratio=0.25)
    ref = pruned.references[0]
    assert ref.num_tokens == 18 and ref.position_scale == 1.0
    tokens = patchify(ref.latent, 2)
    assert torch.equal(tokens[ref.keep_index].var(dim=1).min() >= tokens.var(dim=1).sort().values[6], torch.tensor(True))
    result = tiny_model.sample(pruned, width=48, height=32, steps=2)
    assert result.stats["reference_tokens"] == 18 and torch.isfinite(result.images).all()


@pytest.mark.parametrize("kwargs,message", [({"condition_scale": 0.0}, "condition_scale"), ({"prune_ratio": 1.0}, "prune_ratio")])
def test_bad_compaction_arguments(tiny_model, condition, kwargs, message):
    with pytest.raises(InvalidInputError, match=message):
        tiny_model.compact_condition(condition, **kwargs)
