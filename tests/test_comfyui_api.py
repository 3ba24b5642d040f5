"""The pack in a real ComfyUI server, through its HTTP API (one server per session: the `comfyui` fixture).

Every example workflow is converted with the server's own /object_info, queued with /prompt and run on the bundled
default model; the pictures ComfyUI saved must equal, within Save Image's 8-bit rounding, what the same prompt gives
when its nodes run directly in this process on the engine (no ComfyUI, fresh model). Bad inputs come back as
ComfyUI's validation or execution errors naming the input; /interrupt stops a run within one step (a chat answer
between tokens) and leaves nothing behind for the next; reference features never cross from one workflow to the next; models unloaded by ComfyUI's
memory manager reload and give the same pictures.
"""

from __future__ import annotations

import copy
import io
import json
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from comfy_workflow import CORE_OBJECT_INFO, node_info, run_directly, saved_by_save_image, to_api_prompt
from comfyui_server import BROKEN_MODEL_NAME, FIXTURE_MODEL, MODEL_NAME, PACK_FOLDER, SINGLE_FILES
from loopback import HTTPError
from omni_core.training.shapes.conversations import scene_words
from omni_core.training.shapes.measure import main_object, read_scene, scene_matches
from omni_core.training.shapes.scenes import PAIR_SIZE, POSITIONS, SIZES, Scene, Shape
from conftest import ROOT, load_pack
from workflow_thumbnails import enlarge

WORKFLOWS = sorted((ROOT / "example_workflows").glob("*.json"))
# Sizes and counts small enough for seconds per run on a 2-core CPU, whatever the example asks for.
SMALL = {"steps": 3, "width": 64, "height": 48, "max_pixels": 64 * 64, "max_input_image_side_length": 64,
         "max_new_tokens": 8, "max_rounds": 2}
JPEG_LEVELS = 2  # mean difference a thumbnail's JPEG compression leaves (a different picture differs by tens)
ROUNDING = 1  # Save Image truncates to 8 bits: the same floats from two torch builds may land one level apart


@pytest.fixture(scope="module")
def object_info(comfyui):
    return comfyui.get("/object_info")


@pytest.fixture(scope="module")
def classes():
    return load_pack().NODE_CLASS_MAPPINGS


@pytest.fixture()
def direct(comfyui, classes, monkeypatch):
    """run_directly(prompt) with the server's model folders and input pictures."""
    monkeypatch.setenv("OMNIGEN2_MODEL_DIRS", str(comfyui.models))
    return lambda prompt: run_directly(prompt, classes, comfyui.home / "input")


def shrink(prompt: dict) -> dict:
    for node in prompt.values():
        # the bundled MLLM, taught only the shapes' questions, does not answer <|img|> to the release's prompts: a
        # turn that may draw is made to draw
        if node["class_type"] == "OmniGen2Chat" and node["inputs"].get("respond") == "auto":
            node["inputs"]["respond"] = "image"
        for name, small in SMALL.items():
            value = node["inputs"].get(name)
            if isinstance(value, int) and not isinstance(value, bool) and value > small:
                node["inputs"][name] = small
    return prompt


def example(name: str, object_info: dict) -> dict:
    return shrink(to_api_prompt(json.loads((ROOT / "example_workflows" / name).read_text()), object_info))


def node_of(prompt: dict, class_type: str) -> str:
    (node_id,) = [k for k, n in prompt.items() if n["class_type"] == class_type]
    return node_id


def assert_same_pictures(server: dict, expected: dict, tolerance: int = ROUNDING) -> None:
    assert server.keys() == expected.keys()
    for node_id, pictures in expected.items():
        assert len(server[node_id]) == len(pictures), node_id
        for got, want in zip(server[node_id], pictures):
            assert got.shape == want.shape, (node_id, got.shape, want.shape)
            difference = np.abs(got.astype(np.int16) - want.astype(np.int16)).max()
            assert difference <= tolerance, f"node {node_id}: pictures differ by up to {difference} levels"


def messages(entry: dict, kind: str) -> list[dict]:
    return [data for name, data in entry["status"]["messages"] if name == kind]


def test_object_info_describes_the_pack(comfyui, object_info, classes):
    for name, cls in classes.items():
        assert object_info[name]["category"] == "OmniGen2", name
        assert object_info[name]["input_order"] == node_info(cls)["input_order"], name
        assert object_info[name]["output"] == list(cls.RETURN_TYPES), name
    assert MODEL_NAME in object_info["LoadOmniGen2"]["input"]["required"]["model_folder"][0]
    assert any(path.endswith("omnigen2_stats.js") for path in comfyui.get("/extensions"))
    templates = comfyui.get("/api/workflow_templates")
    assert sorted(templates[PACK_FOLDER]) == sorted(path.stem for path in WORKFLOWS)


def test_recorded_core_object_info_is_the_servers(object_info):
    """tests/fixtures/comfyui_core_object_info.json (the offline checks' core nodes) is what this ComfyUI says."""
    for name, recorded in CORE_OBJECT_INFO.items():
        assert {key: object_info[name][key] for key in recorded} == recorded, name


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_example_runs_in_comfyui_as_on_the_engine(path, comfyui, object_info, direct):
    prompt = example(path.name, object_info)
    entry = comfyui.run(prompt)
    saved = comfyui.saved_images(entry)
    assert saved, (path.name, entry["outputs"])
    assert_same_pictures(saved, direct(prompt))
    for node_id, output in entry["outputs"].items():
        for stats in output.get("omnigen2_stats", []):  # a node that sampled reports the prompt's steps
            if "steps" in stats:
                assert stats["steps"] == prompt[node_id]["inputs"]["steps"]
    for pictures in saved.values():
        assert all(picture.std() > 0 for picture in pictures), "a flat picture says nothing about the model"


def test_single_files_load_from_comfyuis_folders(comfyui, object_info, direct):
    """Load OmniGen2 (single files) lists and loads files from ComfyUI's own model folders (the tokenizer from a
    models/omnigen2 folder); the pictures are those of the same files loaded directly."""
    listed = object_info["LoadOmniGen2SingleFiles"]["input"]["required"]
    prompt = example("omnigen2_instruction_edit.json", object_info)
    loader = node_of(prompt, "LoadOmniGen2")
    files = {part: name for part, (_, name, _) in SINGLE_FILES.items()}
    for part, name in files.items():
        assert name in listed[part][0], (part, listed[part][0])
    assert FIXTURE_MODEL.name in listed["tokenizer"][0]
    prompt[loader] = {"class_type": "LoadOmniGen2SingleFiles",
                      "inputs": {**files, "tokenizer": FIXTURE_MODEL.name, "weight_dtype": "auto"}}
    saved = comfyui.saved_images(comfyui.run(prompt))
    # Outside ComfyUI there are no model folders to choose from: the same files by path.
    paths = {part: str(FIXTURE_MODEL / source) for part, (_, _, source) in SINGLE_FILES.items()}
    prompt[loader]["inputs"].update(**paths, tokenizer=str(FIXTURE_MODEL / "processor"))
    assert_same_pictures(saved, direct(prompt))


def rejected(comfyui, prompt: dict) -> dict:
    """ComfyUI's validation answer to a prompt it refuses: node id -> its errors."""
    with pytest.raises(HTTPError) as refused:
        comfyui.queue(prompt)
    assert refused.value.status == 400, refused.value
    return refused.value.body["node_errors"]


def failed(comfyui, prompt: dict) -> dict:
    """The execution_error message of a prompt that validates but fails while running."""
    entry = comfyui.wait(comfyui.queue(prompt))
    assert entry["status"]["status_str"] == "error", entry["status"]
    (error,) = messages(entry, "execution_error")
    return error


def test_missing_model_file_is_an_error_naming_it(comfyui, object_info):
    prompt = example("omnigen2_text_to_image.json", object_info)
    loader = node_of(prompt, "LoadOmniGen2")
    prompt[loader]["inputs"]["model_folder"] = "no-such-model"
    errors = rejected(comfyui, prompt)
    assert [e["extra_info"]["input_name"] for e in errors[loader]["errors"]] == ["model_folder"]
    # A folder ComfyUI lists whose VAE weights are missing: the load fails and says which file.
    prompt[loader]["inputs"]["model_folder"] = BROKEN_MODEL_NAME
    error = failed(comfyui, prompt)
    assert error["node_type"] == "LoadOmniGen2" and error["exception_type"].endswith("ModelFileError")
    assert "vae" in error["exception_message"], error["exception_message"]


def test_six_reference_images_are_an_error(comfyui, object_info):
    prompt = example("omnigen2_instruction_edit.json", object_info)
    encode = node_of(prompt, "OmniGen2ConditionEncode")
    prompt["100"] = {"class_type": "RepeatImageBatch", "inputs": {"image": prompt[encode]["inputs"]["image_1"], "amount": 6}}
    prompt[encode]["inputs"]["image_1"] = ["100", 0]
    error = failed(comfyui, prompt)
    assert error["node_type"] == "OmniGen2ConditionEncode" and error["node_id"] == encode
    assert "6 reference images" in error["exception_message"] and "at most 5" in error["exception_message"]


def test_impossible_sizes_are_errors_naming_the_input(comfyui, object_info):
    prompt = example("omnigen2_text_to_image.json", object_info)
    sampler = node_of(prompt, "OmniGen2CachedSampler")
    prompt[sampler]["inputs"]["width"] = 100000  # above the widget's max: ComfyUI's own validation refuses it
    errors = rejected(comfyui, prompt)
    assert [e["extra_info"]["input_name"] for e in errors[sampler]["errors"]] == ["width"]
    prompt[sampler]["inputs"]["width"] = 40  # within range but no multiple of 16: the node refuses it
    error = failed(comfyui, prompt)
    assert error["node_id"] == sampler and error["exception_message"].startswith("width=40")


def _progress_until_interrupted(listener, prompt_id: str, interrupt_after: int, interrupt) -> tuple[int, int]:
    """Read the WebSocket until `prompt_id` is interrupted; interrupt once it reported `interrupt_after` steps.
    (step seen when interrupting, last step reported)."""
    seen_at_interrupt, last = None, 0
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        message = listener.receive()
        data = message.get("data") or {}
        if data.get("prompt_id") != prompt_id:
            continue
        if message["type"] == "progress":
            last = data["value"]
            if seen_at_interrupt is None and last >= interrupt_after:
                seen_at_interrupt = last
                interrupt()
        if message["type"] in ("execution_interrupted", "execution_error", "execution_success"):
            assert message["type"] == "execution_interrupted", message
            return seen_at_interrupt, last
    raise AssertionError("the long run was never interrupted")


def test_interrupt_stops_within_a_step_and_leaves_no_stale_state(comfyui, object_info):
    prompt = example("omnigen2_instruction_edit.json", object_info)
    sampler = node_of(prompt, "OmniGen2CachedSampler")
    prompt[sampler]["inputs"].update(seed=7, cache_per_n_steps=2)
    alone = comfyui.saved_images(comfyui.run(prompt))

    long = copy.deepcopy(prompt)  # the same condition (ComfyUI reuses it from its cache), reference caching on
    # Steps long next to loopback latencies (a batch of 16 at 512 x 512: about 0.5 s each on the bundled model), so
    # the step the client saw is the one the server was in when the interrupt arrived.
    long[sampler]["inputs"].update(seed=8, steps=1000, width=512, height=512, batch_size=16)
    client = str(uuid.uuid4())
    listener = comfyui.listen(client)
    try:
        long_id = comfyui.queue(long, client)
        next_id = comfyui.queue(prompt, client)  # waits in the queue behind the long run
        at, last = _progress_until_interrupted(
            listener, long_id, 3, lambda: comfyui.post("/interrupt", {"prompt_id": long_id}))
    finally:
        listener.close()
    assert last <= at + 1, f"interrupted at step {at}, still ran to step {last}"
    after = comfyui.wait(next_id)
    assert after["status"]["status_str"] == "success", after["status"]
    cached = {node for data in messages(after, "execution_cached") for node in data["nodes"]}
    assert sampler not in cached, "the sampler must really run again after the interrupted run"
    assert_same_pictures(comfyui.saved_images(after), alone, tolerance=0)


def test_interrupt_stops_a_chat_answer_between_tokens(comfyui, object_info):
    """The Chat node's answer reports its tokens as progress, and /interrupt ends it there. The fixture model's random
    MLLM repeats one token and never writes an end of turn, so an answer of 4096 tokens would run to the end if
    nothing stopped it (the bundled MLLM ends its answers to these questions within a few tokens, which an interrupt
    would race)."""
    prompt = example("omnigen2_chat.json", object_info)
    prompt[node_of(prompt, "LoadOmniGen2")]["inputs"]["model_folder"] = FIXTURE_MODEL.name
    for node_id in [k for k, n in prompt.items() if n["class_type"] == "OmniGen2Chat"]:
        prompt[node_id]["inputs"].update(respond="text", max_new_tokens=4096)
    client = str(uuid.uuid4())
    listener = comfyui.listen(client)
    try:
        prompt_id = comfyui.queue(prompt, client)
        at, last = _progress_until_interrupted(
            listener, prompt_id, 3, lambda: comfyui.post("/interrupt", {"prompt_id": prompt_id}))
    finally:
        listener.close()
    assert 3 <= at <= last < 4096, (at, last)


def test_different_reference_images_never_share_features(comfyui, object_info, direct):
    first = example("omnigen2_instruction_edit.json", object_info)
    sampler = node_of(first, "OmniGen2CachedSampler")
    first[sampler]["inputs"].update(seed=11, cache_per_n_steps=100)  # features computed once and reused
    second = copy.deepcopy(first)
    second[node_of(second, "LoadImage")]["inputs"]["image"] = "example_b.png"
    ids = [comfyui.queue(first), comfyui.queue(second)]  # back to back
    results = []
    for prompt_id in ids:
        entry = comfyui.wait(prompt_id)
        assert entry["status"]["status_str"] == "success", entry["status"]
        results.append(comfyui.saved_images(entry))
    assert_same_pictures(results[0], direct(first))
    assert_same_pictures(results[1], direct(second))
    (save,) = results[0]
    # A mix-up must show beyond the rounding allowed above, or this test could not fail.
    difference = np.abs(results[0][save][0].astype(np.int16) - results[1][save][0].astype(np.int16)).max()
    assert difference > 2 * ROUNDING, f"the two references give pictures only {difference} levels apart"


def test_models_unload_and_reload_through_model_management(comfyui, object_info):
    """Two OmniGen2 models loaded, ComfyUI's unload_all_models() in between two identical samplings of one of them
    (by the test-only node pack tests/comfyui_probe/): both are unloaded, the next run reloads, same pictures."""
    prompt = example("omnigen2_text_to_image.json", object_info)
    loader, encode = node_of(prompt, "LoadOmniGen2"), node_of(prompt, "OmniGen2ConditionEncode")
    sampler, save = node_of(prompt, "OmniGen2CachedSampler"), node_of(prompt, "SaveImage")
    prompt[sampler]["inputs"]["seed"] = 21
    other = {f"2{k}": copy.deepcopy(prompt[k]) for k in (loader, encode, sampler)}
    other[f"2{loader}"]["inputs"]["weight_dtype"] = "fp32"  # a second model (another loader input, another model)
    other[f"2{encode}"]["inputs"]["model"] = [f"2{loader}", 0]
    other[f"2{sampler}"]["inputs"].update(model=[f"2{loader}", 0], condition=[f"2{encode}", 0])
    prompt.update(other)
    prompt["90"] = {"class_type": "OmniGen2TestUnloadAll", "inputs": {
        "model": [loader, 0], "after": [sampler, 0], "other_model": [f"2{loader}", 0], "after_other": [f"2{sampler}", 0]}}
    again = copy.deepcopy(prompt[sampler])
    again["inputs"]["model"] = ["90", 0]
    prompt["91"] = again
    prompt["92"] = {"class_type": "SaveImage", "inputs": {"images": ["91", 0], "filename_prefix": "reloaded"}}
    prompt["93"] = {"class_type": "OmniGen2TestLoadedModels", "inputs": {
        "model": [loader, 0], "after": ["91", 0], "other_model": [f"2{loader}", 0]}}
    entry = comfyui.run(prompt)

    def ours(rows):
        return {row["owner"]: row["loaded_bytes"] for row in rows if row["owner"]}

    unload = entry["outputs"]["90"]
    before, after = ours(unload["loaded_before"]), ours(unload["loaded_after"])
    for owner in ("model", "other_model"):
        for part in ("transformer", "vae"):
            assert before[f"{owner}.{part}"] > 0, before
    assert after == {}, f"still loaded after unload_all_models: {after}"
    reloaded = ours(entry["outputs"]["93"]["loaded"])
    assert reloaded["model.transformer"] > 0 and reloaded["model.vae"] > 0, reloaded
    assert "other_model.transformer" not in reloaded
    saved = comfyui.saved_images(entry)
    np.testing.assert_array_equal(saved["92"][0], saved[save][0])


BUNDLED_EXPECTED = {  # what each bundled-model example's prompt asks for, as a scene the measurer checks
    "omnigen2_bundled_text_to_image.json": Scene("blue", (Shape("red", "circle", SIZES["large"], POSITIONS["center"]),)),
    "omnigen2_bundled_edit.json": Scene("purple", (Shape("orange", "triangle", SIZES["large"], POSITIONS["center"]),)),
    # the chat's turn that draws: it answers <|img|> to the edit and draws it
    "omnigen2_bundled_chat.json": Scene("orange", (Shape("green", "square", SIZES["large"], POSITIONS["center"]),)),
    # the loop's last round: round 1 draws a rounded blob, the judge asks for a red square, round 2 draws one
    "omnigen2_bundled_reflect.json": Scene("yellow", (Shape("red", "square", SIZES["small"], POSITIONS["left"]),)),
    "omnigen2_bundled_in_context.json": Scene("black", (Shape("white", "square", PAIR_SIZE, POSITIONS["left"]),
                                                       Shape("green", "circle", PAIR_SIZE, POSITIONS["right"]))),
}


@pytest.mark.parametrize("name", sorted(BUNDLED_EXPECTED))
def test_a_fresh_comfyui_draws_the_bundled_model_examples_as_asked(name, comfyui, object_info):
    """The bundled-model examples at their own settings (20 steps, 64 x 64; Load OmniGen2's bundled choice, Shapes
    Scene references, the bundled LoRA for in-context): each saved picture reads back, from its pixels, as asked,
    and the chat's describe turn names what its picture shows."""
    prompt = to_api_prompt(json.loads((ROOT / "example_workflows" / name).read_text()), object_info)
    entry = comfyui.run(prompt)
    pictures = saved_by_save_image(prompt, comfyui.saved_images(entry))
    if any(node["class_type"] == "OmniGen2Chat" for node in prompt.values()):  # the describe turn's answer, shown
        (shown,) = [n["inputs"] for n in prompt.values() if n["class_type"] == "OmniGen2ShapesScene"]
        item = Shape(shown["color"], shown["shape"], SIZES[shown["size"]], POSITIONS[shown["position"]])
        (answer_node,) = [k for k, n in prompt.items() if n["class_type"] == "PreviewAny"]
        assert entry["outputs"][answer_node]["text"] == [scene_words(Scene(shown["background"], (item,)))]
    # Its thumbnail (tests/workflow_thumbnails.py) is this picture, as the template browser shows it.
    served = Image.open(io.BytesIO(comfyui.get_bytes(f"/api/workflow_templates/{PACK_FOLDER}/{Path(name).stem}.jpg")))
    difference = np.abs(np.asarray(served.convert("RGB"), np.int16) - np.asarray(enlarge(pictures[0]), np.int16))
    assert served.format == "JPEG" and difference.mean() < JPEG_LEVELS, difference.mean()
    found, want = read_scene(pictures[0]), BUNDLED_EXPECTED[name]
    if "text_to_image" in name:  # as quality.py scores text-to-image: the background and the main object
        shape = main_object(found)
        assert found.background == want.background and (shape.color, shape.shape) == (want.shapes[0].color, want.shapes[0].shape), found
    else:  # the whole scene: colours, shapes and places
        assert scene_matches(found, want), found
