"""Reference-feature reuse, the independent (asymmetric) condition, and the cache's lifetime and keys."""

import gc

import numpy as np
import pytest
import torch

from conftest import max_abs_diff
from masked_joint import masked_joint_forward
from omni_core import InvalidInputError
from omni_core.layout import SampleLayout, TokenGrid
from omni_core.reference_cache import KVReuse, KVStore, LayerKV, ReferenceFeatureCache, condition_branch, place_condition

RNG = np.random.default_rng(0)
IMAGES = [RNG.integers(0, 256, (48, 64, 3), dtype=np.uint8), RNG.integers(0, 256, (64, 32, 3), dtype=np.uint8)]
SAMPLE = dict(width=48, height=48, steps=6, text_guidance_scale=4.0, image_guidance_scale=2.0, seed=3, num_images=2)


@pytest.fixture(scope="module")
def condition(tiny_model):
    return tiny_model.encode_condition("the cat of image 1 under the tree of image 2", "blurry", IMAGES)


def test_refreshing_every_step_is_bit_identical_to_no_cache(tiny_model, condition):
    plain = tiny_model.sample(condition, **SAMPLE)
    cached = tiny_model.sample(condition, cache_per_n_steps=1, **SAMPLE)
    assert torch.equal(plain.images, cached.images)
    assert cached.stats["reference_tokens_reused"] == 0 and cached.stats["reference_tokens_computed"] > 0


def test_reuse_skips_reference_tokens_and_stays_close(tiny_model, condition):
    plain = tiny_model.sample(condition, **SAMPLE)
    reused = tiny_model.sample(condition, cache_per_n_steps=3, **SAMPLE)
    stats = reused.stats
    per_forward = condition.references[0].num_tokens + condition.references[1].num_tokens
    # steps 0 and 3 compute (cond and ref passes, 2 images each), the other 4 steps reuse
    assert stats["reference_tokens_computed"] == 2 * 2 * 2 * per_forward
    assert stats["reference_tokens_reused"] == 4 * 2 * 2 * per_forward
    assert not torch.equal(plain.images, reused.images)  # an approximation for a model trained without the mask
    assert max_abs_diff(plain.images, reused.images) < 0.5


def test_independent_condition_is_exact_to_compute_once(tiny_model, condition):
    every_step = tiny_model.sample(condition, independent_condition=True, **SAMPLE)
    once = tiny_model.sample(condition, independent_condition=True, cache_per_n_steps=1000, **SAMPLE)
    assert torch.equal(every_step.images, once.images)
    # one condition branch for the whole run, shared by the cond and ref passes although their prompts differ in length
    assert condition.positive.embeds.shape[1] != condition.negative.embeds.shape[1]
    assert once.stats["reference_tokens_computed"] == sum(r.num_tokens for r in condition.references)
    standard = tiny_model.sample(condition, **SAMPLE)
    assert not torch.equal(standard.images, once.images)  # the mask changes what references see


@torch.no_grad()
def test_independent_branch_equals_one_masked_joint_forward(tiny_model, condition):
    """The condition branch + text/noise pass equals a single forward over [text | refs | noise] in which
    reference rows attend only to their own image and reference tokens are modulated at the clean timestep.
    The masked reference is built from the model's own blocks, one joint sequence, explicit masks."""
    model = tiny_model.transformer
    refs = [r.latent for r in condition.references]
    text = condition.positive
    x = torch.randn(1, 16, 6, 6)
    t = torch.tensor([0.4])
    features = place_condition(model, condition_branch(model, refs), text.embeds.shape[1])
    ours = model(x, t, text.embeds, text.mask, [refs], reference_kv=KVReuse(features))
    assert max_abs_diff(ours[0], masked_joint_forward(model, x[0], t, text.embeds, text.mask, refs)) < 1e-4


def _live_layer_kvs() -> int:
    gc.collect()
    return sum(isinstance(o, LayerKV) for o in gc.get_objects())


def test_a_cancelled_run_leaves_no_cache_behind(tiny_model, condition):
    before = _live_layer_kvs()

    class Cancelled(Exception):
        pass

    def cancel_at_step_3(step, total, latents):
        if step == 3:
            raise Cancelled

    with pytest.raises(Cancelled):
        tiny_model.sample(condition, cache_per_n_steps=2, progress=cancel_at_step_3, **SAMPLE)
    assert _live_layer_kvs() == before


def test_two_conditions_in_one_session_never_share_features(tiny_model, condition):
    other = tiny_model.encode_condition("the cat of image 1 under the tree of image 2", "blurry", IMAGES[::-1])
    assert other.fingerprint != condition.fingerprint
    first = tiny_model.sample(condition, cache_per_n_steps=3, **SAMPLE)
    second = tiny_model.sample(other, cache_per_n_steps=3, **SAMPLE)
    again = tiny_model.sample(condition, cache_per_n_steps=3, **SAMPLE)
    alone = tiny_model.sample(other, cache_per_n_steps=3, **SAMPLE)
    assert torch.equal(first.images, again.images) and torch.equal(second.images, alone.images)
    assert not torch.equal(first.images, second.images)


def test_cache_metadata_change_drops_entries():
    cache = ReferenceFeatureCache(every_n_steps=4)
    cache.check_metadata("condition-a", torch.float32, "cpu")
    cache.store(("pass", "cond"), [LayerKV(torch.zeros(1), torch.zeros(1))], step=0)
    cache.check_metadata("condition-a", torch.float32, "cpu")
    assert cache.entries and not cache.refresh_due(1, [("pass", "cond")]) and cache.refresh_due(4, [("pass", "cond")])
    cache.check_metadata("condition-b", torch.float32, "cpu")
    assert not cache.entries and cache.refresh_due(1, [("pass", "cond")])


def test_a_store_records_one_reference_span_per_batch():
    grid = TokenGrid(2, 2)
    layouts = [SampleLayout(5, (grid, grid), grid), SampleLayout(6, (grid, grid), grid)]
    assert (KVStore(layouts[:1]).start, KVStore(layouts[:1]).end) == (5, 13)
    with pytest.raises(InvalidInputError, match="same text length and references"):
        KVStore(layouts)


def test_bad_cache_argument(tiny_model, condition):
    with pytest.raises(InvalidInputError, match="cache_per_n_steps"):
        tiny_model.sample(condition, cache_per_n_steps=0, **SAMPLE)
