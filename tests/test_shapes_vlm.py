"""The bundled MLLM's lessons (training/shapes/conversations.py) and its training (training/shapes/vlm.py): the judge
answers it learns agree with the pixel measurer, its fixes are what the reflection loop reads, and the model it
trains is a Qwen2.5-VL that the engine's loaders read."""

import shutil
from itertools import islice

import numpy as np
import torch
from transformers import Qwen2_5_VLForConditionalGeneration

from omni_core.loading.text_encoder_loader import load_text_encoder, load_tokenizer
from omni_core.reflection import Judgement, fold_correction, parse_judgement, round_references
from omni_core.text_encoder import IMAGE_REQUEST
from omni_core.training.shapes import vlm
from omni_core.training.shapes.vlm import optimise
from omni_core.training.shapes.conversations import DESCRIBE_PROMPT, position_word, scene_words, turns
from omni_core.training.shapes.corrections import with_corrections
from omni_core.training.shapes.dataset import examples
from omni_core.training.shapes.measure import read_scene, result_matches
from omni_core.training.shapes.scenes import COLORS, SHAPES, Scene, Shape, render


def test_describe_and_judge_answers_agree_with_the_pixel_measurer_and_fixes_are_what_the_loop_reads():
    count, kinds, verdicts, described_pairs = 400, set(), {"yes": 0, "no": 0}, 0
    for example, turn in zip(examples(count, 3, held_out=False), turns(count, 3, held_out=False)):
        kinds.add(turn.kind)
        if turn.kind == "describe":
            assert turn.prompt == DESCRIBE_PROMPT and len(turn.images) == 1
            found = read_scene(render(turn.images[0], 64))
            left_to_right = sorted(found.shapes, key=lambda item: item.center[0])
            objects = " and ".join(f"a {item.color} {item.shape}" for item in left_to_right)
            assert turn.answer == f"{objects} on a {found.background} background"
            described_pairs += len(found.shapes) == 2
            continue
        assert turn.images[: len(example.inputs)] == example.inputs
        if turn.kind == "draw":
            assert (turn.prompt, turn.answer) == (example.instruction, IMAGE_REQUEST)
            continue
        assert f'"{example.instruction}"' in turn.prompt
        judgement = parse_judgement(turn.answer)
        verdicts[judgement.verdict] += 1
        found = read_scene(render(turn.images[-1], 64))
        right = result_matches(example.task_type, found, example.output)
        assert right == (judgement.verdict == "yes"), (example, turn)
        looked = [line for line in turn.answer.splitlines() if line.endswith((" - same.", " - different."))]
        assert all(line.endswith(" - same.") for line in looked) == right
        said_shown = {line.split(":")[0]: line.split(", shown ")[1].rsplit(" - ", 1)[0] for line in looked}
        placed = example.task_type != "t2i"
        measured = {"Background": found.background}
        for item in found.shapes if placed else found.shapes[:1]:
            place = position_word(item.center).capitalize() if placed else "Object"
            measured[f"{place} colour"], measured[f"{place} shape"] = item.color, item.shape
        assert {name: what for name, what in said_shown.items() if what != "nothing"} == measured
        if not right:
            assert judgement.correction and judgement.correction.split()[0] in {"change", "make", "add", "move"}
    assert kinds == {"describe", "judge", "draw"} and described_pairs > 10
    assert min(verdicts.values()) > 0.35 * sum(verdicts.values())


def test_the_tokenizer_keeps_qwen_special_ids_reads_any_text_and_knows_the_scene_words(tmp_path):
    vlm.write_processor(tmp_path, vlm.fit_tokenizer(vlm.corpus(300, 0), vocab_size=600))
    encoder_tokenizer = load_tokenizer(tmp_path)
    assert encoder_tokenizer.convert_tokens_to_ids("<|image_pad|>") == 12 and encoder_tokenizer.pad_token_id == 0
    for text in ("a purple triangle on a white background", "Zeichne ein Dreieck, bitte — 三角形 🙂"):
        ids = encoder_tokenizer(text).input_ids
        assert encoder_tokenizer.decode(ids) == text
    assert len(encoder_tokenizer(" purple triangle background").input_ids) == 3


def test_each_image_token_is_labelled_with_what_covers_its_region():
    square = Shape("red", "square", 0.5, (0.5, 0.5))  # pixels 16..47: exactly the four middle regions of 16 x 16
    triangle = Shape("white", "triangle", 0.2, (0.125, 0.875))  # in the bottom-left region: about a third of it
    colors, shapes = vlm.region_labels(Scene("blue", (square, triangle)))
    grid = lambda labels: labels.reshape(4, 4).tolist()  # noqa: E731
    red, blue, white = (COLORS.index(name) for name in ("red", "blue", "white"))
    assert grid(colors) == [[blue] * 4, [blue, red, red, blue], [blue, red, red, blue], [blue] * 4]
    square_id, triangle_id = SHAPES.index("square") + 1, SHAPES.index("triangle") + 1
    assert grid(shapes) == [[0] * 4, [0, square_id, square_id, 0], [0, square_id, square_id, 0],
                            [triangle_id, 0, 0, 0]]
    assert white not in colors  # the triangle covers less than the blue around it


def test_a_short_training_writes_a_qwen25_vl_the_loaders_read_with_a_vision_tower_frozen_after_it_learnt_to_see(
        tmp_path, monkeypatch):
    monkeypatch.setattr(vlm, "TEXT", {**vlm.TEXT, "num_hidden_layers": 1})
    monkeypatch.setattr(vlm, "VISION", {**vlm.VISION, "depth": 1, "fullatt_block_indexes": [0]})
    monkeypatch.setattr(vlm, "SIGHT_BATCH", 8)
    trained = []  # each phase's parameters as it left them

    def optimise_and_keep(params, *args):
        losses = optimise(params, *args)
        trained.append([param.detach().clone() for param in params])
        return losses

    monkeypatch.setattr(vlm, "optimise", optimise_and_keep)
    torch.manual_seed(0)
    losses = vlm.train(tmp_path, steps=12, batch_size=4, learning_rate=3e-3, seed=0, sight_steps=3, log_every=100)
    assert len(losses) == 12 and sum(losses[-3:]) < 0.7 * sum(losses[:3])
    encoder = load_text_encoder(tmp_path)
    visual = list(encoder.mllm.model.visual.parameters())
    assert all(torch.equal(saved, sighted) for saved, sighted in zip(visual, trained[0]))
    vlm.write_random_mllm(tmp_path / "random", encoder.mllm.config.get_text_config().vocab_size, seed=0)
    random_visual = Qwen2_5_VLForConditionalGeneration.from_pretrained(tmp_path / "random").model.visual.parameters()
    assert not all(torch.equal(a, b) for a, b in zip(visual, random_visual))
    assert isinstance(encoder.mllm, Qwen2_5_VLForConditionalGeneration)
    assert encoder.hidden_size == vlm.TEXT["hidden_size"]
    judged = [turn for turn in turns(40, 0, held_out=False) if turn.kind == "judge"][:6]
    inputs, weights = vlm.batch_inputs(encoder, judged, np.random.default_rng(0))
    for ids, row_weights, turn in zip(inputs["input_ids"], weights, judged):  # the judge's decisions weigh most
        decided = encoder.tokenizer.decode(ids[row_weights == vlm.VERDICT_WEIGHT])
        said = [line.rsplit(" ", 1)[-1].rstrip(".") for line in turn.answer.splitlines() if not line.startswith("- ")]
        assert "".join(decided.split()) == "".join(said)
    example = next(examples(1, 0, held_out=True))
    reply = encoder.generate(DESCRIBE_PROMPT, [render(example.output, 64)], max_new_tokens=4)
    assert 0 < len(reply.token_ids) <= 4


def test_a_correction_example_is_the_round_the_loop_runs_after_a_judged_mistake():
    originals = list(examples(300, 4, held_out=False))
    redone = list(with_corrections(originals, 4))
    corrected = [(before, after) for before, after in zip(originals, redone) if after != before]
    assert 0.1 < len(corrected) / len(originals) < 0.2
    assert {before.task_type for before, _ in corrected} == {"t2i", "edit", "in_context"}
    for before, after in corrected:
        attempt = after.inputs[-1]
        assert after.inputs[:-1] == before.inputs and after.output == before.output and after.task_type == "edit"
        assert not result_matches(before.task_type, read_scene(render(attempt, 64)), before.output)
        _, slot = round_references(before.inputs, attempt)  # the loop's slot for the previous result
        head, tail = fold_correction(before.instruction, "\0", slot).split("\0")
        assert after.instruction.startswith(head) and after.instruction.endswith(tail)
        fixes = after.instruction[len(head): len(after.instruction) - len(tail)].split("; ")
        assert all(fix.split()[0] in {"change", "make", "add", "move"} for fix in fixes)
        fixed = parse_judgement("No.\n" + "\n".join(f"- {fix}" for fix in fixes)).correction
        assert after.instruction == fold_correction(before.instruction, fixed, slot)


def test_a_whole_scene_fix_replaces_the_edits_of_a_wrong_result_and_nothing_else():
    plain, whole = list(turns(300, 5, held_out=False)), list(turns(300, 5, held_out=False, whole_scene_fix=True))
    changed = 0
    for example, before, after in zip(examples(300, 5, held_out=False), plain, whole):
        said_before, said_after = parse_judgement(before.answer), parse_judgement(after.answer)
        if before.kind != "judge" or said_before.verdict == "yes":
            assert after == before
            continue
        changed += 1
        assert after.answer.split("\nNo.\n")[0] == before.answer.split("\nNo.\n")[0]  # the same looking
        assert said_after == Judgement("no", f"show {scene_words(example.output)}")
        assert read_scene(render(example.output, 64)).background in said_after.correction
    assert changed > 30


def test_tuning_the_judge_holds_the_features_the_transformer_reads(tmp_path, monkeypatch):
    monkeypatch.setattr(vlm, "TEXT", {**vlm.TEXT, "num_hidden_layers": 1})
    monkeypatch.setattr(vlm, "VISION", {**vlm.VISION, "depth": 1, "fullatt_block_indexes": [0]})
    monkeypatch.setattr(vlm, "SIGHT_BATCH", 8)
    torch.manual_seed(0)
    vlm.train(tmp_path / "base", steps=6, batch_size=4, learning_rate=3e-3, seed=0, sight_steps=2, log_every=100)
    prompts = list(islice(vlm.drawing_prompts(1), 12))
    folded = [prompt for prompt in prompts if "Image 2 is a previous attempt" in prompt and "show a " in prompt]
    assert "" in prompts and folded
    base = load_text_encoder(tmp_path / "base")
    features, mask = base.encode_batch(prompts)
    drift, held = {}, vlm.HOLD_WEIGHT
    for hold in (0.0, held):
        shutil.copytree(tmp_path / "base", tmp_path / str(hold))
        monkeypatch.setattr(vlm, "HOLD_WEIGHT", hold)
        vlm.tune_judge(tmp_path / str(hold), steps=4, batch_size=4, learning_rate=1e-3, seed=0, log_every=100)
        tuned = load_text_encoder(tmp_path / str(hold))
        seeing = zip(tuned.mllm.model.visual.parameters(), base.mllm.model.visual.parameters())
        assert all(torch.equal(a, b) for a, b in seeing)  # the vision tower stays as it was
        moved, _ = tuned.encode_batch(prompts)
        drift[hold] = (moved - features)[mask.bool()].square().mean().item()
    assert 0 < drift[held] < 0.2 * drift[0.0], drift
