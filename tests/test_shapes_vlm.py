"""The bundled MLLM's lessons (training/shapes/conversations.py) and its training (training/shapes/vlm.py): the judge
answers it learns agree with the pixel measurer, its fixes are what the reflection loop reads, and the model it
trains is a Qwen2.5-VL that the engine's loaders read."""

import torch
from transformers import Qwen2_5_VLForConditionalGeneration

from omni_core.loading.text_encoder_loader import load_text_encoder, load_tokenizer
from omni_core.reflection import parse_judgement
from omni_core.text_encoder import IMAGE_REQUEST
from omni_core.training.shapes import vlm
from omni_core.training.shapes.conversations import DESCRIBE_PROMPT, scene_words, turns
from omni_core.training.shapes.dataset import examples
from omni_core.training.shapes.measure import main_object, read_scene, scene_matches
from omni_core.training.shapes.scenes import render


def measured_right(task_type, image, expected) -> bool:
    """What the quality benchmark counts right: a text-to-image prompt names the colour, shape and background (not a
    place), an edit or a composition the exact scene."""
    found = read_scene(image)
    if task_type == "t2i":
        main, want = main_object(found), expected.shapes[0]
        return main is not None and (main.color, main.shape, found.background) == (
            want.color, want.shape, expected.background)
    return scene_matches(found, expected)


def test_judge_answers_agree_with_the_pixel_measurer_and_name_fixes_the_loop_reads():
    count, kinds, verdicts = 400, set(), {"yes": 0, "no": 0}
    for example, turn in zip(examples(count, 3, held_out=False), turns(count, 3, held_out=False)):
        kinds.add(turn.kind)
        if turn.kind == "describe":
            assert turn.prompt == DESCRIBE_PROMPT and len(turn.images) == 1
            assert turn.answer == scene_words(turn.images[0])
            continue
        assert turn.images[: len(example.inputs)] == example.inputs
        if turn.kind == "draw":
            assert (turn.prompt, turn.answer) == (example.instruction, IMAGE_REQUEST)
            continue
        assert f'"{example.instruction}"' in turn.prompt
        judgement = parse_judgement(turn.answer)
        verdicts[judgement.verdict] += 1
        right = measured_right(example.task_type, render(turn.images[-1], 64), example.output)
        assert right == (judgement.verdict == "yes"), (example, turn)
        if not right:
            assert judgement.correction and judgement.correction.split()[0] in {"change", "make", "add", "move"}
    assert kinds == {"describe", "judge", "draw"}
    assert min(verdicts.values()) > 0.35 * sum(verdicts.values())


def test_the_tokenizer_keeps_qwen_special_ids_reads_any_text_and_knows_the_scene_words(tmp_path):
    vlm.write_processor(tmp_path, vlm.fit_tokenizer(vlm.corpus(300, 0), vocab_size=600))
    encoder_tokenizer = load_tokenizer(tmp_path)
    assert encoder_tokenizer.convert_tokens_to_ids("<|image_pad|>") == 12 and encoder_tokenizer.pad_token_id == 0
    for text in ("a purple triangle on a white background", "Zeichne ein Dreieck, bitte — 三角形 🙂"):
        ids = encoder_tokenizer(text).input_ids
        assert encoder_tokenizer.decode(ids) == text
    assert len(encoder_tokenizer(" purple triangle background").input_ids) == 3


def test_short_training_phases_write_a_qwen25_vl_the_loaders_read_and_the_vision_phase_keeps_text_features(
        tmp_path, monkeypatch):
    monkeypatch.setattr(vlm, "TEXT", {**vlm.TEXT, "num_hidden_layers": 1})
    monkeypatch.setattr(vlm, "VISION", {**vlm.VISION, "depth": 1, "fullatt_block_indexes": [0]})
    torch.manual_seed(0)
    losses = vlm.train(tmp_path, steps=12, batch_size=4, learning_rate=3e-3, seed=0, log_every=100)
    assert sum(losses[-3:]) < 0.7 * sum(losses[:3])
    encoder = load_text_encoder(tmp_path)
    assert isinstance(encoder.mllm, Qwen2_5_VLForConditionalGeneration)
    assert encoder.hidden_size == vlm.TEXT["hidden_size"]
    example = next(examples(1, 0, held_out=True))
    reply = encoder.generate(DESCRIBE_PROMPT, [render(example.output, 64)], max_new_tokens=4)
    assert 0 < len(reply.token_ids) <= 4

    # phase 2 trains the vision tower alone: the text features the transformer reads stay bit for bit the same
    prompts = ["a red circle on a blue background", "make the triangle orange"]
    features, _ = encoder.encode_batch(prompts)
    vision = {k: v.clone() for k, v in encoder.mllm.model.visual.state_dict().items()}
    vlm.train_vision(tmp_path, steps=2, batch_size=4, learning_rate=1e-3, seed=5, log_every=100)
    after = load_text_encoder(tmp_path)
    assert torch.equal(after.encode_batch(prompts)[0], features)
    assert any(not torch.equal(v, after.mllm.model.visual.state_dict()[k]) for k, v in vision.items())
