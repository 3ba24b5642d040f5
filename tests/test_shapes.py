"""The synthetic shapes data and the pixel measurer the quality benchmark scores samples with."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from omni_core.training.shapes.dataset import examples, held_out_split, scene_from_json, scene_triples, write_dataset
from omni_core.training.shapes.make_default_model import built_once
from omni_core.training.shapes.measure import main_object, read_scene, result_matches, scene_matches
from omni_core.training.shapes.scenes import COLORS, PALETTE, SHAPES, Scene, Shape, draw_shape, render, shape_box


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shapes")
    return write_dataset(folder, train=60, test=24, resolution=64, seed=0)


def test_the_generator_is_deterministic_and_writes_omnigen2_jsonl(dataset, tmp_path):
    train, test = dataset
    again, _ = write_dataset(tmp_path, train=60, test=24, resolution=64, seed=0)
    assert train.read_text() == again.read_text()
    first = json.loads(train.read_text().splitlines()[0])
    assert (tmp_path / first["output_image"]).read_bytes() == (train.parent / first["output_image"]).read_bytes()
    rows = [json.loads(line) for line in train.read_text().splitlines()]
    assert {row["task_type"] for row in rows} == {"t2i", "edit", "in_context"}
    for row in rows:
        expected_inputs = {"t2i": 0, "edit": 1, "in_context": 2}[row["task_type"]]
        assert len(row["input_images"]) == expected_inputs
        assert all((train.parent / p).is_file() for p in [*row["input_images"], row["output_image"]])


def test_held_out_combinations_appear_in_no_training_image():
    triples, pairs = held_out_split(0)
    seen_pairs = set()
    for example in examples(600, seed=0, held_out=False):
        for scene in (*example.inputs, example.output):
            assert not scene_triples(scene) & triples
        if example.task_type == "in_context":
            seen_pairs.add(tuple((s.color, s.shape) for s in example.output.shapes))
    assert not seen_pairs & pairs
    for example in examples(30, seed=0, held_out=True):
        if example.task_type == "in_context":
            assert tuple((s.color, s.shape) for s in example.output.shapes) in pairs
        else:
            assert scene_triples(example.inputs[0] if example.inputs else example.output) & triples


def test_the_measurer_reads_clean_and_blurred_renders_of_the_held_out_split(dataset):
    _, test = dataset
    for line in test.read_text().splitlines():
        row = json.loads(line)
        scene = scene_from_json(row["scene"])
        image = Image.open(test.parent / row["output_image"])
        assert scene_matches(read_scene(image), scene), row["instruction"]
        assert scene_matches(read_scene(image.filter(ImageFilter.GaussianBlur(1.2))), scene), row["instruction"]


@pytest.mark.parametrize("color", COLORS[:4])
@pytest.mark.parametrize("shape", SHAPES)
def test_every_colour_and_shape_reads_back_at_256_pixels(color, shape):
    background = "white" if color != "white" else "black"
    found = main_object(read_scene(render(Scene(background, (Shape(color, shape, 0.4, (0.4, 0.6)),)), 256)))
    assert (found.color, found.shape) == (color, shape)
    assert np.allclose(found.center, (0.4, 0.6), atol=0.02)


SAMPLES = Path(__file__).parent / "fixtures" / "shapes_samples"


@pytest.mark.parametrize("sample", json.loads((SAMPLES / "samples.json").read_text()), ids=lambda s: s["file"])
def test_the_measurer_reads_the_bundled_models_own_samples(sample):
    """Samples checked by eye (fixtures/shapes_samples/README.md): rounded triangles, rims, blur."""
    image = Image.open(SAMPLES / sample["file"])
    assert result_matches(sample["task_type"], read_scene(image), scene_from_json(sample["scene"])), sample["instruction"]


def rimmed(color: str, rim: str, background: str, shape: str, size: float) -> Image.Image:
    """A centred object drawn in `rim`, then a little inside in `color`, blurred: the edge a decoded sample has."""
    image = render(Scene(background, (Shape(rim, shape, size, (0.5, 0.5)),)), 64)
    x0, y0, x1, y1 = shape_box(Shape(color, shape, size, (0.5, 0.5)), 64)
    draw_shape(ImageDraw.Draw(image), shape, (x0 + 2.5, y0 + 4, x1 - 2.5, y1 - 2), PALETTE[color])
    return image.filter(ImageFilter.GaussianBlur(1.0))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("size", [0.34, 0.56])
@pytest.mark.parametrize("color, rim, background", [("orange", "red", "green"), ("yellow", "orange", "red"),
                                                    ("white", "yellow", "blue")])
def test_a_rim_of_another_colour_belongs_to_its_object(color, rim, background, shape, size):
    image = rimmed(color, rim, background, shape, size)
    assert scene_matches(read_scene(image), Scene(background, (Shape(color, shape, size, (0.5, 0.5)),)))


def test_the_measurer_fails_wrong_images():
    scene = Scene("blue", (Shape("red", "circle", 0.5, (0.5, 0.5)),))
    wrong = {
        "colour": Scene("blue", (Shape("orange", "circle", 0.5, (0.5, 0.5)),)),
        "shape": Scene("blue", (Shape("red", "square", 0.5, (0.5, 0.5)),)),
        "triangle": Scene("blue", (Shape("red", "triangle", 0.5, (0.5, 0.5)),)),
        "background": Scene("green", scene.shapes),
        "position": Scene("blue", (Shape("red", "circle", 0.34, (0.27, 0.5)),)),
        "extra object": Scene("blue", (*scene.shapes, Shape("white", "square", 0.2, (0.85, 0.15)))),
    }
    assert scene_matches(read_scene(render(scene, 64)), scene)
    for what, other in wrong.items():
        assert not scene_matches(read_scene(render(other, 64)), scene), what
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    assert not scene_matches(read_scene(noise), scene)
    flat = render(Scene("blue", ()), 64)
    assert main_object(read_scene(flat)) is None


def test_the_bundled_text_encoder_tells_captions_apart():
    """The bundled MLLM gives captions that differ in one word (colour, shape, size or background) clearly different
    features, so a transformer can learn to read them. Trained on next tokens alone it did not: captions differing in
    their shape lay 0.03 of a token's norm apart (docs/training.md); its identity head keeps them over 0.4 apart."""
    import torch

    import omni_core

    encoder = omni_core.load_model(omni_core.DEFAULT_MODEL_DIR).text_encoder
    captions = [f"a {size}{color} {shape} on a {background} background" for size in ("", "small ")
                for color in ("red", "purple") for shape in ("circle", "triangle") for background in ("blue", "white")]
    features, mask = encoder.encode_batch(captions)
    flat = (features * mask[..., None]).flatten(1)  # padding zeroed: the features the transformer attends to
    distances = torch.cdist(flat, flat)[~torch.eye(len(captions), dtype=torch.bool)]
    typical_token = features[mask.bool()].norm(dim=-1).mean()
    assert distances.min() > 0.25 * typical_token, (distances.min() / typical_token).item()


def test_a_recipe_stage_is_built_once_and_one_cut_short_starts_again_from_nothing(tmp_path):
    built = []

    def build(partial):
        partial.mkdir()
        (partial / "weights").write_text(str(len(built)))
        built.append(partial)

    def cut_short(partial):
        partial.mkdir()
        (partial / "half").write_text("")
        raise KeyboardInterrupt

    folder = tmp_path / "stage"
    with pytest.raises(KeyboardInterrupt):
        built_once(folder, cut_short)
    assert not folder.exists()
    assert built_once(folder, build) == folder and not (folder / "half").exists()
    assert built_once(folder, build) == folder and (folder / "weights").read_text() == "0" and len(built) == 1
    assert built == [tmp_path / "stage.partial"] and not built[0].exists()
