"""Schedule, guidance and the Euler loop against the official denoising loop recorded with its decode."""

import pytest
import torch

from conftest import max_abs_diff
from omni_core.condition import Condition, ReferenceImage, TextCondition
from omni_core.guidance import COND, REF, UNCOND, GuidedVelocity, active_scales, combine_guidance, planned_passes
from omni_core.reference_passes import TransformerPasses
from omni_core.sampler import sample_euler
from omni_core.schedule import flow_timesteps
from omni_core.vae import decode_latents


def test_dynamic_shift_schedule_matches_official(reference_cases):
    tensors, meta = reference_cases
    latent = tensors["loop.initial_latents"]
    t = flow_timesteps(meta["loop"]["steps"], latent.shape[-2] * latent.shape[-1])
    assert torch.equal(t[:-1], tensors["loop.timesteps"]) and t[-1] == 1.0
    assert torch.equal(flow_timesteps(4, 1600), torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0]))  # m = 1: no shift


def test_steps_must_be_positive():
    with pytest.raises(ValueError, match="steps"):
        flow_timesteps(0)


def test_guidance_plan_and_range():
    assert planned_passes(5.0, 2.0) == (COND, REF, UNCOND)
    assert planned_passes(5.0, 1.0) == (COND, UNCOND)
    assert planned_passes(1.0, 2.0) == (COND,)
    assert active_scales(3, 8, 5.0, 2.0, (0.0, 0.6)) == (5.0, 2.0)  # 3/8 inside
    assert active_scales(5, 8, 5.0, 2.0, (0.0, 0.6)) == (1.0, 1.0)  # 5/8 outside


def test_combination_is_the_official_formula():
    c, r, u = torch.randn(3, 4).unbind()
    assert torch.equal(combine_guidance({COND: c, REF: r, UNCOND: u}, 5.0, 2.0), u + 2.0 * (r - u) + 5.0 * (c - r))
    assert torch.equal(combine_guidance({COND: c, UNCOND: u}, 5.0, 1.0), u + 5.0 * (c - u))


@torch.no_grad()
def test_denoising_loop_and_decode_match_official(tiny_model, reference_cases):
    """Our pass runner (refiners shared between passes and steps) through the official loop, decoded."""
    tensors, meta = reference_cases
    loop = meta["loop"]
    refs = tuple(ReferenceImage(tensors[f"loop.ref_latents.{j}"], (0, 0)) for j in range(2))
    positive = TextCondition(tensors["loop.prompt_embeds"], tensors["loop.prompt_attention_mask"])
    negative = TextCondition(tensors["loop.negative_prompt_embeds"], tensors["loop.negative_prompt_attention_mask"])
    condition = Condition(positive, negative, refs)
    velocity = GuidedVelocity(
        TransformerPasses(tiny_model.transformer, condition, cache=None, independent_condition=False),
        positive,
        negative,
        has_references=True,
        steps=loop["steps"],
        text_scale=loop["text_guidance_scale"],
        image_scale=loop["image_guidance_scale"],
        cfg_range=tuple(loop["cfg_range"]),
    )
    x = tensors["loop.initial_latents"]
    seen = []
    latents = sample_euler(velocity, x, flow_timesteps(loop["steps"], x.shape[-2] * x.shape[-1]), callback=lambda d: seen.append(d["i"]))
    assert seen == list(range(loop["steps"]))
    assert max_abs_diff(decode_latents(tiny_model.vae, latents), tensors["loop.decoded_image"]) < 1e-4


@torch.no_grad()
def test_passes_share_refiners_and_batch_equal_lengths(tiny_model):
    """cond and uncond with equal text lengths run the joint layers as one batch, the noise refiner runs once for
    both, the context refiner once per prompt per run; the result equals separate plain forwards."""
    transformer = tiny_model.transformer
    batches = {"joint": [], "noise": [], "context": []}
    hooks = [
        transformer.layers[0].register_forward_hook(lambda m, a, o: batches["joint"].append(a[0].shape[0])),
        transformer.noise_refiner[0].register_forward_hook(lambda m, a, o: batches["noise"].append(a[0].shape[0])),
        transformer.context_refiner[0].register_forward_hook(lambda m, a, o: batches["context"].append(a[0].shape[0])),
    ]
    positive = TextCondition(torch.randn(1, 5, 32), torch.ones(1, 5, dtype=torch.long))
    negative = TextCondition(torch.randn(1, 5, 32), torch.ones(1, 5, dtype=torch.long))
    runner = TransformerPasses(transformer, Condition(positive, negative), cache=None, independent_condition=False)
    velocity = GuidedVelocity(runner, positive, negative, False, 10, 4.0, 1.0, (0.0, 1.0))
    x, t = torch.randn(2, 16, 8, 8), torch.tensor(0.3)
    try:
        first, second = velocity(x, t, 0), velocity(x, t, 1)
    finally:
        for hook in hooks:
            hook.remove()
    assert batches == {"joint": [4, 4], "noise": [2, 2], "context": [1, 1]}
    assert torch.equal(first, second)
    cond = transformer(x, t.expand(2), positive.embeds.expand(2, -1, -1), positive.mask.expand(2, -1))
    uncond = transformer(x, t.expand(2), negative.embeds.expand(2, -1, -1), negative.mask.expand(2, -1))
    assert max_abs_diff(first, uncond + 4.0 * (cond - uncond)) < 1e-5
