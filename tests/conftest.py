"""Shared test fixtures: the tiny OmniGen2 model and the outputs recorded from the official implementation."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "omnigen2-tiny"
TOLERANCE = 1e-4  # float32 round-off (another summation order) against the official outputs; never loosen
PACK_NAME = "comfyui_omnigen2_under_test"

torch.manual_seed(0)


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, f"shape {tuple(a.shape)} != {tuple(b.shape)}"
    return (a.float() - b.float()).abs().max().item()


@pytest.fixture(scope="session")
def fixture_dir() -> Path:
    return FIXTURES


@pytest.fixture(scope="session")
def reference_cases() -> tuple[dict, dict]:
    return load_file(FIXTURES / "reference_cases.safetensors"), json.loads((FIXTURES / "reference_cases.json").read_text())


@pytest.fixture(scope="session")
def pipeline_cases() -> tuple[dict, dict]:
    return load_file(FIXTURES / "pipeline_cases.safetensors"), json.loads((FIXTURES / "pipeline_cases.json").read_text())


@pytest.fixture(scope="session")
def tiny_model():
    import omni_core

    return omni_core.load_model(FIXTURES)


@pytest.fixture(scope="session")
def tiny_transformer(tiny_model):
    return tiny_model.transformer


@pytest.fixture(scope="session")
def comfyui(tmp_path_factory):
    """One real ComfyUI server for the whole session (tests/comfyui_server.py): skipped locally without a ComfyUI,
    a failure in CI."""
    from comfyui_server import start_comfyui, stop

    server, process = start_comfyui(tmp_path_factory.mktemp("comfyui"))
    try:
        yield server
    finally:
        stop(process)


def load_pack():
    """Import the pack root like ComfyUI's loader does: a package from <folder>/__init__.py, by location."""
    if PACK_NAME in sys.modules:
        return sys.modules[PACK_NAME]
    spec = importlib.util.spec_from_file_location(PACK_NAME, ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACK_NAME] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def pack():
    return load_pack()


@pytest.fixture(scope="session")
def bridge(pack):
    return sys.modules[f"{PACK_NAME}.nodes.bridge"]


def record_instances(monkeypatch, module, name: str) -> list:
    """Every instance that `module` creates of its class `name` during the test: the real class, each instance kept."""
    created = []
    original = getattr(module, name)

    def recording(*args, **kwargs):
        created.append(original(*args, **kwargs))
        return created[-1]

    monkeypatch.setattr(module, name, recording)
    return created


@pytest.fixture()
def created_caches(monkeypatch):
    """Every per-run reference-feature cache the engine creates during the test."""
    return record_instances(monkeypatch, sys.modules["omni_core.denoise"], "ReferenceFeatureCache")
