"""The README's two fresh-machine commands stay true: CI runs the test one, and the demo one works as written."""

import re
import shlex
import subprocess
import sys

import PIL.Image
import torch

import omni_core
from omni_core.training.shapes.measure import main_object, read_scene
from conftest import ROOT



def readme_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    return [block.strip() for block in blocks if block.strip().startswith("python3 -m venv .venv")]


def test_readme_has_exactly_two_fresh_machine_commands_and_ci_runs_the_test_one():
    demo, tests = readme_commands()
    assert "-m omni_core generate" in demo and tests.endswith("-m pytest")
    assert (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1] == tests


def test_readme_demo_runs_on_the_bundled_model(tmp_path):
    demo = readme_commands()[0]
    arguments = shlex.split(demo.split(".venv/bin/python -m omni_core", 1)[1])
    arguments[arguments.index("--output") + 1] = str(tmp_path / "demo.png")
    done = subprocess.run([sys.executable, "-m", "omni_core", *arguments], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    side = lambda flag: int(arguments[arguments.index(flag) + 1]) if flag in arguments else omni_core.DEFAULT_MODEL_SIZE
    size = side("--width"), side("--height")
    steps = arguments[arguments.index("--steps") + 1]
    assert PIL.Image.open(tmp_path / "demo.png").size == size
    assert f"step {steps}/{steps}" in done.stderr
    # the bundled model draws what the prompt ("a <colour> <shape> on a <colour> background") asks, read from pixels
    words = arguments[arguments.index("--prompt") + 1].split()
    found = read_scene(PIL.Image.open(tmp_path / "demo.png"))
    shape = main_object(found)
    assert (shape.color, shape.shape, found.background) == (words[1], words[2], words[5]), found


def test_cli_reports_bad_input_without_a_traceback(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "omni_core", "generate", "--prompt", "x", "--model", str(tmp_path), "--output", str(tmp_path / "x.png")],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 2 and "error:" in done.stderr and "Traceback" not in done.stderr


def test_cli_step_cache_gives_the_engines_step_cached_picture(tmp_path):
    import numpy as np

    import omni_core

    fixture = ROOT / "tests" / "fixtures" / "omnigen2-tiny"
    common = dict(width=64, height=64, steps=8, seed=3)
    done = subprocess.run(
        [sys.executable, "-m", "omni_core", "generate", "--prompt", "a red circle", "--model", str(fixture),
         "--step-cache", "taylorseer", "--taylorseer-interval", "2", "--width", "64", "--height", "64", "--steps", "8",
         "--seed", "3", "--output", str(tmp_path / "cached.png")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    model = omni_core.load_model(fixture)
    cached = model.generate("a red circle", step_cache=omni_core.TaylorSeer(interval=2), **common).images[0]
    plain = model.generate("a red circle", **common).images[0]
    saved = np.asarray(PIL.Image.open(tmp_path / "cached.png"), dtype=np.int16)
    as_8_bit = lambda image: (image.clamp(0, 1).permute(1, 2, 0) * 255).round().to(torch.int16).numpy()
    assert np.abs(saved - as_8_bit(cached)).max() <= 1
    assert np.abs(saved - as_8_bit(plain)).max() > 1  # the option reached the sampler
