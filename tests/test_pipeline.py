"""The whole pipeline (prompt and images in, image out) against the official pipeline's recorded outputs."""

import re

import numpy as np
import pytest
import torch

from conftest import max_abs_diff
from omni_core import InvalidInputError, OmniGen2Error
from omni_core.denoise import initial_noise
from omni_core.options import options_among

CASES = ["t2i", "edit", "in_context"]


def case_inputs(tensors, meta, case):
    spec = meta["cases"][case]
    images = [tensors[f"{case}.input_image.{j}"].numpy() for j in range(len(spec["input_image_sizes"]))]
    return spec, images


@pytest.mark.parametrize("case", CASES)
def test_pipeline_matches_official(tiny_model, pipeline_cases, case):
    tensors, meta = pipeline_cases
    spec, images = case_inputs(tensors, meta, case)
    condition = tiny_model.encode_condition(
        spec["prompt"], spec["negative_prompt"], images, spec["max_pixels"], spec["max_input_image_side_length"]
    )
    assert max_abs_diff(condition.positive.embeds, tensors[f"{case}.prompt_embeds"]) < 1e-4
    assert max_abs_diff(condition.negative.embeds, tensors[f"{case}.negative_prompt_embeds"]) < 1e-4
    result = tiny_model.sample(condition, options_among(spec))
    assert max_abs_diff(result.images, tensors[f"{case}.output"]) < 1e-4
    assert result.stats["steps"] == spec["steps"]


def test_generate_is_encode_then_sample(tiny_model):
    kwargs = dict(width=64, height=48, steps=3, seed=3)
    one_call = tiny_model.generate("a tree", **kwargs)
    two_calls = tiny_model.sample(tiny_model.encode_condition("a tree"), **kwargs)
    assert torch.equal(one_call.images, two_calls.images)
    assert one_call.images.shape == (1, 3, 48, 64) and 0 <= one_call.images.min() and one_call.images.max() <= 1


def test_batch_image_i_uses_seed_plus_i(tiny_model):
    condition = tiny_model.encode_condition("a house")
    batch = tiny_model.sample(condition, width=32, height=32, steps=2, seed=10, num_images=2)
    second = tiny_model.sample(condition, width=32, height=32, steps=2, seed=11)
    assert max_abs_diff(batch.images[1:], second.images) < 1e-5
    assert torch.equal(initial_noise(4, 2, 16, (2, 2))[1:], torch.randn([1, 16, 2, 2], generator=torch.Generator().manual_seed(5)))


def test_one_reference_sets_the_output_size_unless_a_size_is_given(tiny_model):
    image = np.full((40, 70, 3), 200, dtype=np.uint8)
    condition = tiny_model.encode_condition("make it blue", images=[image])
    assert tiny_model.sample(condition, steps=1).images.shape[-2:] == (32, 64)
    assert tiny_model.sample(condition, width=48, height=32, steps=1).images.shape[-2:] == (32, 48)


def test_a_known_edit_changes_the_image(tiny_model):
    image = np.zeros((64, 64, 3), dtype=np.uint8)
    image[16:48, 16:48] = (255, 0, 0)
    a = tiny_model.generate("make the square green", images=[image], steps=3, seed=1).images
    b = tiny_model.generate("make the square green", images=[255 - image], steps=3, seed=1).images
    assert (a - b).abs().mean() > 1e-3  # the reference image reaches the output


def test_progress_reports_every_step_and_can_cancel(tiny_model):
    condition = tiny_model.encode_condition("x")
    seen = []
    tiny_model.sample(condition, width=32, height=32, steps=4, progress=lambda i, n, x: seen.append((i, n, x.shape)))
    assert [s[:2] for s in seen] == [(1, 4), (2, 4), (3, 4), (4, 4)] and seen[0][2] == (1, 16, 4, 4)

    class Cancelled(Exception):
        pass

    def cancel(i, n, x):
        if i == 2:
            raise Cancelled

    with pytest.raises(Cancelled):
        tiny_model.sample(condition, width=32, height=32, steps=4, progress=cancel)


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda m: m.encode_condition("x", images=[np.zeros((32, 32, 3), np.uint8)] * 6), "at most 5"),
        (lambda m: m.encode_condition("x", images=[np.zeros((0, 32, 3), np.uint8)]), "empty"),
        (lambda m: m.encode_condition("x", images=[np.zeros((8, 8, 3), np.uint8)]), "too small"),
        (lambda m: m.encode_condition("x", images=[np.full((32, 32, 3), np.nan, np.float32)]), "NaN"),
        (lambda m: m.encode_condition("x", images=["not an image"]), "PIL image"),
        (lambda m: m.encode_condition("x", images=[np.zeros((32, 32, 7), np.uint8)]), r"\[H, W, 3\]"),
        (lambda m: m.generate("x", width=0, height=64, steps=1), "width must be a whole number >= 1"),
        (lambda m: m.generate("x", width=8, height=8, steps=1), "at least 16"),
        (lambda m: m.generate("x", width=64000, height=64, steps=1), "width=64000 is above 8192"),  # not 49 GB later
        (lambda m: m.generate("x", width=64, height=64, steps=1, max_pixels=0), "max_pixels must be"),
        (lambda m: m.generate("x", width=32, height=32, steps=1, cfg_range=(0.8, 0.2)), "cfg_range"),
        (lambda m: m.generate("x", width=32, height=32, steps=0), "steps"),
        (lambda m: m.generate(None), "prompt must be a string"),
    ],
)
def test_bad_inputs_raise_clear_errors(tiny_model, call, message):
    with pytest.raises(InvalidInputError, match=message):
        call(tiny_model)


def test_non_finite_results_are_reported(tiny_model):
    condition = tiny_model.encode_condition("x")
    positive = type(condition.positive)(condition.positive.embeds * float("nan"), condition.positive.mask)
    broken = type(condition)(positive=positive, negative=condition.negative)
    with pytest.raises(OmniGen2Error, match="the prompt's text features already held them") as error:
        tiny_model.sample(broken, width=32, height=32, steps=1)
    assert "float16" not in str(error.value)  # the condition was found broken, not the dtype blamed


@pytest.mark.parametrize("dtype,hint", [
    (torch.float16, "overflows float16"), (torch.bfloat16, "load the model in float32"),
    (torch.float32, "Lower the guidance scales."),
])
def test_non_finite_with_finite_inputs_names_the_dtype(tiny_model, dtype, hint):
    from omni_core.non_finite import explain_non_finite

    message = explain_non_finite(tiny_model.transformer, tiny_model.encode_condition("x"), dtype)
    assert f"computing in {dtype}" in message and hint in message
    assert bool(re.search(r"(?<!b)float16", message)) == (dtype == torch.float16)
