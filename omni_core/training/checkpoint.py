"""Resumable checkpoints in safetensors only: the trained parameters, the optimizer's moments and the step.

Nothing else is needed to resume exactly: the data order, the per-sample draws and the learning rate are functions
of the step (see order.py, batch.py, loop.py). A checkpoint is written to a temporary folder and renamed into place,
so an interrupted save never leaves a half-written `step_N/` behind. The state dicts are gathered in full
(torch.distributed.checkpoint), so one format serves one process, DDP and FSDP.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

from ..errors import OmniGen2Error

MODEL_FILE, OPTIMIZER_FILE, STATE_FILE = "model.safetensors", "optimizer.safetensors", "state.json"
OPTIONS = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)
# Loading is not strict: a parameter that never had a gradient (the reference layers of a t2i-only run) has no
# optimizer moments to restore; the model's keys are checked against the checkpoint's before loading.
LOAD_OPTIONS = dataclasses.replace(OPTIONS, strict=False)


class CheckpointError(OmniGen2Error, ValueError):
    """A checkpoint to resume from is missing or does not fit the run."""


def checkpoint_dir(output_dir: Path, step: int) -> Path:
    return output_dir / "checkpoints" / f"step_{step}"


def latest_checkpoint(output_dir: Path) -> Path | None:
    """The complete checkpoint with the highest step in `output_dir/checkpoints`, or None."""
    found = [
        (int(path.name.split("_", 1)[1]), path)
        for path in (output_dir / "checkpoints").glob("step_*")
        if path.name.split("_", 1)[1].isdigit() and (path / STATE_FILE).is_file()
    ]
    return max(found)[1] if found else None


def save_checkpoint(folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int, is_main: bool,
                    extra: dict | None = None) -> None:
    """Write the trainable parameters, optimizer state and `step` to `folder`. Called on every process (the state is
    gathered from all of them); the main process writes."""
    model_state, optimizer_state = get_state_dict(model, optimizer, options=OPTIONS)
    if not is_main:
        return
    tensors, groups = {}, []
    for name, values in optimizer_state["state"].items():
        for key, value in values.items():
            tensors[f"{name}/{key}"] = torch.as_tensor(value).contiguous()
    for group in optimizer_state["param_groups"]:
        groups.append({key: list(value) if isinstance(value, tuple) else value for key, value in group.items()})
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model_state.items()}, partial / MODEL_FILE)
    save_file(tensors, partial / OPTIMIZER_FILE)
    (partial / STATE_FILE).write_text(json.dumps({"step": step, "param_groups": groups, **(extra or {})}, indent=2))
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)


def load_checkpoint(folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Restore parameters and optimizer state from `folder`; returns the step it was saved at."""
    if not (folder / STATE_FILE).is_file():
        raise CheckpointError(f"'{folder}' is not a training checkpoint (no {STATE_FILE}); check train.resume.")
    state = json.loads((folder / STATE_FILE).read_text())
    model_state = load_file(folder / MODEL_FILE)
    # the names only (every process; the full gather of OPTIONS fills the dict on the main process alone)
    expected, _ = get_state_dict(model, optimizer, options=StateDictOptions(ignore_frozen_params=True))
    if set(expected) != set(model_state):
        missing, unexpected = sorted(set(expected) - set(model_state)), sorted(set(model_state) - set(expected))
        raise CheckpointError(
            f"checkpoint '{folder}' does not fit this run's trainable parameters (missing {missing[:5]}, unexpected "
            f"{unexpected[:5]}); resume with the config it was trained with."
        )
    moments: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in load_file(folder / OPTIMIZER_FILE).items():
        name, field = key.rsplit("/", 1)
        moments.setdefault(name, {})[field] = value
    groups = [{k: tuple(v) if k == "betas" else v for k, v in group.items()} for group in state["param_groups"]]
    set_state_dict(model, optimizer, model_state_dict=model_state,
                   optim_state_dict={"state": moments, "param_groups": groups}, options=LOAD_OPTIONS)
    _drop_initialized_moments(model, optimizer, set(moments))
    return int(state["step"])


def _drop_initialized_moments(model: torch.nn.Module, optimizer: torch.optim.Optimizer, saved: set[str]) -> None:
    """Forget the optimizer state of parameters the checkpoint has none for (they never had a gradient).

    torch.distributed.checkpoint gives every parameter a state before loading (a zero-gradient step: step 1, zero
    moments). Left in place, a parameter's first real update after the resume would be bias-corrected as a second
    step, unlike in the uninterrupted run, where AdamW starts its state at that first gradient."""
    for name, parameter in model.named_parameters():
        if name.removeprefix("module.") not in saved:  # DDP's wrapper prefix; FSDP2 keeps the names
            optimizer.state.pop(parameter, None)


def prune_checkpoints(output_dir: Path, keep: int | None) -> None:
    """Delete all but the newest `keep` checkpoints (None keeps all)."""
    if keep is None:
        return
    found = sorted((int(p.name.split("_", 1)[1]), p) for p in (output_dir / "checkpoints").glob("step_*")
                   if p.name.split("_", 1)[1].isdigit())
    for _, path in found[:-keep]:
        shutil.rmtree(path, ignore_errors=True)
