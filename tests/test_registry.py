"""Ready for the Comfy Registry: pyproject.toml's fields, the licence, the icon, a thumbnail beside every example
workflow, and the archive `comfy node pack` makes (the pack alone, no tests or benchmarks).

The archive is made by comfy-cli itself (CI installs it into .comfy-cli/, see .ci/run; elsewhere set COMFY_CLI to a
`comfy` executable): without it that test skips locally and fails in CI.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tomllib
import zipfile

import numpy as np
import pytest
from PIL import Image

from workflow_thumbnails import ICON, WORKFLOWS, is_bundled, thumbnail_path, title_card
from conftest import ROOT

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
MAX_ICON_SIDE = 400  # the registry's limit
JPEG_LEVELS = 2  # mean difference JPEG compression leaves (another picture differs by tens)
LEFT_OUT = ("tests/", "benchmarks/", "docs/", ".ci/")
SHIPPED = ("__init__.py", "README.md", "LICENSE", "pyproject.toml", "requirements.txt", "icon.png",
           "nodes/loader.py", "nodes/bridge/folders.py", "omni_core/pipeline.py", "web/omnigen2_stats.js",
           "omni_core/default_model/transformer/diffusion_pytorch_model.safetensors",
           "omni_core/default_model/loras/independent_condition.safetensors", "configs/training/lora.yaml")


def test_pyproject_has_what_the_registry_asks_for():
    project, comfy = PYPROJECT["project"], PYPROJECT["tool"]["comfy"]
    assert "comfyui" not in project["name"].lower()
    assert project["license"] == {"file": "LICENSE"}
    assert "Repository" in project["urls"] and "PublisherId" in comfy  # both set by the publisher (README)
    assert comfy["requires-comfyui"].startswith(">=")
    assert any(c.startswith("Operating System :: ") for c in project["classifiers"])
    assert (ROOT / comfy["Icon"]).resolve() == ICON


def test_the_licence_is_apache_2():
    text = (ROOT / "LICENSE").read_text()
    assert text.split()[:4] == ["Apache", "License", "Version", "2.0,"] and "END OF TERMS AND CONDITIONS" in text


def test_the_readme_says_where_to_set_the_publisher():
    readme = (ROOT / "README.md").read_text()
    assert "PublisherId" in readme and "Repository" in readme and "comfy node publish" in readme


def test_the_icon_is_a_small_square():
    with Image.open(ICON) as icon:
        assert icon.width == icon.height <= MAX_ICON_SIDE and icon.format == "PNG"


@pytest.mark.parametrize("workflow", sorted(WORKFLOWS.glob("*.json")), ids=lambda p: p.stem)
def test_every_example_workflow_has_a_thumbnail(workflow):
    """A .jpg of the same name; the release workflows' is the card saying they need the release (the bundled ones'
    are compared with ComfyUI's own run in test_comfyui_api.py)."""
    with Image.open(thumbnail_path(workflow)) as picture:
        assert picture.format == "JPEG" and picture.width == picture.height
        if not is_bundled(workflow):
            card = np.asarray(title_card(workflow), np.int16)
            assert np.abs(np.asarray(picture.convert("RGB"), np.int16) - card).mean() < JPEG_LEVELS


def comfy_cli() -> str:
    found = os.environ.get("COMFY_CLI") or str(ROOT / ".comfy-cli" / "bin" / "comfy")
    if not (os.access(found, os.X_OK) and shutil.which("git")):
        if os.environ.get("CI"):
            pytest.fail(f"CI must pack the archive: no comfy-cli at {found} (see .ci/run) or no git", pytrace=False)
        pytest.skip(f"no comfy-cli at {found}: `python3 -m venv .comfy-cli && .comfy-cli/bin/pip install comfy-cli`")
    return found


def test_the_packed_archive_holds_the_pack_alone(tmp_path):
    """`comfy node pack` in a copy of the checkout (the files git tracks or would, as they are now, in a fresh git
    repository: comfy-cli packs git-tracked files minus .comfyignore)."""
    comfy = comfy_cli()
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode()  # untracked: as if committed
    copy = tmp_path / "pack"
    for name in filter(None, listed.split("\0")):
        if (ROOT / name).is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, copy / name)
    subprocess.run(["git", "init", "-q"], cwd=copy, check=True)
    subprocess.run(["git", "add", "-A"], cwd=copy, check=True)
    done = subprocess.run([comfy, "--skip-prompt", "--no-enable-telemetry", "node", "pack"], cwd=copy,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    names = zipfile.ZipFile(copy / "node.zip").namelist()
    assert [n for n in names if n.startswith(LEFT_OUT)] == []
    assert [n for n in SHIPPED if n not in names] == []
    templates = {f"example_workflows/{w.stem}.{ext}" for w in WORKFLOWS.glob("*.json") for ext in ("json", "jpg")}
    assert templates <= set(names)
