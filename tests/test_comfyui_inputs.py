"""Hostile and clumsy inputs through a real ComfyUI server (the session's `comfyui` fixture): every name the nodes
resolve stays inside ComfyUI's model folders, even when it arrives through a link, where ComfyUI does not check a
dropdown's value; Reflect runs with 5 images and its default judge; bad prompts and bad model files are errors that
say what was found.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import omni_core
from comfyui_server import FIXTURE_MODEL, MODEL_NAME, PACK_FOLDER, SINGLE_FILES
from omni_core.config import TransformerConfig
from omni_core.transformer import OmniGen2Transformer
from test_comfyui_api import example, failed, node_of

BUNDLED = omni_core.DEFAULT_MODEL_DIR
WEIGHTS = "diffusion_pytorch_model.safetensors"
REFUSAL = "is not one of the choices listed"


@pytest.fixture(scope="module")
def object_info(comfyui):
    return comfyui.get("/object_info")


def link_string(prompt: dict, node_id: str, input_name: str, value: str) -> dict:
    """The input fed by a Primitive String through a Switch, as the issue's reproduction: ComfyUI checks a linked
    value against no dropdown."""
    prompt = copy.deepcopy(prompt)
    prompt["50"] = {"class_type": "PrimitiveString", "inputs": {"value": value}}
    prompt["51"] = {"class_type": "ComfySwitchNode",
                    "inputs": {"switch": True, "on_true": ["50", 0], "on_false": ["50", 0]}}
    prompt[node_id]["inputs"][input_name] = ["51", 0]
    return prompt


@pytest.fixture(scope="module")
def outside(comfyui) -> Path:
    """Real, loadable things beside the ComfyUI folder, outside models/: a model folder, a LoRA, a judge, single
    files and a tokenizer. Loading any of them through a node would be an escape."""
    folder = comfyui.home.parent / "outside"
    if not folder.exists():
        folder.mkdir()
        (folder / "model").symlink_to(BUNDLED, target_is_directory=True)
        (folder / "judge").symlink_to(FIXTURE_MODEL, target_is_directory=True)
        (folder / "processor").symlink_to(FIXTURE_MODEL / "processor", target_is_directory=True)
        (folder / "lora.safetensors").symlink_to(BUNDLED / omni_core.INDEPENDENT_CONDITION_LORA)
        for part, (_, _, source) in SINGLE_FILES.items():
            (folder / f"{part}.safetensors").symlink_to(FIXTURE_MODEL / source)
    (comfyui.home / "models" / "vlm").mkdir(parents=True, exist_ok=True)
    return folder


def escapes(outside: Path, thing: str) -> list[str]:
    """Names that reach `outside/thing` (real) or `outside/missing` (absent), absolute or with `..` from any
    models/<folder>/ root, and /etc."""
    up = "../../../outside"
    return [str(outside / thing), str(outside / "missing"), f"{up}/{thing}", f"{up}/missing", "/etc"]


def single_files_prompt(object_info) -> tuple[dict, str]:
    prompt = example("omnigen2_text_to_image.json", object_info)
    loader = node_of(prompt, "LoadOmniGen2")
    files = {part: name for part, (_, name, _) in SINGLE_FILES.items()}
    prompt[loader] = {"class_type": "LoadOmniGen2SingleFiles",
                      "inputs": {**files, "tokenizer": FIXTURE_MODEL.name, "weight_dtype": "auto"}}
    return prompt, loader


def lora_prompt(object_info) -> tuple[dict, str]:
    prompt = example("omnigen2_text_to_image.json", object_info)
    loader = node_of(prompt, "LoadOmniGen2")
    prompt[loader]["inputs"]["model_folder"] = "bundled: default model"
    for node in prompt.values():
        if node["inputs"].get("model") == [loader, 0]:
            node["inputs"]["model"] = ["60", 0]
    prompt["60"] = {"class_type": "OmniGen2LoRA", "inputs": {"model": [loader, 0], "lora_name": "x", "strength": 1.0}}
    return prompt, "60"


def reflect_prompt(object_info) -> tuple[dict, str]:
    prompt = example("omnigen2_reflect.json", object_info)
    return prompt, node_of(prompt, "OmniGen2Reflect")


PATH_INPUTS = {  # (node input, what outside it would reach, how to build a prompt that has the input)
    "model_folder": ("model", lambda info: (lambda p: (p, node_of(p, "LoadOmniGen2")))(
        example("omnigen2_text_to_image.json", info))),
    "transformer": ("transformer.safetensors", single_files_prompt),
    "text_encoder": ("text_encoder.safetensors", single_files_prompt),
    "vae": ("vae.safetensors", single_files_prompt),
    "tokenizer": ("processor", single_files_prompt),
    "lora_name": ("lora.safetensors", lora_prompt),
    "judge": ("judge", reflect_prompt),
}


@pytest.mark.parametrize("input_name", sorted(PATH_INPUTS))
def test_linked_names_never_leave_the_model_folders(input_name, comfyui, object_info, outside):
    """Absolute paths and `..` names, linked into every input that names a file or folder, are refused, and the
    refusal reads the same whether the path exists or not (it tells the caller nothing about the disk)."""
    thing, build = PATH_INPUTS[input_name]
    prompt, node_id = build(object_info)
    refusals = set()
    for name in escapes(outside, thing):
        error = failed(comfyui, link_string(prompt, node_id, input_name, name))
        assert error["node_id"] == node_id and error["exception_type"].endswith("ModelFileError"), error
        assert REFUSAL in error["exception_message"], error["exception_message"]
        refusals.add(error["exception_message"].replace(name, "<name>"))
    assert len(refusals) == 1, refusals


def test_a_linked_listed_name_still_loads(comfyui, object_info):
    """The confinement refuses what is not listed, not links: a listed name through the same Switch works."""
    prompt = example("omnigen2_text_to_image.json", object_info)
    comfyui.run(link_string(prompt, node_of(prompt, "LoadOmniGen2"), "model_folder", MODEL_NAME))


def test_reflect_runs_with_five_images_and_its_default_judge(comfyui, object_info):
    prompt = example("omnigen2_reflect.json", object_info)
    reflect, image = node_of(prompt, "OmniGen2Reflect"), node_of(prompt, "LoadImage")
    assert prompt[reflect]["inputs"]["judge"] == "own MLLM"
    prompt["70"] = {"class_type": "LoadImage", "inputs": {"image": "example_b.png"}}
    for i in range(1, 6):
        prompt[reflect]["inputs"][f"image_{i}"] = [image if i % 2 else "70", 0]
    prompt[reflect]["inputs"]["prompt"] = "Combine image 1 to image 5 into one picture."
    entry = comfyui.run(prompt)
    (transcript,) = [out["text"][0] for out in entry["outputs"].values() if "text" in out]
    assert "references: 5 reference image(s)" in transcript and "Stopped after round" in transcript, transcript


@pytest.mark.parametrize("field", ["prompt", "negative_prompt"])
def test_a_lone_surrogate_in_a_prompt_is_an_error_naming_it(field, comfyui, object_info):
    prompt = example("omnigen2_text_to_image.json", object_info)
    encode = node_of(prompt, "OmniGen2ConditionEncode")
    prompt[encode]["inputs"][field] = "a\ud800b"
    error = failed(comfyui, prompt)
    assert error["node_id"] == encode and error["exception_type"].endswith("InvalidInputError"), error
    assert error["exception_message"].startswith(f"{field} holds an invalid character at position 1")


def test_a_prompt_longer_than_the_mllm_reads_is_an_error(comfyui, object_info):
    prompt = example("omnigen2_text_to_image.json", object_info)
    encode = node_of(prompt, "OmniGen2ConditionEncode")
    prompt[encode]["inputs"]["prompt"] = "a red circle on a blue background. " * 1500  # 52,500 characters
    error = failed(comfyui, prompt)
    assert error["node_id"] == encode and error["exception_type"].endswith("InvalidInputError"), error
    assert error["exception_message"].startswith("prompt is too long") and "at most 2048" in error["exception_message"]


def model_copy(comfyui, name: str) -> Path:
    """A copy of the bundled model under models/omnigen2/<name> (weights linked; config files copied, to edit)."""
    def link_or_copy(source: str, target: str) -> None:
        if source.endswith(".json"):
            shutil.copy2(source, target)
        else:
            os.symlink(source, target)

    folder = comfyui.models / name
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(BUNDLED, folder, copy_function=link_or_copy)
    return folder


def load_failure(comfyui, object_info, name: str) -> dict:
    prompt = example("omnigen2_text_to_image.json", object_info)
    loader = node_of(prompt, "LoadOmniGen2")
    prompt[loader]["inputs"]["model_folder"] = name
    error = failed(comfyui, prompt)
    assert error["node_id"] == loader, error
    return error


def test_a_transformer_config_missing_sizes_is_an_error_naming_them(comfyui, object_info):
    folder = model_copy(comfyui, "config-missing-sizes")
    config_file = folder / "transformer" / "config.json"
    config = json.loads(config_file.read_text())
    del config["hidden_size"], config["num_layers"]
    config_file.write_text(json.dumps(config))
    message = load_failure(comfyui, object_info, folder.name)["exception_message"]
    assert "lacks ['hidden_size', 'num_layers']" in message, message
    assert "axes_dim_rope" not in message.split("lacks")[0], message  # not blamed, as before


def test_a_transformer_for_another_text_encoder_is_an_error_naming_both(comfyui, object_info):
    """A transformer reading 48-wide text features beside the bundled MLLM (of another width) fails at load."""
    folder = model_copy(comfyui, "text-width-mismatch")
    (folder / "transformer" / WEIGHTS).unlink()
    bundled = json.loads((BUNDLED / "transformer" / "config.json").read_text())
    values = {**bundled, "text_feat_dim": 48}
    (folder / "transformer" / "config.json").write_text(json.dumps(values))
    torch.manual_seed(0)
    transformer = OmniGen2Transformer(TransformerConfig.from_dict(values))
    save_file({k: v.contiguous() for k, v in transformer.state_dict().items()}, folder / "transformer" / WEIGHTS)
    message = load_failure(comfyui, object_info, folder.name)["exception_message"]
    assert "text_feat_dim" in message and "48" in message and str(bundled["text_feat_dim"]) in message, message
    for part in ("transformer", "mllm"):
        assert f"text-width-mismatch/{part}" in message, message


def test_nan_weights_are_named_not_blamed_on_float16(comfyui, object_info):
    folder = model_copy(comfyui, "nan-weights")
    weights = folder / "transformer" / WEIGHTS
    tensors = load_file(weights)
    weights.unlink()
    tensors["layers.0.attn.to_q.weight"][0, 0] = float("nan")
    save_file(tensors, weights)
    prompt = example("omnigen2_text_to_image.json", object_info)
    prompt[node_of(prompt, "LoadOmniGen2")]["inputs"]["model_folder"] = folder.name  # auto: float32 on the CPU
    error = failed(comfyui, prompt)
    assert error["node_type"] == "OmniGen2CachedSampler", error
    message = error["exception_message"]
    assert "layers.0.attn.to_q.weight" in message and "float16" not in message, message


def test_comfyui_never_imports_the_packs_subprocess_use(comfyui, object_info):
    """The registry scans for process launching: only the training script (make_default_model) has any, and nothing
    ComfyUI imports from the pack, at start or while running the examples' nodes, reaches it."""
    imported = set()
    for name in ("omnigen2_chat.json", "omnigen2_reflect.json", "omnigen2_bundled_in_context.json"):
        prompt = example(name, object_info)
        save = node_of(prompt, "SaveImage")
        prompt["80"] = {"class_type": "OmniGen2TestImportedFiles",
                        "inputs": {"under": f"/custom_nodes/{PACK_FOLDER}/", "after": prompt[save]["inputs"]["images"]}}
        imported.update(comfyui.run(prompt)["outputs"]["80"]["files"])
    assert any(path.endswith("/omni_core/reflection.py") for path in imported), sorted(imported)
    launching = [path for path in imported if "subprocess" in Path(path).read_text()]
    assert launching == [], launching
