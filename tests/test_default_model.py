"""The embedded default model really draws, sees and judges: its answers on held-out examples read back right.

The examples are the first held-out ones of the synthetic dataset (colour/shape/background triples and object pairs
no training image has); the measurer (omni_core/training/shapes/measure.py) reads colour, shape and place from the
pixels without the model. Sampled at the bundled model's text guidance (2.5), 20 steps, the floors below sit just
under what the shipped model measured here (t2i colour 11/12, shape 11/12; recolour edits 7/8; exact edits 8/12;
exact in-context pairs 5/8 joint and 5/8 with the LoRA computed once; described 12/12; judge verdicts 20/24, the
fix exactly the scene asked for 7/12), far above chance (colour 1/7, shape 1/3, an exact scene about 0): a
regression guard. benchmarks/quality.py measures the issue's targets on 48 held-out examples per task.
"""

import numpy as np
import pytest
import torch

import omni_core
from omni_core.judges import encoder_judge
from omni_core.reflection import Judgement, judge_prompt, parse_judgement
from omni_core.training.shapes.conversations import DESCRIBE_PROMPT, names_scene, scene_fix, wrong_candidate
from omni_core.training.shapes.dataset import examples
from omni_core.training.shapes.measure import main_object, read_scene, scene_matches
from omni_core.training.shapes.scenes import render

STEPS = 20
PROMPTS = 12
MIN_COLOR = 10  # of PROMPTS
MIN_SHAPE = 9
RECOLOURS = 8
MIN_RECOLOURED = 6
EDITS = 12  # exact scenes, every kind of edit
MIN_EXACT_EDITS = 6
PAIRS = 8  # in-context, exact scenes
MIN_EXACT_PAIRS = 4
JUDGED = 12  # held-out pictures described, and judged right and wrong (2 verdicts each)
MIN_DESCRIBED = 11
MIN_JUDGED = 18
MIN_WHOLE_SCENE_FIXES = 6  # of the JUDGED wrong results: the fix names exactly the scene asked for
SETTINGS = dict(width=64, height=64, steps=STEPS, text_guidance_scale=omni_core.DEFAULT_MODEL_TEXT_GUIDANCE)
FIXTURE = omni_core.DEFAULT_MODEL_DIR.parents[1] / "tests" / "fixtures" / "omnigen2-tiny"


@pytest.fixture(scope="module")
def default_model():
    return omni_core.load_model()


def held_out(task_type, count, keep=lambda example: True):
    chosen = [e for e in examples(20 * count, seed=0, held_out=True) if e.task_type == task_type and keep(e)]
    return chosen[:count]


def test_held_out_text_to_image_prompts_get_their_colour_and_shape(default_model):
    color = shape = 0
    for i, example in enumerate(held_out("t2i", PROMPTS)):
        image = default_model.generate(example.instruction, seed=i, **SETTINGS).images[0]
        found, want = main_object(read_scene(image)), example.output.shapes[0]
        color += found is not None and found.color == want.color
        shape += found is not None and found.shape == want.shape
    assert color >= MIN_COLOR and shape >= MIN_SHAPE, (color, shape)


def test_recolour_edits_give_the_object_the_asked_colour(default_model):
    recolours = held_out("edit", RECOLOURS, keep=lambda e: e.instruction.startswith(("make", "change")))
    done = 0
    for i, example in enumerate(recolours):
        source = render(example.inputs[0], 64)
        image = default_model.generate(example.instruction, images=[source], seed=i, **SETTINGS)
        found = main_object(read_scene(image.images[0]))
        done += found is not None and found.color == example.output.shapes[0].color
    assert done >= MIN_RECOLOURED, done


def test_held_out_edits_and_compositions_come_out_exactly_right(default_model):
    """Every object's colour, shape and place and the background, as quality.py scores them: edits of each kind in
    turn, and in-context pairs with the joint model and with the independent-condition LoRA computed once."""
    edits = held_out("edit", EDITS)
    exact_edits = sum(
        scene_matches(read_scene(default_model.generate(e.instruction, images=[render(e.inputs[0], 64)], seed=i,
                                                        **SETTINGS).images[0]), e.output)
        for i, e in enumerate(edits)
    )
    lora = omni_core.DEFAULT_MODEL_DIR / omni_core.INDEPENDENT_CONDITION_LORA
    independent = default_model.with_loras([(lora, 1.0)])
    exact_pairs = {"joint": 0, "independent_once": 0}
    for i, e in enumerate(held_out("in_context", PAIRS)):
        condition = default_model.encode_condition(e.instruction, images=[render(scene, 64) for scene in e.inputs])
        joint = default_model.sample(condition, seed=i, **SETTINGS).images[0]
        once = independent.sample(condition, seed=i, cache_per_n_steps=10**6, independent_condition=True,
                                  **SETTINGS).images[0]
        exact_pairs["joint"] += scene_matches(read_scene(joint), e.output)
        exact_pairs["independent_once"] += scene_matches(read_scene(once), e.output)
    assert exact_edits >= MIN_EXACT_EDITS and min(exact_pairs.values()) >= MIN_EXACT_PAIRS, (exact_edits, exact_pairs)


def test_its_own_mllm_describes_and_judges_held_out_pictures(default_model):
    """The Chat node's describe answer names every object's colour and shape and the background; the Reflect node's
    own judge says yes to the result asked for and no to one with a mistake, with the whole scene asked for as its
    fix (drawn exactly, so that this is about the judge, not the transformer)."""
    described = judged = whole_scene_fixes = 0
    rng = np.random.default_rng(0)
    judge = encoder_judge(default_model.text_encoder)
    chosen = held_out("t2i", JUDGED // 2) + held_out("edit", JUDGED // 2)
    for example in chosen:
        picture = render(example.output, 64)
        described += names_scene(default_model.chat(DESCRIBE_PROMPT, [picture], respond="text").text, example.output)
        wrong, _ = wrong_candidate(rng, example)
        question = judge_prompt(example.instruction, len(example.inputs))
        inputs = [render(scene, 64) for scene in example.inputs]
        right_says = parse_judgement(judge(question, [*inputs, picture]))
        wrong_says = parse_judgement(judge(question, [*inputs, render(wrong, 64)]))
        judged += right_says.verdict == "yes"
        judged += wrong_says.verdict == "no" and bool(wrong_says.correction)
        whole_scene_fixes += wrong_says == Judgement("no", scene_fix(example.output))
    assert described >= MIN_DESCRIBED and judged >= MIN_JUDGED, (described, judged)
    assert whole_scene_fixes >= MIN_WHOLE_SCENE_FIXES, whole_scene_fixes


def test_the_bundled_model_is_the_trained_one_not_the_random_fixture(default_model):
    fixture = omni_core.load_model(FIXTURE)
    assert default_model.vae.config.block_out_channels != fixture.vae.config.block_out_channels
    assert default_model.transformer.config != fixture.transformer.config


def test_without_a_size_the_bundled_model_draws_at_its_training_size(default_model):
    """The official automatic size is 1024, where a model trained at 64 x 64 draws nothing: the bundled model's own
    default is its training size (in the API, the command line and the nodes' width = height = 0); every other
    model keeps the official 1024."""
    condition = default_model.encode_condition("a red circle on a blue background")
    side = omni_core.DEFAULT_MODEL_SIZE
    assert default_model.output_size(condition, None, None, condition.max_pixels, None) == ((side, side), (side, side))
    with_lora = default_model.with_loras([(omni_core.DEFAULT_MODEL_DIR / omni_core.INDEPENDENT_CONDITION_LORA, 1.0)])
    assert with_lora.output_size(condition, None, 128, condition.max_pixels, None) == ((128, side), (128, side))  # (H, W)
    fixture = omni_core.load_model(FIXTURE)
    assert fixture.output_size(fixture.encode_condition("x"), None, None, 1024 * 1024, None) == ((1024, 1024),) * 2


def test_without_a_text_guidance_the_bundled_model_samples_at_its_own(default_model):
    """The official 5.0 is too strong for the bundled model (docs/training.md): None takes the model's own 2.5; every
    other model keeps the official default."""
    small = dict(width=64, height=64, steps=2, seed=1)
    own = default_model.generate("a red circle on a blue background", **small).images
    tuned = default_model.generate("a red circle on a blue background", text_guidance_scale=2.5, **small).images
    official = default_model.generate("a red circle on a blue background", text_guidance_scale=5.0, **small).images
    assert torch.equal(own, tuned) and not torch.equal(own, official)
    assert omni_core.load_model(FIXTURE).default_text_guidance == 5.0


def test_a_copy_of_the_bundled_folder_keeps_its_defaults_and_bad_declarations_name_the_key(tmp_path):
    """The defaults live in the folder's model_index.json, not in where the folder sits: a copy (say, into ComfyUI's
    models/omnigen2/) draws at 64 x 64 with guidance 2.5 as the bundled one does; a folder declaring none keeps the
    official 1024 and 5.0; a wrong declaration fails at load, naming the file and the key."""
    import json
    import shutil

    from omni_core.errors import ModelFileError
    from omni_core.loading.model_loader import FOLDER_DEFAULTS_KEY

    copy = shutil.copytree(omni_core.DEFAULT_MODEL_DIR, tmp_path / "my-shapes-model")
    model = omni_core.load_model(copy)
    assert (model.default_size, model.default_text_guidance) == (omni_core.DEFAULT_MODEL_SIZE, omni_core.DEFAULT_MODEL_TEXT_GUIDANCE)
    index = copy / "model_index.json"
    declared = json.loads(index.read_text())
    undeclared = {key: value for key, value in declared.items() if key != FOLDER_DEFAULTS_KEY}
    index.write_text(json.dumps(undeclared))
    official = omni_core.load_model(copy)
    assert (official.default_size, official.default_text_guidance) == (1024, 5.0)
    (copy / "transformer" / "diffusion_pytorch_model.safetensors").unlink()  # checked before any weights load
    for bad in ({"size": 60}, {"size": "64"}, {"text_guidance_scale": -1}, {"steps": 20}, [64]):
        index.write_text(json.dumps({**undeclared, FOLDER_DEFAULTS_KEY: bad}))
        with pytest.raises(ModelFileError, match=FOLDER_DEFAULTS_KEY):
            omni_core.load_model(copy)
