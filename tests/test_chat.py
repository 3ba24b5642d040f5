"""The dual-path chat (`OmniGen2.chat`, the OmniGen2 Chat node) on the tiny fixture model, against the official chat
pipeline's recordings (chat_cases): what the MLLM answers, when it draws, what it draws from, and the errors.

The tiny MLLM has random weights, so what it answers is whatever greedy decoding gives: it never writes an end of
turn, and it asks to draw (`<|img|>` first) only for prompts searched for that purpose (DRAWING_PROMPT).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from conftest import FIXTURES
import omni_core
from omni_core.chat import take_turn
from omni_core.errors import InvalidInputError
from omni_core.options import SamplingOptions
from omni_core.text_encoder import IMAGE_PAD, IMAGE_REQUEST, TextEncoder, chat_template

COMFY_TOKENIZER = Path("/work/shared/comfyui/comfy/text_encoders/qwen25_tokenizer")
# The tiny MLLM's greedy answer to this conversation (no images) starts with <|img|>, by a logit margin of 0.065: a
# prompt found by a greedy token search (gradient-ranked token swaps, then swaps on the re-tokenized string) for the
# largest <|img|> margin. It is an input, not an expected output; test_the_drawing_prompt_asks_to_draw checks it.
DRAWING_PROMPT = (
    'tomstructionmagetommageatestructionog$mage t. bottom assistant.og leftAinstructions bstructiontom.to'
    'm squarek high highogatelack lefthiteinstructionsquainstructionsqatehite highmageis. pinstructions h'
    'ighq pis.. watercolor b.(you$(Wate bintoriangle p bmageategleq b binstructions7ateatequaquamage b ti'
    'nstructionsofgle bquauateu\\$ bmage6ate pate'
)
SMALL = dict(width=64, height=48, steps=2, max_pixels=64 * 64, max_input_image_side_length=64)


@pytest.fixture(scope="module")
def model():
    return omni_core.load_model(FIXTURES)


@pytest.fixture(scope="module")
def chat_cases():
    tensors = load_file(str(FIXTURES / "chat_cases.safetensors"))
    images = [Image.fromarray(tensors[f"chat.input_image.{i}"].numpy()) for i in range(2)]
    return json.loads((FIXTURES / "chat_cases.json").read_text())["cases"], tensors, images


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] in [0, 1] -> the pipeline's 8-bit [B, H, W, 3]."""
    return (images * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)


def pictures(count: int) -> list[Image.Image]:
    rng = np.random.default_rng(count)
    return [Image.fromarray(rng.integers(0, 256, (40 + 8 * i, 56, 3), dtype=np.uint8)) for i in range(count)]


def generate_settings(case: dict) -> dict:
    names = ("width", "height", "steps", "text_guidance_scale", "image_guidance_scale", "cfg_range", "max_pixels",
             "max_input_image_side_length", "seed", "align_res")
    return {name: case[name] for name in names}


# --- parity with the official chat pipeline ------------------------------------------------------------------------


def test_drawing_matches_the_official_chat_pipeline(model, chat_cases):
    """The recorded turn drew from the template alone (its answer was <|img|>): respond="image" is that turn."""
    cases, reference, images = chat_cases
    case = cases["generate"]
    result = model.chat(case["prompt"], images, case["negative_prompt"], respond="image", max_new_tokens=2,
                        **generate_settings(case))
    expected = reference["generate.output_uint8"]
    assert result.images.shape == (1, 3, case["height"], case["width"])
    assert (to_uint8(result.images).int() - expected.int()).abs().max().item() <= 1
    assert result.stats["drew"] and result.stats["steps"] == case["steps"] and result.stats["reference_images"] == 2


def test_drawing_condition_is_the_conversation_without_image_pads(model, chat_cases):
    cases, reference, images = chat_cases
    case = cases["generate"]
    limits = SamplingOptions(max_pixels=case["max_pixels"], max_input_image_side_length=case["max_input_image_side_length"])
    turn = take_turn(model, case["prompt"], images, respond="image", max_new_tokens=0, options=limits)
    assert turn.reply.text == "" and len(turn.reply.token_ids) == 0  # drawn without asking for an answer
    assert torch.equal(turn.condition.positive.mask, reference["generate.prompt_attention_mask"])
    assert (turn.condition.positive.embeds - reference["generate.prompt_embeds"]).abs().max().item() < 1e-4
    # the negative prompt is text only, in the chat template (assistant header included)
    tokenizer = model.text_encoder.tokenizer
    assert turn.condition.negative.embeds.shape[1] == len(tokenizer(chat_template("", 0)).input_ids)


def test_text_answer_matches_the_official_greedy_tokens(model, chat_cases):
    cases, reference, images = chat_cases
    case = cases["understand"]
    result = model.chat(case["prompt"], images, respond="text", max_new_tokens=case["max_new_tokens"])
    assert torch.equal(result.token_ids, reference["understand.generated_ids"])
    assert result.text == case["text"]
    assert result.images is None and result.latents is None
    assert result.stats["drew"] is False and result.stats["answer_tokens"] == case["max_new_tokens"]


# --- the switch --------------------------------------------------------------------------------------------------


def test_the_drawing_prompt_asks_to_draw(model):
    reply = model.text_encoder.generate(DRAWING_PROMPT, [], max_new_tokens=4)
    assert reply.text == IMAGE_REQUEST  # <|img|> is a stop token: the answer ends where it asks


def test_auto_draws_when_the_answer_starts_with_the_image_token(model):
    drawn = model.chat(DRAWING_PROMPT, respond="auto", **SMALL)
    assert drawn.text == IMAGE_REQUEST and drawn.stats["drew"]
    assert drawn.images.shape == (1, 3, 48, 64)
    # what it drew from is the template alone, exactly what respond="image" draws from
    forced = model.chat(DRAWING_PROMPT, respond="image", **SMALL)
    assert torch.equal(drawn.images, forced.images)
    assert model.chat(DRAWING_PROMPT, respond="text", **SMALL).images is None  # "text" never draws


def test_auto_answers_in_text_when_the_answer_does_not_ask(model, chat_cases):
    _, _, images = chat_cases
    answered = model.chat("what is in the two pictures", images, respond="auto", max_new_tokens=5, **SMALL)
    assert not answered.text.startswith(IMAGE_REQUEST) and len(answered.token_ids) == 5
    assert answered.images is None and not answered.stats["drew"]
    forced = model.chat("what is in the two pictures", images, respond="image", max_new_tokens=5, **SMALL)
    assert forced.text == answered.text and forced.images.shape == (1, 3, 48, 64)  # "image" draws whatever it says


# --- conversations with 0, 1 and 5 images ---------------------------------------------------------------------------


@pytest.mark.parametrize("count", [0, 1, 5])
def test_conversation_shows_the_images_to_the_mllm_and_the_vae(model, count):
    shown = pictures(count)
    turn = take_turn(model, "combine them", shown, respond="image", max_new_tokens=1,
                     options=SamplingOptions(max_pixels=64 * 64, max_input_image_side_length=64))
    tokenizer = model.text_encoder.tokenizer
    template = tokenizer(chat_template("combine them", count)).input_ids
    pad = tokenizer.convert_tokens_to_ids(IMAGE_PAD)
    assert turn.condition.positive.embeds.shape[1] == len(template) - count  # each image's pads dropped
    assert template.count(pad) == count
    assert len(turn.condition.references) == count
    result = model.chat("combine them", shown, respond="image", max_new_tokens=1, steps=2, max_pixels=64 * 64,
                        max_input_image_side_length=64, **({"width": 64, "height": 64} if count != 1 else {}))
    if count == 1:  # one image and no size: the output takes the image's processed size, as in generate
        assert tuple(result.images.shape[-2:]) == turn.condition.references[0].pixel_size
    else:
        assert result.images.shape == (1, 3, 64, 64)


def test_more_than_five_images_are_rejected_naming_the_input(model):
    with pytest.raises(InvalidInputError, match=r"6 images given to the conversation; OmniGen2 takes at most 5"):
        model.chat("six", pictures(6), respond="text")


@pytest.mark.parametrize("field,text,message", [
    ("prompt", "a\ud800b", "prompt holds an invalid character at position 1"),
    ("negative_prompt", "\udfff", "negative_prompt holds an invalid character at position 0"),
    ("prompt", "word " * 3000, "prompt is too long"),
    ("negative_prompt", "word " * 3000, "negative_prompt is too long"),
])
def test_a_bad_prompt_is_an_error_naming_the_input(model, field, text, message):
    """Checked where the tokenizer would see it: a lone surrogate, and more tokens (template and images included)
    than the MLLM's max_position_embeddings."""
    inputs = {"prompt": "draw it", "negative_prompt": "", field: text}
    with pytest.raises(InvalidInputError, match=message):
        take_turn(model, inputs["prompt"], [Image.new("RGB", (32, 32))], inputs["negative_prompt"], "image",
                  max_new_tokens=0)


def test_bad_settings_are_named_before_the_mllm_runs(model):
    with pytest.raises(InvalidInputError, match="stepz"):
        model.chat("x", respond="text", stepz=3)
    with pytest.raises(InvalidInputError, match="respond='draw'.*auto, text, image"):
        model.chat("x", respond="draw")
    with pytest.raises(InvalidInputError, match="max_new_tokens=0"):
        model.chat("x", respond="auto", max_new_tokens=0)
    with pytest.raises(InvalidInputError, match="prompt must be a string"):
        model.chat(None)


# --- the drawing is the Cached Sampler's --------------------------------------------------------------------------


def test_sampling_options_reach_sample_unchanged(model):
    """Reference reuse, compact tokens and previews in a chat: the same images as sample() on the turn's condition
    (the progress callback sees the answer's tokens first, without latents)."""
    shown = pictures(2)
    settings = dict(steps=3, width=64, height=64, seed=5, cache_per_n_steps=10)
    previews = []
    record = lambda step, steps, latents: previews.append((step, steps, latents is not None and tuple(latents.shape)))
    result = model.chat("put them together", shown, respond="image", max_new_tokens=1, max_pixels=64 * 64,
                        max_input_image_side_length=64, condition_scale=0.5, progress=record, **settings)
    assert previews == [(1, 1, False)] + [(i, 3, (1, 16, 8, 8)) for i in (1, 2, 3)]  # the answer's token, the steps
    assert result.stats["reference_tokens_reused"] > 0 and result.stats["tokens_saved_by_compaction"] > 0
    options = SamplingOptions(max_pixels=64 * 64, max_input_image_side_length=64, condition_scale=0.5)
    turn = take_turn(model, "put them together", shown, respond="image", max_new_tokens=1, options=options)
    assert torch.equal(model.sample(turn.condition, **settings).images, result.images)


def test_cancel_from_the_progress_callback_stops_the_drawing(model):
    class Cancelled(Exception):
        pass

    def cancel(step, steps, latents):
        raise Cancelled

    with pytest.raises(Cancelled):
        model.chat(DRAWING_PROMPT, respond="auto", progress=cancel, **SMALL)
    assert model.chat(DRAWING_PROMPT, respond="auto", **SMALL).images is not None  # and the model still works


def test_the_answer_reports_every_token_and_cancel_stops_it(model, chat_cases):
    cases, _, images = chat_cases
    case = cases["understand"]

    class Cancelled(Exception):
        pass

    seen = []

    def cancel_at_third(step, total, latents):
        seen.append((step, total, latents))
        if step == 3:
            raise Cancelled

    with pytest.raises(Cancelled):
        model.chat(case["prompt"], images, respond="text", max_new_tokens=case["max_new_tokens"],
                   progress=cancel_at_third)
    assert seen == [(k, case["max_new_tokens"], None) for k in (1, 2, 3)]  # one call per token, then the answer stops
    reported = []
    answer = model.chat(case["prompt"], images, respond="text", max_new_tokens=case["max_new_tokens"],
                        progress=lambda step, total, latents: reported.append(step))
    assert answer.text == case["text"]  # progress changes nothing in the answer, and the model still works
    assert reported == list(range(1, len(answer.token_ids) + 1))


# --- tokenizers without <|img|> (ComfyUI's single-file case) ----------------------------------------------------------


@pytest.mark.skipif(not COMFY_TOKENIZER.is_dir(), reason="no ComfyUI source tree with qwen25_tokenizer here")
def test_comfyui_tokenizer_refuses_auto_and_names_the_fix(tmp_path):
    single = {"transformer": FIXTURES / "transformer", "vae": FIXTURES / "vae_bfl" / "ae.safetensors",
              "text_encoder": FIXTURES / "mllm" / "model.safetensors", "tokenizer": COMFY_TOKENIZER}
    comfy = omni_core.load_model(single)
    tokenizer = comfy.text_encoder.tokenizer
    assert IMAGE_REQUEST not in tokenizer.get_vocab()
    assert tokenizer.convert_ids_to_tokens(151665) == "<tool_response>"  # the released <|img|> id reads as this
    with pytest.raises(InvalidInputError, match=r"qwen25_tokenizer.*processor/.*respond='text'.*respond='image'"):
        comfy.chat("draw a cat", respond="auto")


def _tokenizer_without_image_token(folder: Path) -> Path:
    """The fixture tokenizer with <|img|> renamed to <tool_response>, as in ComfyUI's qwen25_tokenizer."""
    shutil.copytree(FIXTURES / "processor", folder)
    for file in folder.glob("*.json"):
        file.chmod(0o644)
        file.write_text(file.read_text().replace(IMAGE_REQUEST, "<tool_response>"))
    return folder


def test_without_the_image_token_text_and_image_still_work_with_a_warning(model, tmp_path, caplog):
    single = {"transformer": FIXTURES / "transformer", "vae": FIXTURES / "vae",
              "text_encoder": FIXTURES / "mllm" / "model.safetensors",
              "tokenizer": _tokenizer_without_image_token(tmp_path / "qwen25_tokenizer")}
    other = omni_core.load_model(single)
    with pytest.raises(InvalidInputError, match="no such token"):
        other.chat(DRAWING_PROMPT, respond="auto")
    with caplog.at_level(logging.WARNING, logger="omni_core.chat"):
        answered = other.chat(DRAWING_PROMPT, respond="text", max_new_tokens=3)
    assert "processor/" in caplog.text
    # the model's request to draw is not a stop token there: it reads as <tool_response> and the answer runs on
    assert answered.text.startswith("<tool_response>") and len(answered.token_ids) == 3
    drawn = other.chat(DRAWING_PROMPT, respond="image", max_new_tokens=1, **SMALL)
    assert torch.equal(drawn.images, model.chat(DRAWING_PROMPT, respond="image", max_new_tokens=1, **SMALL).images)


# --- the image processor --------------------------------------------------------------------------------------------


def test_mllm_images_go_through_the_processor_that_needs_no_torchvision(model):
    """The loader picks transformers' PIL/numpy Qwen2-VL image processor (not the torchvision-backed one), so every
    chat test here runs on it; the environment these tests run in has no torchvision."""
    name = type(model.text_encoder.image_processor).__name__
    assert name in ("Qwen2VLImageProcessorPil", "Qwen2VLImageProcessor") and "Fast" not in name


@pytest.mark.skipif(importlib.util.find_spec("torchvision") is None,
                    reason="torchvision not installed: transformers' torchvision image processor is unavailable")
def test_torchvision_image_processor_gives_the_same_pixels(model, chat_cases):
    import transformers

    _, reference, images = chat_cases
    # transformers 5: Qwen2VLImageProcessor is the torchvision backend when torchvision is installed; 4.x: ...Fast
    fast_class = getattr(transformers, "Qwen2VLImageProcessorFast", transformers.Qwen2VLImageProcessor)
    fast = fast_class.from_pretrained(str(FIXTURES / "processor"), local_files_only=True)
    assert "Pil" not in type(fast).__name__
    encoder = TextEncoder(model.text_encoder.mllm, model.text_encoder.tokenizer, fast)
    inputs = encoder.chat_inputs("what is in the two pictures", images)
    assert torch.equal(inputs["input_ids"][0], reference["understand.input_ids"])
    assert torch.equal(inputs["image_grid_thw"], reference["understand.image_grid_thw"])
    assert (inputs["pixel_values"] - reference["understand.pixel_values"]).abs().max().item() < 1e-4


# --- the OmniGen2 Chat node -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chat_node():
    from conftest import load_pack

    pack = load_pack()
    (loaded,) = pack.NODE_CLASS_MAPPINGS["LoadOmniGen2"]().load(str(FIXTURES), "fp32")
    node = pack.NODE_CLASS_MAPPINGS["OmniGen2Chat"]

    def run(prompt, respond, **inputs):
        """The node with its widgets' defaults, overridden by `inputs` (images as ComfyUI IMAGE tensors)."""
        widgets = {name: spec[1]["default"] for name, spec in node.INPUT_TYPES()["required"].items() if name != "model"}
        return node().chat(loaded, **{**widgets, "prompt": prompt, "respond": respond, **inputs})

    return run


def comfy_image(picture: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(picture, dtype=np.float32) / 255.0)[None]


def test_node_answer_only_gives_the_text_and_a_black_image(chat_node, chat_cases):
    cases, reference, images = chat_cases
    case = cases["understand"]
    out = chat_node(case["prompt"], "text", max_new_tokens=case["max_new_tokens"],
                    image_1=comfy_image(images[0]), image_2=comfy_image(images[1]))
    answer, image = out["result"]
    assert answer == case["text"]
    # Save Image writes image[0] of any IMAGE with at least one row: this one is a plain 64x64 black picture
    assert image.shape == (1, 64, 64, 3) and image.dtype == torch.float32 and not image.any()
    stats = out["ui"]["omnigen2_stats"][0]
    assert stats["answer"] == case["text"] and stats["drew"] is False and "steps" not in stats


def test_node_draws_like_the_official_chat_pipeline(chat_node, chat_cases):
    cases, reference, images = chat_cases
    case = cases["generate"]
    out = chat_node(case["prompt"], "image", negative_prompt=case["negative_prompt"], max_new_tokens=1,
                    seed=case["seed"], steps=case["steps"], width=case["width"], height=case["height"],
                    text_guidance=case["text_guidance_scale"], image_guidance=case["image_guidance_scale"],
                    cfg_range_start=case["cfg_range"][0], cfg_range_end=case["cfg_range"][1],
                    max_pixels=case["max_pixels"], max_input_image_side_length=case["max_input_image_side_length"],
                    image_1=comfy_image(images[0]), image_2=comfy_image(images[1]))
    answer, image = out["result"]
    drawn = (image * 255).round().to(torch.uint8)
    assert (drawn.int() - reference["generate.output_uint8"].int()).abs().max().item() <= 1
    assert out["ui"]["omnigen2_stats"][0]["steps"] == case["steps"]


def test_node_compacts_the_references_of_a_drawing(chat_node, chat_cases):
    _, _, images = chat_cases
    settings = dict(max_new_tokens=1, steps=2, width=64, height=48, max_pixels=64 * 64, max_input_image_side_length=64,
                    image_1=comfy_image(images[0]), image_2=comfy_image(images[1]))
    plain = chat_node("put them together", "image", **settings)["ui"]["omnigen2_stats"][0]
    compact = chat_node("put them together", "image", condition_scale=0.5, **settings)["ui"]["omnigen2_stats"][0]
    assert plain["tokens_saved_by_compaction"] == 0 < compact["tokens_saved_by_compaction"]


def test_node_rejects_more_than_five_images_naming_the_inputs(chat_node):
    batch = torch.rand(4, 32, 32, 3)
    with pytest.raises(InvalidInputError, match=r"6 reference images given \(image_1: 4, image_3: 2"):
        chat_node("x", "text", image_1=batch, image_3=batch[:2])
