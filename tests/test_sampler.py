"""Schedule, guidance and the Euler loop against the official denoising loop recorded with its decode."""

import pytest
import torch

from conftest import max_abs_diff
from omni_core.condition import TextCondition
from omni_core.guidance import COND, REF, UNCOND, GuidedVelocity, active_scales, combine_guidance, planned_passes
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
    tensors, meta = reference_cases
    loop = meta["loop"]
    refs = [tensors["loop.ref_latents.0"], tensors["loop.ref_latents.1"]]
    transformer = tiny_model.transformer

    def run(latents, t, embeds, mask, with_refs, *_):
        return transformer(latents, t.expand(len(latents)), embeds, mask, [refs] * len(latents) if with_refs else None)

    velocity = GuidedVelocity(
        run,
        TextCondition(tensors["loop.prompt_embeds"], tensors["loop.prompt_attention_mask"]),
        TextCondition(tensors["loop.negative_prompt_embeds"], tensors["loop.negative_prompt_attention_mask"]),
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
def test_equal_length_passes_run_as_one_batch(tiny_model):
    """cond and uncond with equal text lengths share a forward; the result equals separate passes."""
    transformer, calls = tiny_model.transformer, []

    def run(latents, t, embeds, mask, with_refs, *_):
        calls.append(len(latents))
        return transformer(latents, t.expand(len(latents)), embeds, mask, None)

    positive = TextCondition(torch.randn(1, 5, 32), torch.ones(1, 5, dtype=torch.long))
    negative = TextCondition(torch.randn(1, 5, 32), torch.ones(1, 5, dtype=torch.long))
    x, t = torch.randn(2, 16, 8, 8), torch.tensor(0.3)
    batched = GuidedVelocity(run, positive, negative, False, 10, 4.0, 1.0, (0.0, 1.0))(x, t, 0)
    assert calls == [4]
    cond = run(x, t, positive.embeds.expand(2, -1, -1), positive.mask.expand(2, -1), False, (), 0)
    uncond = run(x, t, negative.embeds.expand(2, -1, -1), negative.mask.expand(2, -1), False, (), 0)
    assert max_abs_diff(batched, uncond + 4.0 * (cond - uncond)) < 1e-5
