"""example_workflows/: every node type, input name, link type and widget value is one the pack or ComfyUI core has.

Offline checks: the node descriptions are /object_info entries made from our node classes plus ComfyUI's core entries
recorded from the real server (tests/fixtures/comfyui_core_object_info.json). The examples running in a real ComfyUI
server and its front end: tests/test_comfyui_api.py and tests/test_comfyui_frontend.py.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from comfy_workflow import CORE_OBJECT_INFO, VIRTUAL_NODES, offline_object_info, signature, to_api_prompt
from conftest import ROOT, load_pack

WORKFLOWS = sorted((ROOT / "example_workflows").glob("*.json"))
EXPECTED = {
    "omnigen2_text_to_image.json": 0,
    "omnigen2_instruction_edit.json": 1,
    "omnigen2_in_context_3_images.json": 3,
    "omnigen2_in_context_3_images_fast.json": 3,
    "omnigen2_repaint.json": 1,
    "omnigen2_reflect.json": 1,
    "omnigen2_chat.json": 1,
    # for the bundled model, on a fresh install: references drawn by OmniGen2 Shapes Scene, no LoadImage
    "omnigen2_bundled_text_to_image.json": 0,
    "omnigen2_bundled_edit.json": 0,
    "omnigen2_bundled_in_context.json": 0,
    "omnigen2_bundled_chat.json": 0,
    "omnigen2_bundled_reflect.json": 0,
}
BUNDLED_REFERENCES = {"omnigen2_bundled_text_to_image.json": 0, "omnigen2_bundled_edit.json": 1,
                      "omnigen2_bundled_in_context.json": 2, "omnigen2_bundled_chat.json": 1,
                      "omnigen2_bundled_reflect.json": 1}
SAMPLERS = ("OmniGen2CachedSampler", "OmniGen2Repaint", "OmniGen2Reflect")
CHAT = "OmniGen2Chat"  # samples itself when it draws; the chat example has two and no sampler
ANY = "*"  # an input that takes every type (PreviewAny's source)


@pytest.fixture(scope="module")
def object_info():
    pack = load_pack()
    config = sys.modules[f"{pack.__name__}.nodes"].NODE_CONFIG
    # Every node the pack declares, including ones left out of the mappings until their engine feature lands.
    return offline_object_info({name: entry["class"] for name, entry in config.items()})


@pytest.fixture(scope="module")
def signatures(object_info):
    return {name: signature(info) for name, info in object_info.items()}


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def test_the_examples_exist():
    assert sorted(p.name for p in WORKFLOWS) == sorted(EXPECTED)


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_workflow_uses_only_known_nodes_inputs_and_types(path, signatures):
    workflow = load(path)
    nodes = {node["id"]: node for node in workflow["nodes"]}
    assert workflow["last_node_id"] >= max(nodes) and workflow["last_link_id"] >= len(workflow["links"])
    for node in nodes.values():
        if node["type"] in VIRTUAL_NODES:  # a note: one text, no sockets
            assert not node["inputs"] and not node["outputs"] and [type(v) for v in node["widgets_values"]] == [str]
            continue
        assert node["type"] in signatures, f"{path.name}: unknown node type {node['type']}"
        signature = signatures[node["type"]]
        for slot in node["inputs"]:
            assert slot["name"] in signature.inputs, f"{path.name}: {node['type']} has no input {slot['name']}"
            assert slot["type"] == signature.inputs[slot["name"]], (path.name, node["type"], slot)
        for index, slot in enumerate(node["outputs"]):
            assert slot["type"] == signature.outputs[index], (path.name, node["type"], slot)
        assert len(node.get("widgets_values", [])) == len(signature.widget_order), (path.name, node["type"])
        linked = {slot["name"] for slot in node["inputs"] if slot.get("link") is not None}
        widgets = {name for name in signature.widget_order if name}
        sockets = set(signature.inputs) - widgets
        cls_inputs = None
        if node["type"] not in CORE_OBJECT_INFO:
            cls_inputs = _declared(node["type"])
            missing = [n for n in cls_inputs.get("required", {}) if n in sockets and n not in linked]
            assert not missing, f"{path.name}: {node['type']} required inputs not linked: {missing}"
    for link_id, from_id, from_slot, to_id, to_slot, kind in workflow["links"]:
        source, target = nodes[from_id], nodes[to_id]
        assert signatures[source["type"]].outputs[from_slot] == kind, (path.name, link_id)
        assert link_id in source["outputs"][from_slot]["links"], (path.name, link_id)
        target_slot = target["inputs"][to_slot]
        assert target_slot["link"] == link_id and signatures[target["type"]].inputs[target_slot["name"]] in (kind, ANY)


def _declared(node_type: str) -> dict:
    pack = load_pack()
    config = sys.modules[f"{pack.__name__}.nodes"].NODE_CONFIG
    return config[node_type]["class"].INPUT_TYPES()


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_widget_values_are_valid(path, signatures):
    for node in load(path)["nodes"]:
        if node["type"] in CORE_OBJECT_INFO or node["type"] in VIRTUAL_NODES:
            continue
        declared = _declared(node["type"])
        specs = {**declared.get("required", {}), **declared.get("optional", {})}
        for name, value in zip(signatures[node["type"]].widget_order, node["widgets_values"]):
            if name is None:
                assert value in ("fixed", "increment", "decrement", "randomize"), (path.name, value)
                continue
            kind, options = specs[name][0], (specs[name][1] if len(specs[name]) > 1 else {})
            bridge = sys.modules[f"{load_pack().__name__}.nodes.bridge"]
            bundled = ([bridge.BUNDLED_MODEL_CHOICE], [bridge.BUNDLED_LORA_CHOICE])
            # static combos; outside ComfyUI folder lists are empty, or hold only the bundled model or LoRA
            if isinstance(kind, (list, tuple)) and kind and list(kind) not in bundled:
                assert value in kind, (path.name, name, value)
            if kind in ("INT", "FLOAT"):
                assert options.get("min", value) <= value <= options.get("max", value), (path.name, name, value)
                assert isinstance(value, int) if kind == "INT" else isinstance(value, (int, float))
            if kind == "STRING":
                assert isinstance(value, str)


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_workflow_shape(path, object_info):
    workflow = load(path)
    types = [node["type"] for node in workflow["nodes"]]
    assert types.count("LoadImage") == EXPECTED[path.name]
    assert "SaveImage" in types or "PreviewImage" in types
    assert types.count("LoadOmniGen2") == 1 and sum(types.count(name) for name in SAMPLERS) == (CHAT not in types)
    notes = [node["widgets_values"][0] for node in workflow["nodes"] if node["type"] in VIRTUAL_NODES]
    if path.name not in BUNDLED_REFERENCES:  # a release template says what it needs on a fresh ComfyUI, and the way out
        (note,) = notes
        assert "models/omnigen2/" in note and "omnigen2_bundled_" in note
        assert ("Load Image" in note) == ("LoadImage" in types)
    prompt = to_api_prompt(workflow, object_info)
    if CHAT in types:  # one turn that answers about the picture, one that may draw it, saved
        chats = [node["inputs"] for node in prompt.values() if node["class_type"] == CHAT]
        assert sorted(chat["respond"] for chat in chats) == ["auto", "text"]
        return
    sampler = next(n for n in prompt.values() if n["class_type"] in SAMPLERS)
    if path.name in BUNDLED_REFERENCES:
        bridge = sys.modules[f"{load_pack().__name__}.nodes.bridge"]
        load_node = next(n for n in prompt.values() if n["class_type"] == "LoadOmniGen2")
        assert load_node["inputs"]["model_folder"] == bridge.BUNDLED_MODEL_CHOICE
        assert types.count("OmniGen2ShapesScene") == BUNDLED_REFERENCES[path.name]
        if BUNDLED_REFERENCES[path.name] > 1:  # in-context: the independent-condition LoRA, references computed once
            lora = next(n for n in prompt.values() if n["class_type"] == "OmniGen2LoRA")
            assert lora["inputs"]["lora_name"] == bridge.BUNDLED_LORA_CHOICE
            assert sampler["inputs"]["cache_per_n_steps"] > sampler["inputs"]["steps"]
    if path.name.endswith("_fast.json"):
        assert "OmniGen2CompactCondition" in types
        assert sampler["inputs"]["cache_per_n_steps"] > 0
        assert sampler["inputs"]["step_cache"] == "taylorseer"  # step caching composed with reference reuse
    else:
        assert "OmniGen2CompactCondition" not in types


def test_ready_api_prompt_matches_the_text_to_image_example(object_info):
    """tests/api_t2i_tiny.json (for curl, see docs/comfyui.md) is the t2i example converted and shrunk."""
    workflow = load(ROOT / "example_workflows" / "omnigen2_text_to_image.json")
    expected = {"prompt": _tiny(to_api_prompt(workflow, object_info))}
    assert json.loads((ROOT / "tests" / "api_t2i_tiny.json").read_text()) == expected


def _tiny(prompt: dict) -> dict:
    """Shrink an example to the tiny fixture model: its folder, small sizes, few steps."""
    for node in prompt.values():
        inputs = node["inputs"]
        if node["class_type"] == "LoadOmniGen2":
            inputs.update(model_folder="omnigen2-tiny", weight_dtype="auto")
        if node["class_type"] == "OmniGen2ConditionEncode":
            inputs.update(max_pixels=64 * 64, max_input_image_side_length=64)
        if node["class_type"] in SAMPLERS:
            inputs.update(steps=3, seed=1)
            if inputs.get("width"):
                inputs.update(width=64, height=48)
    return prompt
