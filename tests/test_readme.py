"""The README's two fresh-machine commands stay true: CI runs the test one, and the demo one works as written."""

import re
import shlex
import subprocess
import sys
from pathlib import Path

import PIL.Image

ROOT = Path(__file__).resolve().parents[1]


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
    size = int(arguments[arguments.index("--width") + 1]), int(arguments[arguments.index("--height") + 1])
    steps = arguments[arguments.index("--steps") + 1]
    assert PIL.Image.open(tmp_path / "demo.png").size == size
    assert f"step {steps}/{steps}" in done.stderr


def test_cli_reports_bad_input_without_a_traceback(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "omni_core", "generate", "--prompt", "x", "--model", str(tmp_path), "--output", str(tmp_path / "x.png")],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 2 and "error:" in done.stderr and "Traceback" not in done.stderr
