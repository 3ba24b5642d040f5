"""example_workflows/: every node type, input name, link type and widget value is one the pack or ComfyUI core has.

With COMFYUI_DIR set to a ComfyUI checkout (and COMFYUI_PYTHON to a Python that has its requirements), the last test
starts a real server with `main.py --cpu` on loopback, in a throwaway base directory that links this pack into
custom_nodes/ and the tiny fixture model into models/omnigen2/, runs the example workflows there through /prompt
(sizes and steps shrunk for the tiny model) and checks that images were written. Without COMFYUI_DIR it is skipped.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from comfy_workflow import CORE_NODES, signature_of, to_api_prompt
from test_nodes import FIXTURES, load_pack

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = sorted((ROOT / "example_workflows").glob("*.json"))
EXPECTED = {
    "omnigen2_text_to_image.json": 0,
    "omnigen2_instruction_edit.json": 1,
    "omnigen2_in_context_3_images.json": 3,
    "omnigen2_in_context_3_images_fast.json": 3,
    "omnigen2_repaint.json": 1,
}
SAMPLERS = ("OmniGen2CachedSampler", "OmniGen2Repaint")


@pytest.fixture(scope="module")
def signatures():
    pack = load_pack()
    config = sys.modules[f"{pack.__name__}.nodes"].NODE_CONFIG
    # Every node the pack declares, including ones left out of the mappings until their engine feature lands.
    return {**CORE_NODES, **{name: signature_of(entry["class"]) for name, entry in config.items()}}


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
        if node["type"] not in CORE_NODES:
            cls_inputs = _declared(node["type"])
            missing = [n for n in cls_inputs.get("required", {}) if n in sockets and n not in linked]
            assert not missing, f"{path.name}: {node['type']} required inputs not linked: {missing}"
    for link_id, from_id, from_slot, to_id, to_slot, kind in workflow["links"]:
        source, target = nodes[from_id], nodes[to_id]
        assert signatures[source["type"]].outputs[from_slot] == kind, (path.name, link_id)
        assert link_id in source["outputs"][from_slot]["links"], (path.name, link_id)
        target_slot = target["inputs"][to_slot]
        assert target_slot["link"] == link_id and signatures[target["type"]].inputs[target_slot["name"]] == kind


def _declared(node_type: str) -> dict:
    pack = load_pack()
    config = sys.modules[f"{pack.__name__}.nodes"].NODE_CONFIG
    return config[node_type]["class"].INPUT_TYPES()


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_widget_values_are_valid(path, signatures):
    for node in load(path)["nodes"]:
        if node["type"] in CORE_NODES:
            continue
        declared = _declared(node["type"])
        specs = {**declared.get("required", {}), **declared.get("optional", {})}
        for name, value in zip(signatures[node["type"]].widget_order, node["widgets_values"]):
            if name is None:
                assert value in ("fixed", "increment", "decrement", "randomize"), (path.name, value)
                continue
            kind, options = specs[name][0], (specs[name][1] if len(specs[name]) > 1 else {})
            bundled = sys.modules[f"{load_pack().__name__}.nodes.bridge"].BUNDLED_MODEL_CHOICE
            # static combos; outside ComfyUI folder lists are empty, or hold only the bundled model
            if isinstance(kind, (list, tuple)) and kind and list(kind) != [bundled]:
                assert value in kind, (path.name, name, value)
            if kind in ("INT", "FLOAT"):
                assert options.get("min", value) <= value <= options.get("max", value), (path.name, name, value)
                assert isinstance(value, int) if kind == "INT" else isinstance(value, (int, float))
            if kind == "STRING":
                assert isinstance(value, str)


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_workflow_shape(path, signatures):
    workflow = load(path)
    types = [node["type"] for node in workflow["nodes"]]
    assert types.count("LoadImage") == EXPECTED[path.name]
    assert "SaveImage" in types or "PreviewImage" in types
    assert types.count("LoadOmniGen2") == 1 and sum(types.count(name) for name in SAMPLERS) == 1
    prompt = to_api_prompt(workflow, signatures)
    sampler = next(n for n in prompt.values() if n["class_type"] in SAMPLERS)
    if path.name.endswith("_fast.json"):
        assert "OmniGen2CompactCondition" in types
        assert sampler["inputs"]["cache_per_n_steps"] > 0
    else:
        assert "OmniGen2CompactCondition" not in types


def test_ready_api_prompt_matches_the_text_to_image_example(signatures):
    """tests/api_t2i_tiny.json (for curl, see docs/comfyui.md) is the t2i example converted and shrunk."""
    workflow = load(ROOT / "example_workflows" / "omnigen2_text_to_image.json")
    expected = {"prompt": _tiny(to_api_prompt(workflow, signatures))}
    assert json.loads((ROOT / "tests" / "api_t2i_tiny.json").read_text()) == expected


# --- a real ComfyUI server -------------------------------------------------------------------------------------------

COMFYUI_DIR = os.environ.get("COMFYUI_DIR")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str):
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def _post(url: str, body: dict):
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            body = response.read()
            return json.loads(body) if body.strip() else {}
    except urllib.error.HTTPError as error:
        raise AssertionError(f"POST {url} -> {error.code}: {error.read().decode()[:3000]}") from None


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


@pytest.fixture(scope="module")
def comfyui_server(tmp_path_factory):
    if not COMFYUI_DIR:
        pytest.skip("COMFYUI_DIR not set: no ComfyUI checkout to run the workflows in (see docs/comfyui.md)")
    main = Path(COMFYUI_DIR) / "main.py"
    assert main.is_file(), f"COMFYUI_DIR={COMFYUI_DIR} has no main.py"
    python = os.environ.get("COMFYUI_PYTHON", sys.executable)
    base = tmp_path_factory.mktemp("comfyui-base")
    (base / "custom_nodes").mkdir()
    (base / "custom_nodes" / "comfyui-omnigen2").symlink_to(ROOT, target_is_directory=True)
    (base / "models" / "omnigen2").mkdir(parents=True)
    (base / "models" / "omnigen2" / "omnigen2-tiny").symlink_to(FIXTURES, target_is_directory=True)
    # The single-file layout, as ComfyUI users have it: one file each in diffusion_models, text_encoders and vae.
    for folder, name, source in (("diffusion_models", "tiny_omnigen2.safetensors", "transformer/diffusion_pytorch_model.safetensors"),
                                 ("text_encoders", "tiny_qwen_2.5_vl.safetensors", "mllm/model.safetensors"),
                                 ("vae", "tiny_ae.safetensors", "vae_bfl/ae.safetensors")):
        (base / "models" / folder).mkdir(parents=True)
        (base / "models" / folder / name).symlink_to(FIXTURES / source)
    (base / "input").mkdir()
    (base / "user").mkdir()
    from PIL import Image

    # with a transparent square: Load Image's MASK (1 - alpha) marks it for the repaint example
    picture = Image.new("RGBA", (96, 72), (200, 40, 40, 255))
    picture.paste((200, 40, 40, 0), (32, 16, 64, 48))
    picture.save(base / "input" / "example.png")
    port = _free_port()
    log_path = base / "server.log"
    log = open(log_path, "w")
    server = subprocess.Popen(
        [python, str(main), "--cpu", "--listen", "127.0.0.1", "--port", str(port), "--base-directory", str(base),
         "--disable-auto-launch", "--preview-method", "auto", "--database-url", "sqlite:///:memory:"],
        cwd=COMFYUI_DIR, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 300
        while True:
            try:
                _get(f"{url}/object_info/OmniGen2CachedSampler")
                break
            except (urllib.error.URLError, ConnectionError, OSError):
                if server.poll() is not None or time.time() > deadline:
                    raise AssertionError(f"ComfyUI did not come up:\n{log_path.read_text()[-5000:]}") from None
                time.sleep(1)
        yield url, base, log_path
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        log.close()


def _run(url: str, prompt: dict, log_path: Path) -> dict:
    client = str(uuid.uuid4())
    queued = _post(f"{url}/prompt", {"prompt": prompt, "client_id": client})
    assert not queued.get("node_errors"), queued
    prompt_id = queued["prompt_id"]
    deadline = time.time() + 600
    while time.time() < deadline:
        history = _get(f"{url}/history/{prompt_id}")
        if prompt_id in history and history[prompt_id].get("status", {}).get("completed") is not None:
            entry = history[prompt_id]
            assert entry["status"]["status_str"] == "success", (entry["status"], log_path.read_text()[-5000:])
            return entry
        time.sleep(1)
    raise AssertionError(f"workflow did not finish:\n{log_path.read_text()[-5000:]}")


def test_examples_run_in_a_real_comfyui(comfyui_server, signatures):
    url, base, log_path = comfyui_server
    info = _get(f"{url}/object_info")
    # Our signatures and the core ones written out in comfy_workflow.py agree with the server's.
    for name, signature in signatures.items():
        assert name in info, f"ComfyUI has no node {name}"
        server_inputs = {**info[name]["input"].get("required", {}), **info[name]["input"].get("optional", {})}
        assert set(signature.inputs) == set(server_inputs), name
        assert tuple(info[name]["output"]) == signature.outputs, name
    assert info["OmniGen2CachedSampler"]["category"] == "OmniGen2"
    assert "omnigen2-tiny" in info["LoadOmniGen2"]["input"]["required"]["model_folder"][0]
    assert any(path.endswith("omnigen2_stats.js") for path in _get(f"{url}/extensions"))

    for path in WORKFLOWS:
        workflow = load(path)
        prompt = _tiny(to_api_prompt(workflow, signatures))
        entry = _run(url, prompt, log_path)
        outputs = entry["outputs"]
        images = [image for out in outputs.values() for image in out.get("images", [])]
        assert images, (path.name, outputs)
        for image in images:
            folder = base / image["type"] / image.get("subfolder", "")
            assert (folder / image["filename"]).stat().st_size > 0
        sampler_id = next(k for k, n in prompt.items() if n["class_type"] in SAMPLERS)
        stats = outputs[sampler_id]["omnigen2_stats"][0]
        assert stats["steps"] == 3
        if path.name == "omnigen2_repaint.json":
            _check_repainted(base / images[0]["type"] / images[0].get("subfolder", "") / images[0]["filename"])


def _check_repainted(saved: Path) -> None:
    """The repaint example changed the transparent square of example.png and kept the rest (SaveImage's 8-bit
    rounding aside)."""
    import numpy as np
    from PIL import Image

    result = np.asarray(Image.open(saved).convert("RGB"), dtype=np.int16)
    inside = np.zeros(result.shape[:2], bool)
    inside[16:48, 32:64] = True
    assert result.shape == (72, 96, 3)
    assert np.abs(result[~inside] - np.array([200, 40, 40])).max() <= 1
    assert np.abs(result[inside] - np.array([200, 40, 40])).mean() > 5


def test_single_files_in_a_real_comfyui(comfyui_server, signatures):
    """Load OmniGen2 (single files) from ComfyUI's own folders; the tokenizer from a models/omnigen2 folder."""
    url, base, log_path = comfyui_server
    info = _get(f"{url}/object_info/LoadOmniGen2SingleFiles")["LoadOmniGen2SingleFiles"]["input"]["required"]
    assert "tiny_omnigen2.safetensors" in info["transformer"][0]
    assert "omnigen2-tiny" in info["tokenizer"][0] and "comfyui: qwen25_tokenizer" in info["tokenizer"][0]
    prompt = _tiny(to_api_prompt(load(ROOT / "example_workflows" / "omnigen2_instruction_edit.json"), signatures))
    loader = next(k for k, n in prompt.items() if n["class_type"] == "LoadOmniGen2")
    prompt[loader] = {"class_type": "LoadOmniGen2SingleFiles", "inputs": {
        "transformer": "tiny_omnigen2.safetensors", "text_encoder": "tiny_qwen_2.5_vl.safetensors",
        "vae": "tiny_ae.safetensors", "tokenizer": "omnigen2-tiny", "weight_dtype": "fp32"}}
    outputs = _run(url, prompt, log_path)["outputs"]
    assert [image for out in outputs.values() for image in out.get("images", [])]


def test_cancel_in_a_real_comfyui(comfyui_server, signatures):
    """A long run cancelled through /interrupt (ComfyUI's Cancel button) stops, and the server keeps working."""
    url, base, log_path = comfyui_server
    prompt = _tiny(to_api_prompt(load(ROOT / "example_workflows" / "omnigen2_text_to_image.json"), signatures))
    sampler = next(n for n in prompt.values() if n["class_type"] == "OmniGen2CachedSampler")
    sampler["inputs"].update(steps=1000, width=256, height=256, seed=2)
    queued = _post(f"{url}/prompt", {"prompt": prompt, "client_id": str(uuid.uuid4())})
    prompt_id = queued["prompt_id"]
    deadline = time.time() + 120
    while not any(item[1] == prompt_id for item in _get(f"{url}/queue")["queue_running"]):
        assert time.time() < deadline, "the long run never started"
        time.sleep(0.2)
    time.sleep(2)  # into the sampling loop (an interrupt sent before a prompt starts is reset by ComfyUI)
    _post(f"{url}/interrupt", {"prompt_id": prompt_id})
    deadline = time.time() + 120
    while time.time() < deadline:
        entry = _get(f"{url}/history/{prompt_id}").get(prompt_id)
        if entry and entry.get("status", {}).get("completed") is not None:
            break
        time.sleep(0.5)
    else:
        raise AssertionError(f"cancelled run did not stop:\n{log_path.read_text()[-3000:]}")
    events = [message[0] for message in entry["status"]["messages"]]
    assert "execution_interrupted" in events, entry["status"]
    sampler["inputs"].update(steps=2, width=64, height=48)
    assert _run(url, prompt, log_path)["outputs"]


def test_stats_show_on_the_sampler_in_the_real_comfyui_frontend(comfyui_server):
    """ComfyUI's own front-end, in headless Chromium: load the fast example, queue it, read the stats on the node."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium not installed (pip install selenium)")
    from selenium.webdriver.chrome.service import Service

    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver_path:
        pytest.skip("chromium / chromium-driver not installed (Debian: apt-get install -y chromium chromium-driver)")
    url, base, log_path = comfyui_server
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1400,900",
                 f"--user-data-dir={base / 'chromium-profile'}"):
        options.add_argument(flag)
    workflow = load(ROOT / "example_workflows" / "omnigen2_in_context_3_images_fast.json")
    if not _get(f"{url}/object_info").get("OmniGen2CompactCondition"):
        workflow = load(ROOT / "example_workflows" / "omnigen2_in_context_3_images.json")
    for node in workflow["nodes"]:
        if node["type"] == "LoadOmniGen2":
            node["widgets_values"] = ["omnigen2-tiny", "auto"]
        if node["type"] == "OmniGen2ConditionEncode":
            node["widgets_values"][2:4] = [64 * 64, 64]
        if node["type"] == "OmniGen2CachedSampler":
            node["widgets_values"][0] = 12345  # a seed no other test used, so the node really runs
            node["widgets_values"][2:5] = [4, 64, 48]
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        driver.set_script_timeout(60)
        driver.get(url)
        deadline = time.time() + 120
        ready = ("return !!(window.app && window.app.graph && window.app.canvas && window.LiteGraph"
                 " && window.LiteGraph.registered_node_types['OmniGen2CachedSampler']"
                 " && window.app.api && window.app.api.socket && window.app.api.socket.readyState === 1)")
        while not driver.execute_script(ready):
            assert time.time() < deadline, "ComfyUI's front-end did not start"
            time.sleep(0.5)
        names = driver.execute_script("return window.app.extensions.map(e => e.name)")
        assert "OmniGen2.SamplerStats" in names
        done = "const done = arguments[arguments.length - 1];"
        assert driver.execute_async_script(
            done + "window.app.loadGraphData(arguments[0]).then(() => done('ok'), e => done(String(e)))", workflow
        ) == "ok"
        driver.execute_async_script(done + "window.app.queuePrompt(0, 1).then(() => done('ok'), e => done(String(e)))")
        text = None
        deadline = time.time() + 180
        while not text:
            assert time.time() < deadline, f"no stats on the node:\n{log_path.read_text()[-3000:]}"
            time.sleep(0.5)
            text = driver.execute_script(
                "const node = window.app.graph._nodes.find(n => n.type === 'OmniGen2CachedSampler');"
                "return node && node.omnigen2StatsElement ? node.omnigen2StatsElement.innerText : null;")
    finally:
        driver.quit()
    lines = text.splitlines()
    assert lines[0] == "steps: 4"
    assert lines[1].startswith("ref tokens computed: ") and lines[2].startswith("ref tokens reused: ")
    assert any(line.startswith("time per step: ") for line in lines)
