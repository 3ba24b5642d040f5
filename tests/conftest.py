"""Shared test fixtures: the tiny OmniGen2 model and the outputs recorded from the official implementation."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "omnigen2-tiny"

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
