"""The reflection loop (omni_core/reflection.py) on the tiny fixture model: rounds, early stop, the previous result
entering as a reference, the transcript, the answer parser on realistic judge answers, judge folders, the 5-image
limit, the features kept across rounds, and cancel."""

from __future__ import annotations

import dataclasses
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import Qwen2Config, Qwen2ForCausalLM

from conftest import FIXTURES, ROOT, record_instances
import omni_core
from omni_core import reflection
from omni_core.errors import InvalidInputError, ModelFileError
from omni_core.image_processing import to_pil
from omni_core.chat import answer_text
from omni_core.judges import encoder_judge
from omni_core.loading.judge_loader import load_judge_folder
from omni_core.reflection import (
    STOP_MAX_ROUNDS, STOP_NO_FIX, STOP_SATISFIED, STOP_UNCLEAR, Judgement, fold_correction, judge_prompt,
    parse_judgement, round_references, round_seed, stop_reason,
)

LIMITS = dict(max_pixels=64 * 64, max_input_image_side_length=64)
SETTINGS = dict(steps=2, seed=3, **LIMITS)


@pytest.fixture(scope="module")
def model():
    return omni_core.load_model(FIXTURES)


def picture(seed: int, height: int = 48, width: int = 64) -> torch.Tensor:
    return torch.rand(height, width, 3, generator=torch.Generator().manual_seed(seed))


class ScriptedJudge:
    """A judge that answers from a script and records what it was shown."""

    def __init__(self, *answers: str, on_call=None) -> None:
        self.answers = list(answers)
        self.calls: list[tuple[str, list[Image.Image]]] = []
        self.on_call = on_call

    def __call__(self, question, images):
        self.calls.append((question, list(images)))
        if self.on_call is not None:
            self.on_call(len(self.calls))
        return self.answers[min(len(self.calls), len(self.answers)) - 1]


# --- the answer parser, the stopping rule, folding and slots ---------------------------------------------------------

ANSWERS = [
    ("Yes", "yes", ""),
    ("yes.", "yes", ""),
    ("**Yes**, the image shows a red circle on a blue background.", "yes", ""),
    ("Yes<|im_end|>", "yes", ""),
    ("yes\n- it could be a little brighter", "yes", ""),
    ("The image satisfies the instruction.", "yes", ""),
    ("Answer: No\n- The circle should be red, not green.\n- Add the blue background.", "no",
     "The circle should be red, not green; Add the blue background"),
    ("No.\n1. Make the sky purple.\n2) Remove the tree.", "no", "Make the sky purple; Remove the tree"),
    ("No, the cat is missing.", "no", "the cat is missing"),
    ("Not quite - the text on the sign is misspelled.", "no", "the text on the sign is misspelled"),
    ("Yes, but the dog should face left.", "no", "the dog should face left"),
    ("The image does not satisfy the instruction: the hat is blue instead of red.", "no",
     "The image does not satisfy the instruction: the hat is blue instead of red"),
    ("No<|im_end|>", "no", ""),
    ("Wanted: a blue background with a red circle.\nShown: a green background with a red circle.\nNo.\n"
     "- make the background blue", "no", "make the background blue"),
    ("The picture shows a cat on a sofa, as asked.\n\nAnswer: Yes", "yes", ""),
    ("The hat is blue.\nNo\nThe hat should be red.", "no", "The hat should be red"),
    ("Nope", "no", ""),
    ("Correct the colour of the hat to red.", "no", "Correct the colour of the hat to red"),
    ("Make the sky purple and remove the tree", "no", "Make the sky purple and remove the tree"),
    ("", "unclear", ""),
    ("<|im_end|><|endoftext|>", "unclear", ""),
    ("\x1f\x1f\x1f\x1f", "unclear", ""),
    ("asdf ;; 12 %% qwerty", "unclear", ""),
    ("Nobody can tell from this picture.", "unclear", ""),
    ("Yesterday it rained.", "unclear", ""),
]


@pytest.mark.parametrize("text,verdict,correction", ANSWERS)
def test_parser_reads_realistic_judge_answers(text, verdict, correction):
    assert parse_judgement(text) == Judgement(verdict, correction)


def test_parser_bounds_a_rambling_correction():
    words = "the circle should be larger and more to the left " * 40
    judgement = parse_judgement("No. " + words)
    assert judgement.verdict == "no" and len(judgement.correction) <= reflection.MAX_CORRECTION_CHARS
    assert words.startswith(judgement.correction)


def test_stopping_rule():
    fix = Judgement("no", "make it blue")
    assert stop_reason(Judgement("yes"), 1, 3) == STOP_SATISFIED
    assert stop_reason(Judgement("unclear"), 1, 3) == STOP_UNCLEAR
    assert stop_reason(Judgement("no"), 1, 3) == STOP_NO_FIX
    assert stop_reason(fix, 1, 3) is None and stop_reason(fix, 2, 3) is None
    assert stop_reason(fix, 3, 3) == STOP_MAX_ROUNDS
    assert stop_reason(Judgement("yes"), 3, 3) == STOP_SATISFIED  # the last round's verdict is kept


def test_references_keep_the_originals_and_respect_the_five_image_limit(model):
    originals = model.encode_references([picture(i) for i in range(5)], **LIMITS)
    (previous,) = model.encode_references([picture(9)], **LIMITS)
    assert round_references(originals[:2], previous) == ((*originals[:2], previous), 3)
    assert round_references([], previous) == ((previous,), 1)
    assert round_references(originals, previous) == (tuple(originals), None)  # no free slot: the result is dropped
    assert "Image 3 is a previous attempt" in fold_correction("p", "fix", 3)
    assert fold_correction("p", "fix", None) == "p\nAvoid the previous attempt's mistakes: fix."
    assert judge_prompt("p", 2).startswith("The first 2 images are the input images.")


# --- the loop on the tiny model --------------------------------------------------------------------------------------


def test_rounds_run_to_max_rounds_and_the_judge_sees_inputs_then_result(model):
    judge = ScriptedJudge("No.\n- make the circle larger")
    result = model.reflect("a red circle", images=[picture(1)], max_rounds=3, judge=judge, **SETTINGS)
    assert [r.number for r in result.rounds] == [1, 2, 3] and len(judge.calls) == 3
    assert result.stop_reason == STOP_MAX_ROUNDS
    for call, done in zip(judge.calls, result.rounds):
        question, shown = call
        assert '"a red circle"' in question  # judged against the user's instruction, not the folded one
        assert len(shown) == 2 and shown[-1].size == (64, 48)
        assert torch.equal(torch.tensor(np.asarray(shown[-1])), (done.image[0].movedim(0, -1) * 255).round().byte())
    assert result.rounds[0].instruction == "a red circle" and not result.rounds[0].previous_as_reference
    assert all(r.previous_as_reference and r.references == 2 for r in result.rounds[1:])
    assert result.rounds[2].instruction == fold_correction("a red circle", "make the circle larger", 2)
    assert torch.equal(result.final, result.rounds[-1].image)
    assert not torch.equal(result.rounds[0].image, result.rounds[1].image)


def test_early_stop_when_the_judge_is_satisfied(model):
    judge = ScriptedJudge("No, the circle is too small.", "Yes, it matches now.")
    result = model.reflect("a red circle", max_rounds=5, judge=judge, width=64, height=48, **SETTINGS)
    assert len(result.rounds) == 2 and result.stop_reason == STOP_SATISFIED
    assert [r.verdict for r in result.rounds] == ["no", "yes"]
    assert result.rounds[0].correction == "the circle is too small"


@pytest.mark.parametrize("answer,reason", [("I cannot tell.", STOP_UNCLEAR), ("No.", STOP_NO_FIX)])
def test_an_answer_with_nothing_to_act_on_ends_the_loop(model, answer, reason):
    result = model.reflect("a red circle", max_rounds=3, judge=ScriptedJudge(answer), width=64, height=48, **SETTINGS)
    assert len(result.rounds) == 1 and result.stop_reason == reason


def test_the_previous_result_enters_as_the_next_reference(model):
    """Round 2 is exactly `generate` with the folded instruction and the round-1 image added as image 2, at round 1's
    size (no size was given: the edit's automatic size is kept), from the next seed."""
    judge = ScriptedJudge("No\n- the background should be blue", "Yes")
    result = model.reflect("make it red", images=[picture(2)], max_rounds=2, judge=judge, **SETTINGS)
    first, second = result.rounds
    assert first.image.shape == second.image.shape == (1, 3, 48, 64)
    manual = model.generate(second.instruction, images=[picture(2), first.image[0]], width=64, height=48,
                            align_res=False, **{**SETTINGS, "seed": round_seed(SETTINGS["seed"], 2)})
    assert torch.equal(second.image, manual.images)
    assert second.stats["reference_images"] == 2


def test_text_to_image_rounds_edit_their_previous_result(model):
    judge = ScriptedJudge("No\n- add a blue background", "Yes")
    result = model.reflect("a red circle", max_rounds=2, judge=judge, width=64, height=48, **SETTINGS)
    assert result.rounds[1].references == 1 and result.rounds[1].instruction.splitlines()[1].startswith("Image 1 is")
    assert len(judge.calls[1][1]) == 1  # no inputs: the judge sees the result only


def test_transcript_shows_why_it_stopped(model):
    judge = ScriptedJudge("Answer: No\n- The circle should be red.", "Yes.")
    result = model.reflect("a red circle", max_rounds=3, judge=judge, width=64, height=48, **SETTINGS)
    text = result.transcript()
    assert text.count("Round ") == 2 and "instruction: a red circle" in text
    assert "judge: Answer: No" in text and "correction: The circle should be red" in text
    assert "references: 1 reference image(s), the last one round 1's result" in text
    assert text.endswith(f"Stopped after round 2: {STOP_SATISFIED}.")


def test_five_references_leave_no_slot_for_the_result(model):
    images = [picture(10 + i, 32, 32) for i in range(5)]
    judge = ScriptedJudge("No\n- sharper edges", "Yes")
    result = model.reflect("combine them", images=images, max_rounds=2, judge=judge, width=32, height=32, **SETTINGS)
    second = result.rounds[1]
    assert second.references == 5 and not second.previous_as_reference
    assert second.instruction == fold_correction("combine them", "sharper edges", None)
    assert len(judge.calls[1][1]) == 6  # the judge still sees all inputs and the new result


def test_a_condition_can_be_reflected_on(model):
    condition = model.encode_condition("a red circle", images=[picture(4)], **LIMITS)
    judge = ScriptedJudge("No\n- bigger", "Yes")
    from_condition = model.reflect(condition, max_rounds=2, judge=judge, steps=2, seed=3)
    from_prompt = model.reflect("a red circle", images=[picture(4)], max_rounds=2, judge=ScriptedJudge("No\n- bigger", "Yes"), **SETTINGS)
    assert all(torch.equal(a.image, b.image) for a, b in zip(from_condition.rounds, from_prompt.rounds))
    with pytest.raises(InvalidInputError, match="either in the condition or as images"):
        model.reflect(condition, images=[picture(4)], judge=judge)
    textless = dataclasses.replace(condition, positive=omni_core.TextCondition(condition.positive.embeds, condition.positive.mask))
    with pytest.raises(InvalidInputError, match="no prompt text"):
        model.reflect(textless, judge=judge)


def test_bad_inputs_are_named(model):
    judge = ScriptedJudge("Yes")
    with pytest.raises(InvalidInputError, match="max_rounds"):
        model.reflect("x", max_rounds=0, judge=judge)
    with pytest.raises(InvalidInputError, match="num_images must be 1"):
        model.reflect("x", judge=judge, num_images=2)
    with pytest.raises(InvalidInputError, match="judge must be"):
        model.reflect("x", judge=42)
    with pytest.raises(InvalidInputError, match="answer as a string"):
        model.reflect("x", judge=lambda q, i: None, width=32, height=32, **SETTINGS)


# --- the original references' features, computed once for the loop --------------------------------------------------


@pytest.fixture()
def created_stores(monkeypatch):
    """Every ConditionFeatureStore the loop creates during the test."""
    return record_instances(monkeypatch, reflection, "ConditionFeatureStore")


def test_original_references_are_computed_once_for_the_loop(model, created_stores):
    """With caching and the independent condition, rounds after the first compute the condition branch for the new
    reference (the previous result) only, and give exactly what recomputing every image would give."""
    images = [picture(5), picture(6, 32, 32)]
    cached = dict(cache_per_n_steps=100, independent_condition=True, width=64, height=48, **SETTINGS)
    answers = ("No\n- more contrast",)
    result = model.reflect("in context", images=images, max_rounds=3, judge=ScriptedJudge(*answers), **cached)
    originals = sum(ref.num_tokens for ref in model.encode_condition("x", images=images, **LIMITS).references)
    result_tokens = 12  # 64 x 48 pixels
    computed = [r.stats["reference_tokens_computed"] for r in result.rounds]
    assert computed == [originals, result_tokens, result_tokens]
    assert created_stores and all(store.entries == {} for store in created_stores)  # nothing outlives the loop
    # every round alone (no store), from the same instructions and previous images
    for before, this in zip(result.rounds, result.rounds[1:]):
        alone = model.generate(this.instruction, images=[*images, before.image[0]], align_res=False,
                               **{**cached, "seed": round_seed(SETTINGS["seed"], this.number)})
        assert alone.stats["reference_tokens_computed"] == originals + result_tokens
        # each image's condition branch runs alone in both, so the stored features are the recomputed ones exactly
        assert torch.equal(alone.images, this.image)


def test_without_the_independent_condition_nothing_is_kept(model, created_stores):
    cached = dict(cache_per_n_steps=100, independent_condition=False, width=64, height=48, **SETTINGS)
    result = model.reflect("edit", images=[picture(7)], max_rounds=2, judge=ScriptedJudge("No\n- x", "Yes"), **cached)
    # step 0: both references (12 tokens each) computed for each of the two passes that see them, nothing kept
    assert result.rounds[1].stats["reference_tokens_computed"] == 2 * 2 * 12
    assert created_stores[0].entries == {}


# --- cancel ----------------------------------------------------------------------------------------------------------


class Cancelled(Exception):
    pass


def test_cancel_between_and_inside_rounds_leaves_nothing_behind(model, created_stores):
    cached = dict(cache_per_n_steps=100, independent_condition=True, width=64, height=48, **SETTINGS)
    answer = "No\n- brighter"

    def cancel_before_round_2(number, total):
        if number == 2:
            raise Cancelled

    with pytest.raises(Cancelled):
        model.reflect("a", images=[picture(8)], max_rounds=3, judge=ScriptedJudge(answer), on_round=cancel_before_round_2, **cached)
    steps_seen = []

    def cancel_inside_round_2(step, total, latents):
        steps_seen.append(step)
        if len(steps_seen) == 3:  # round 2, step 1
            raise Cancelled

    with pytest.raises(Cancelled):
        model.reflect("a", images=[picture(8)], max_rounds=3, judge=ScriptedJudge(answer), progress=cancel_inside_round_2, **cached)
    assert steps_seen == [1, 2, 1]
    assert len(created_stores) == 2 and all(store.entries == {} for store in created_stores)
    again = model.reflect("a", images=[picture(8)], max_rounds=2, judge=ScriptedJudge(answer), **cached)
    fresh = omni_core.load_model(FIXTURES).reflect("a", images=[picture(8)], max_rounds=2, judge=ScriptedJudge(answer), **cached)
    assert all(torch.equal(a.image, b.image) for a, b in zip(again.rounds, fresh.rounds))


# --- judges ----------------------------------------------------------------------------------------------------------


def test_a_vision_language_folder_judges_like_the_models_own_mllm(model):
    """The fixture's Qwen2.5-VL folder (processor/ beside it), loaded with transformers' Auto classes, answers exactly
    as OmniGen2's own MLLM (the same weights) does on the chat path; the tiny random model's answer is garbage, which
    the loop reads as unclear and stops on."""
    judge = load_judge_folder(FIXTURES / "mllm")
    assert type(judge.mllm).__name__ == "Qwen2_5_VLForConditionalGeneration"
    shown = [Image.new("RGB", (64, 48), (200, 30, 30))]
    answer = encoder_judge(judge, max_new_tokens=8)("Is the image red?", shown)
    assert answer == model.chat("Is the image red?", images=shown, respond="text", max_new_tokens=8).text
    result = model.reflect("a red circle", max_rounds=2, judge=str(FIXTURES), width=64, height=48, **SETTINGS)
    assert len(result.rounds) == 1 and result.stop_reason == STOP_UNCLEAR and result.rounds[0].judge_text


def test_the_default_judge_is_the_models_own_mllm_on_the_chat_path(model):
    result = model.reflect("a red circle", images=[picture(1)], max_rounds=2, **SETTINGS)
    first = result.rounds[0]
    shown = [to_pil((model.encode_condition("x", images=[picture(1)], **LIMITS).references[0].pixels[0] + 1) / 2),
             to_pil(first.image[0])]
    expected = model.chat(judge_prompt("a red circle", 1), images=shown, respond="text").text
    assert first.judge_text == expected
    assert result.stop_reason == STOP_UNCLEAR  # the tiny random MLLM's answer says nothing


def test_the_default_judge_reads_five_inputs_and_the_result(model):
    """6 images for the model's own MLLM: more than a chat turn may draw from, as many as a judge must read."""
    images = [picture(20 + i, 32, 32) for i in range(5)]
    result = model.reflect("combine them", images=images, max_rounds=2, width=32, height=32, **SETTINGS)
    references = model.encode_condition("x", images=images, **LIMITS).references
    shown = [*(to_pil((ref.pixels[0] + 1) / 2) for ref in references), to_pil(result.rounds[0].image[0])]
    expected = answer_text(model.text_encoder.generate(judge_prompt("combine them", 5), shown, 256).text)
    assert result.rounds[0].judge_text == expected and expected


def test_a_text_only_model_folder_is_rejected(tmp_path):
    config = Qwen2Config(vocab_size=526, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1)
    Qwen2ForCausalLM(config).save_pretrained(tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json", "preprocessor_config.json"):
        shutil.copy(FIXTURES / "processor" / name, tmp_path / name)
    with pytest.raises(ModelFileError, match="qwen2 model without a vision tower"):
        load_judge_folder(tmp_path)


def test_a_vision_language_folder_without_processor_is_rejected(tmp_path):
    shutil.copytree(FIXTURES / "mllm", tmp_path / "vlm")
    with pytest.raises(ModelFileError, match="has no processor: no preprocessor_config.json"):
        load_judge_folder(tmp_path / "vlm")
    shutil.copy(FIXTURES / "processor" / "preprocessor_config.json", tmp_path / "vlm")
    with pytest.raises(ModelFileError, match="has no tokenizer"):
        load_judge_folder(tmp_path / "vlm")


@pytest.mark.parametrize("layout", ["missing", "no_config", "no_safetensors"])
def test_judge_folder_errors_name_what_is_missing(tmp_path, layout):
    folder = tmp_path / "judge"
    if layout != "missing":
        folder.mkdir()
    if layout == "no_safetensors":
        shutil.copy(FIXTURES / "mllm" / "config.json", folder)
        for name in ("tokenizer.json", "tokenizer_config.json", "preprocessor_config.json"):
            shutil.copy(FIXTURES / "processor" / name, folder)
    message = {"missing": "does not exist", "no_config": "no config.json", "no_safetensors": "no .safetensors"}[layout]
    with pytest.raises(ModelFileError, match=message):
        load_judge_folder(folder)


# --- the OmniGen2 Reflect node ---------------------------------------------------------------------------------------

NODE_WIDGETS = dict(negative_prompt="", seed=3, steps=2, width=64, height=48, text_guidance=4.0, image_guidance=2.0,
                    cfg_range_start=0.0, cfg_range_end=1.0, cache_per_n_steps=100, independent_condition="independent",
                    max_pixels=64 * 64, max_input_image_side_length=64)


@pytest.fixture(scope="module")
def node_model(pack):
    (loaded,) = pack.NODE_CLASS_MAPPINGS["LoadOmniGen2"]().load(str(FIXTURES), "fp32")
    return loaded


@pytest.fixture()
def own_judge(monkeypatch):
    """Puts a scripted judge in place of the model's own MLLM (an outside model's answers; the loop, the sampling and
    the node are the real ones)."""
    pipeline = sys.modules["omni_core.pipeline"]
    real = pipeline.resolve_judge

    def install(judge):
        monkeypatch.setattr(pipeline, "resolve_judge", lambda encoder, choice: judge if choice is None else real(encoder, choice))
        return judge

    return install


def run_node(pack, node_model, **overrides):
    inputs = {"prompt": "a red circle", "max_rounds": 3, "judge": "own MLLM", **NODE_WIDGETS, **overrides}
    return pack.NODE_CLASS_MAPPINGS["OmniGen2Reflect"]().reflect(node_model, **inputs)


def test_reflect_node_outputs_every_round_and_shows_the_round(pack, node_model, bridge, own_judge, monkeypatch):
    judge = own_judge(ScriptedJudge("No\n- a bigger circle", "No\n- a darker red", "Yes"))
    texts, bar = [], []
    real_progress = bridge.progress_callback
    monkeypatch.setattr(bridge.progress, "show_text", texts.append)  # where round_progress looks them up
    monkeypatch.setattr(bridge.progress, "progress_callback",
                        lambda total, device=None, on_step=None: real_progress(total, device, lambda s, t: bar.append((s, t))))
    out = run_node(pack, node_model, image_1=picture(1).unsqueeze(0))
    image, rounds, transcript = out["result"]
    assert image.shape == (1, 48, 64, 3) and rounds.shape == (3, 48, 64, 3) and torch.equal(rounds[-1:], image)
    assert len(judge.calls) == 3 and transcript.endswith(f"Stopped after round 3: {STOP_SATISFIED}.")
    assert texts == ["round 1 of up to 3", "round 2 of up to 3", "round 3 of up to 3"]
    assert bar == [(step, 6) for step in range(1, 7)]  # one bar over every round's steps
    stats = out["ui"]["omnigen2_stats"][0]
    assert stats["rounds"] == 3 and stats["steps"] == 2 and stats["reference_tokens_computed"] == 12
    engine = node_model.engine.reflect("a red circle", images=[picture(1)], max_rounds=3, steps=2, seed=3,
                                       width=64, height=48, text_guidance_scale=4.0, cache_per_n_steps=100,
                                       independent_condition=True,
                                       judge=ScriptedJudge("No\n- a bigger circle", "No\n- a darker red", "Yes"))
    assert torch.equal(rounds, torch.cat([r.image for r in engine.rounds]).movedim(1, -1))  # the node adds nothing


def test_reflect_node_takes_a_condition(pack, node_model, own_judge):
    own_judge(ScriptedJudge("Yes"))
    (condition,) = pack.NODE_CLASS_MAPPINGS["OmniGen2ConditionEncode"]().encode(
        node_model, "a red circle", "", 64 * 64, 64, image_1=picture(1).unsqueeze(0))
    image, rounds, _ = run_node(pack, node_model, prompt="", condition=condition)["result"]
    assert rounds.shape[0] == 1 and image.shape == (1, 48, 64, 3)
    with pytest.raises(InvalidInputError, match="clear 'prompt'"):
        run_node(pack, node_model, condition=condition)
    with pytest.raises(InvalidInputError, match="enter a prompt"):
        run_node(pack, node_model, prompt="  ")


def test_reflect_node_judges_with_a_folder(pack, node_model, bridge, monkeypatch):
    monkeypatch.setenv(bridge.JUDGE_DIRS_ENV, str(FIXTURES.parent))
    assert "omnigen2-tiny" in bridge.list_judge_folders()  # a release root: its mllm/ judges
    assert pack.NODE_CLASS_MAPPINGS["OmniGen2Reflect"].INPUT_TYPES()["required"]["judge"][0] == ["own MLLM", *bridge.list_judge_folders()]
    _, rounds, transcript = run_node(pack, node_model, judge="omnigen2-tiny")["result"]
    assert rounds.shape[0] == 1 and STOP_UNCLEAR in transcript  # the tiny random MLLM answers garbage
    with pytest.raises(ModelFileError, match="not one of the choices listed.*models/vlm"):
        run_node(pack, node_model, judge="no-such-judge")


@pytest.mark.parametrize("where", ["between rounds", "inside a round"])
def test_reflect_node_cancel_leaves_nothing_behind(pack, node_model, bridge, own_judge, monkeypatch, where,
                                                   created_stores, created_caches):
    """ComfyUI's cancel (here `request_interrupt`, what the bridge checks) during the judge of round 1 stops before
    round 2; during round 2's first step it stops inside it. No cached features are left, and the next run equals one
    on a freshly loaded model."""
    real_progress = bridge.progress_callback
    if where == "between rounds":
        own_judge(ScriptedJudge("No\n- x", on_call=lambda n: bridge.request_interrupt()))
        steps = []
    else:
        own_judge(ScriptedJudge("No\n- x"))
        steps = []

        def on_step(step, total):
            steps.append(step)
            if step == 3:  # round 2, step 1
                bridge.request_interrupt()

        monkeypatch.setattr(bridge.progress, "progress_callback",
                            lambda total, device=None, on_step_=None: real_progress(total, device, on_step))
    with pytest.raises(bridge.Interrupted):
        run_node(pack, node_model, image_1=picture(2).unsqueeze(0))
    assert len(created_caches) == (1 if where == "between rounds" else 2)
    assert all(cache.entries == {} for cache in created_caches) and all(s.entries == {} for s in created_stores)
    assert steps == ([] if where == "between rounds" else [1, 2, 3])
    monkeypatch.setattr(bridge.progress, "progress_callback", real_progress)
    own_judge(ScriptedJudge("No\n- x", "Yes"))
    _, after, _ = run_node(pack, node_model, image_1=picture(2).unsqueeze(0))["result"]
    fresh = omni_core.load_model(FIXTURES).reflect(
        "a red circle", images=[picture(2)], max_rounds=3, judge=ScriptedJudge("No\n- x", "Yes"), steps=2, seed=3,
        width=64, height=48, text_guidance_scale=4.0, cache_per_n_steps=100, independent_condition=True)
    assert torch.equal(after, torch.cat([r.image for r in fresh.rounds]).movedim(1, -1))


def test_the_example_workflow_runs_on_the_bundled_model(pack):
    """example_workflows/omnigen2_reflect.json as ComfyUI would run it (API form), on the bundled model with its own
    MLLM judging, shrunk to few steps: every widget value is one the node takes."""
    from comfy_workflow import offline_object_info, to_api_prompt
    import json

    workflow = json.loads((Path(__file__).parents[1] / "example_workflows" / "omnigen2_reflect.json").read_text())
    prompt = to_api_prompt(workflow, offline_object_info(pack.NODE_CLASS_MAPPINGS))
    (reflect_id, node), = ((k, n) for k, n in prompt.items() if n["class_type"] == "OmniGen2Reflect")
    inputs = {**node["inputs"], "steps": 2}
    assert inputs.pop("model") == ["1", 0] and inputs.pop("image_1") == ["2", 0]
    (bundled,) = pack.NODE_CLASS_MAPPINGS["LoadOmniGen2"]().load(str(omni_core.DEFAULT_MODEL_DIR), "auto")
    image, rounds, transcript = pack.NODE_CLASS_MAPPINGS["OmniGen2Reflect"]().reflect(
        bundled, image_1=picture(3, 72, 96).unsqueeze(0), **inputs)["result"]
    assert image.shape == (1, 64, 96, 3) and rounds.shape[0] >= 1 and transcript.startswith("Round 1")


# --- the benchmark and the README's figures --------------------------------------------------------------------------



def test_reflection_benchmark_quick_run(tmp_path):
    """benchmarks/reflection.py runs end to end: the loop gives the separate runs' images, computes the originals'
    reference tokens in round 1 only, and saves work."""
    import json
    import subprocess

    out = tmp_path / "reflection.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "reflection.py"), "--quick", "--json", str(out)],
                   check=True, capture_output=True, text=True, timeout=600)
    result = json.loads(out.read_text())
    assert result["max_abs_diff_loop_vs_separate"] == 0.0  # kept features are the recomputed ones, bit for bit
    assert result["reference_tokens_computed_per_round"] == {"loop": [128, 64, 64], "separate": [128, 192, 192]}
    assert 0 < result["saved_work_share"] < 1 and result["work_gmac"]["loop"] < result["work_gmac"]["separate"]


def test_readme_cost_table_is_the_benchmarks_arithmetic():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import reflection as benchmark

    readme = (ROOT / "README.md").read_text()
    official, once = benchmark.released_costs(3, 1, 1024, 50)
    for row in (official, once):
        cells = f"{row['round_1']:,.0f} TMAC | {row['later_round']:,.0f} TMAC"
        assert cells in readme, cells
        assert f"{row['loop']:,.0f} TMAC |" in readme
    assert f"{once['saved']:.1%} of the work above" in readme
    two = benchmark.released_costs(3, 2, 1024, 50)[1]
    assert f"{two['saved']:.1%} with\ntwo input images" in readme
