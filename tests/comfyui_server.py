"""A real ComfyUI server for the tests, with the pack installed the way the README tells users to.

Where ComfyUI comes from: `COMFYUI_DIR` (a ComfyUI source tree, default `../shared/comfyui` beside the repository)
and `COMFYUI_PYTHON` (a Python that has its requirements, default `.comfyui-venv/bin/python`, which
`.ci/comfyui-env` makes). The tree is copied to a temporary folder (ComfyUI writes output/, user/ and temp/ beside its
code); the pack is copied into the copy's custom_nodes/ and its requirements.txt installed with ComfyUI's Python; the
bundled default model is the copy's models/omnigen2/OmniGen2, the folder name the example workflows choose.

Without a ComfyUI the server tests skip locally and fail in CI (CI=true), so a green CI always ran them.
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

import omni_core
from loopback import HTTPError, WebSocket, free_port, request_bytes, request_json

ROOT = Path(__file__).resolve().parents[1]
PACK_FOLDER = "comfyui-omnigen2"
MODEL_NAME = "OmniGen2"  # what example_workflows/ choose in Load OmniGen2
BROKEN_MODEL_NAME = "broken-model"  # a listed folder whose weights are missing: a load-time error
FIXTURE_MODEL = Path(__file__).resolve().parent / "fixtures" / "omnigen2-tiny"
# The single-file layout, as ComfyUI users have it (ComfyUI folder, file name, the fixture model's file).
SINGLE_FILES = {
    "transformer": ("diffusion_models", "tiny_omnigen2.safetensors", "transformer/diffusion_pytorch_model.safetensors"),
    "text_encoder": ("text_encoders", "tiny_qwen_2.5_vl.safetensors", "mllm/model.safetensors"),
    "vae": ("vae", "tiny_ae.safetensors", "vae_bfl/ae.safetensors"),
}
PROBE = Path(__file__).resolve().parent / "comfyui_probe"
COPY_IGNORE = shutil.ignore_patterns(".git", ".venv", ".comfyui-venv", ".comfy-cli", "__pycache__", ".pytest_cache", "outputs", "*.pyc")


def comfyui_location() -> tuple[Path, Path]:
    """(ComfyUI tree, its Python), or a skip (locally) / failure (CI) saying what is missing and how to get it."""
    tree = Path(os.environ.get("COMFYUI_DIR") or ROOT.parent / "shared" / "comfyui")
    python = Path(os.environ.get("COMFYUI_PYTHON") or ROOT / ".comfyui-venv" / "bin" / "python")
    problem = None
    if not (tree / "main.py").is_file():
        problem = f"no ComfyUI tree at {tree} (set COMFYUI_DIR to a ComfyUI checkout)"
    elif not python.exists():
        problem = f"no ComfyUI Python at {python} (run `bash .ci/comfyui-env` or set COMFYUI_PYTHON)"
    if problem:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the real ComfyUI tests: {problem}", pytrace=False)
        pytest.skip(problem)
    return tree, python


def _make_writable(folder: Path) -> None:
    """The source tree may be read-only (CI's shared/ has no write bits); the copy must not be."""
    for path in [folder, *folder.rglob("*")]:
        if not path.is_symlink():
            path.chmod(path.stat().st_mode | stat.S_IWUSR)


def example_pictures() -> dict[str, Image.Image]:
    """Pictures in input/: `example.png` (the examples' name; a transparent square is Load Image's mask for the
    repaint example) and a different `example_b.png` (reference images must never be mixed up)."""
    first = Image.new("RGBA", (96, 72), (200, 40, 40, 255))
    first.paste((200, 40, 40, 0), (32, 16, 64, 48))
    y, x = np.mgrid[0:72, 0:96]
    second = np.stack([x * 2, y * 3, 255 - x - y, np.full_like(x, 255)], axis=-1).clip(0, 255).astype(np.uint8)
    return {"example.png": first, "example_b.png": Image.fromarray(second, "RGBA")}


@dataclass
class ComfyUI:
    """A running server: its URL, its folder (the tree's copy) and its log."""

    url: str
    home: Path
    log: Path

    @property
    def models(self) -> Path:
        return self.home / "models" / "omnigen2"

    def get(self, route: str) -> Any:
        return request_json(self.url + route)

    def get_bytes(self, route: str) -> bytes:
        return request_bytes(self.url + route)

    def post(self, route: str, body: Any) -> Any:
        return request_json(self.url + route, body)

    def log_tail(self, n: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-n:]

    def queue(self, prompt: dict, client_id: str | None = None) -> str:
        """POST /prompt; the prompt id (HTTPError with ComfyUI's node_errors when validation fails)."""
        answer = self.post("/prompt", {"prompt": prompt, "client_id": client_id or str(uuid.uuid4())})
        assert not answer.get("node_errors"), answer
        return answer["prompt_id"]

    def wait(self, prompt_id: str, timeout: float = 600) -> dict:
        """The history entry of a finished prompt (success, error or interrupted), polled for at most `timeout` s."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            entry = self.get(f"/history/{prompt_id}").get(prompt_id)
            if entry and entry.get("status", {}).get("completed") is not None:
                return entry
            time.sleep(0.25)
        raise AssertionError(f"prompt {prompt_id} did not finish in {timeout} s:\n{self.log_tail()}")

    def run(self, prompt: dict) -> dict:
        """Queue a prompt and wait for it; it must succeed. The history entry."""
        entry = self.wait(self.queue(prompt))
        assert entry["status"]["status_str"] == "success", (entry["status"]["messages"], self.log_tail())
        return entry

    def saved_images(self, entry: dict) -> dict[str, list[np.ndarray]]:
        """node id -> the pictures it wrote (uint8 RGB arrays), from a history entry."""
        found = {}
        for node_id, output in entry["outputs"].items():
            pictures = []
            for image in output.get("images", []):
                path = self.home / image["type"] / image.get("subfolder", "") / image["filename"]
                pictures.append(np.asarray(Image.open(path).convert("RGB")))
            if pictures:
                found[node_id] = pictures
        return found

    def listen(self, client_id: str) -> WebSocket:
        """The WebSocket a front end with this client id gets: status, executing, progress, executed messages."""
        return WebSocket(f"{self.url.replace('http', 'ws', 1)}/ws?clientId={client_id}", timeout=60)


def _install_pack(home: Path, python: Path) -> None:
    """As the README says: the repository copied into custom_nodes/, its requirements installed with ComfyUI's Python."""
    target = home / "custom_nodes" / PACK_FOLDER
    shutil.copytree(ROOT, target, ignore=COPY_IGNORE)
    done = subprocess.run([str(python), "-m", "pip", "install", "-q", "-r", str(target / "requirements.txt")],
                          capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, f"pip install -r requirements.txt with ComfyUI's Python failed:\n{done.stderr[-4000:]}"
    shutil.copytree(PROBE, home / "custom_nodes" / "omnigen2_test_probe", ignore=COPY_IGNORE)


def _add_models_and_inputs(home: Path) -> None:
    models = home / "models" / "omnigen2"
    models.mkdir(parents=True, exist_ok=True)
    shutil.copytree(omni_core.DEFAULT_MODEL_DIR, models / MODEL_NAME)
    broken = models / BROKEN_MODEL_NAME
    shutil.copytree(omni_core.DEFAULT_MODEL_DIR, broken)
    for weights in broken.rglob("*.safetensors"):
        if weights.parent.name == "vae":
            weights.unlink()
    (models / FIXTURE_MODEL.name).symlink_to(FIXTURE_MODEL, target_is_directory=True)  # its processor/: a tokenizer
    for folder, name, source in SINGLE_FILES.values():
        (home / "models" / folder).mkdir(parents=True, exist_ok=True)
        (home / "models" / folder / name).symlink_to(FIXTURE_MODEL / source)
    (home / "input").mkdir(exist_ok=True)
    for name, picture in example_pictures().items():
        picture.save(home / "input" / name)


def start_comfyui(workdir: Path) -> tuple[ComfyUI, subprocess.Popen]:
    tree, python = comfyui_location()
    home = workdir / "ComfyUI"
    shutil.copytree(tree, home, ignore=COPY_IGNORE)
    _make_writable(home)
    _install_pack(home, python)
    _add_models_and_inputs(home)
    port = free_port()
    log = workdir / "server.log"
    command = [str(python), "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
               "--disable-auto-launch", "--disable-api-nodes", "--preview-method", "auto",
               "--database-url", "sqlite:///:memory:"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    with open(log, "w") as out:
        process = subprocess.Popen(command, cwd=home, stdout=out, stderr=subprocess.STDOUT, env=env,
                                   start_new_session=True)
    server = ComfyUI(f"http://127.0.0.1:{port}", home, log)
    deadline = time.monotonic() + 300
    while True:
        try:
            server.get("/object_info/OmniGen2CachedSampler")
            return server, process
        except (OSError, HTTPError):
            if process.poll() is not None or time.monotonic() > deadline:
                stop(process)
                raise AssertionError(f"ComfyUI did not come up:\n{server.log_tail(8000)}") from None
            time.sleep(1)


def stop(process: subprocess.Popen) -> None:
    """SIGTERM to the server's process group, SIGKILL if it has not exited within 30 s."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)

