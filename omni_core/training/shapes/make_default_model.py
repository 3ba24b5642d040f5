"""Make the embedded default model from nothing: synthetic data, its VAE, its MLLM and transformer, by one command.

    python -m omni_core.training.shapes.make_default_model --output omni_core/default_model

1. writes the seeded shapes dataset (train + held-out test) under `--work` (default runs/shapes/data);
2. trains the small VAE on its images into <output>/vae (VAE_PHASES);
3. trains the MLLM, a small Qwen2.5-VL that describes the scenes, judges results and asks to draw (`vlm.py`), into
   <output>/mllm and <output>/processor, and copies the scheduler config;
4. trains the transformer from random weights on that MLLM's features (frozen, as in OmniGen2) with
   `python -m omni_core.training` in three phases: text-to-image only (configs/training/shapes/t2i.yaml, so that it
   learns to read its prompt), then the official joint training on the whole task mix (joint.yaml), then the same
   mix again under a shorter, gentler cosine (refine.yaml) into <output>/transformer;
5. trains the independent-condition LoRA on it (independent.yaml: OminiControl2's asymmetric mask, references
   at the clean timestep) into <output>/loras/independent_condition.safetensors;
6. tunes the MLLM's judge to state its fix as the whole scene the result must show (`vlm.tune_judge`), with the
   features the transformer reads held where they were, into <output>/mllm;
7. fits TeaCache's rescale polynomial to the trained transformer (`omni_core.training.calibrate_teacache`) into
   <output>/transformer/config.json, so that TeaCache's threshold means on this model what it means on the release.
Run again, the command resumes: the finished MLLM, judge and VAE phases are kept and every training run continues
from its newest checkpoint under `--work`. Training runs `--processes` processes (default 2: DDP over gloo on a CPU)
of cpu_count / processes threads each.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from ...loading.model_loader import (
    DEFAULT_MODEL_SIZE,
    DEFAULT_MODEL_TEXT_GUIDANCE,
    FOLDER_DEFAULTS_KEY,
    INDEPENDENT_CONDITION_LORA,
    load_model,
)
from ...loading.text_encoder_loader import load_text_encoder
from ..calibrate_teacache import calibrate, prompts_and_images, write_coefficients
from . import vlm
from .corrections import with_corrections
from .dataset import write_dataset
from .vae import train_vae

REPO = Path(__file__).resolve().parents[3]
SCHEDULER_SOURCE = REPO / "tests" / "fixtures" / "omnigen2-tiny" / "scheduler"
CONFIGS = REPO / "configs" / "training" / "shapes"
ACCELERATE_CONFIG = REPO / "configs" / "accelerate" / "cpu_2proc.yaml"
# The VAE's training: cosine phases (steps, learning rate), each continuing from the previous one's weights.
VAE_PHASES = ((3000, 2e-3), (3000, 1e-3))
MLLM_TRAINING = {"steps": 3000, "batch_size": 32, "learning_rate": 2e-3, "seed": 0}  # vlm.train
JUDGE_TUNING = {"steps": 300, "batch_size": 32, "learning_rate": 1e-3, "seed": 0}  # vlm.tune_judge
CALIBRATION_EXAMPLES = 16  # shapes examples per task that TeaCache's polynomial is fitted on
MODEL_INDEX = {
    "_class_name": "OmniGen2Pipeline",
    "mllm": ["transformers", "Qwen2_5_VLForConditionalGeneration"],
    "processor": ["transformers", "Qwen2_5_VLProcessor"],
    "scheduler": ["omnigen2", "FlowMatchEulerDiscreteScheduler"],
    "transformer": ["omnigen2", "OmniGen2Transformer2DModel"],
    "vae": ["diffusers", "AutoencoderKL"],
    # trained at 64 x 64, where the official 1024 draws nothing and its text guidance 5.0 is too strong
    FOLDER_DEFAULTS_KEY: {"size": DEFAULT_MODEL_SIZE, "text_guidance_scale": DEFAULT_MODEL_TEXT_GUIDANCE},
}


def built_once(folder: Path, build: Callable[[Path], None]) -> Path:
    """`folder`, built by `build(partial)` into a fresh `<folder>.partial` that is renamed when it returns, unless it
    exists: a folder that exists is finished, and a stage cut short starts again from nothing."""
    if not folder.is_dir():
        partial = folder.with_name(folder.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        build(partial)
        partial.rename(folder)
    return folder


def train_mllm(output: Path, work: Path) -> None:
    """The MLLM (`vlm.train`) into work/mllm, kept once done, then its mllm/ and processor/ and the scheduler config
    into `output`, as the release layout has them."""

    def build(partial: Path) -> None:
        torch.set_num_threads(os.cpu_count() or 1)
        vlm.train(partial, **MLLM_TRAINING)
        print(json.dumps({"mllm_held_out": vlm.evaluate(load_text_encoder(partial), 96)}), flush=True)

    folder = built_once(work / "mllm", build)
    for part, source in (("mllm", folder / "mllm"), ("processor", folder / "processor"), ("scheduler", SCHEDULER_SOURCE)):
        shutil.rmtree(output / part, ignore_errors=True)
        shutil.copytree(source, output / part)
    (output / "model_index.json").write_text(json.dumps(MODEL_INDEX, indent=2) + "\n")


def tune_judge(output: Path, work: Path) -> None:
    """The MLLM's judge taught its whole-scene fix (`vlm.tune_judge`, features held for the trained transformer) in
    work/judge, kept once done, then into output/mllm."""

    def build(partial: Path) -> None:
        torch.set_num_threads(os.cpu_count() or 1)
        for part in ("mllm", "processor"):
            shutil.copytree(output / part, partial / part)
        vlm.tune_judge(partial, **JUDGE_TUNING)
        print(json.dumps({"judge_held_out": vlm.evaluate(load_text_encoder(partial), 96, whole_scene_fix=True)}),
              flush=True)

    folder = built_once(work / "judge", build)
    shutil.rmtree(output / "mllm", ignore_errors=True)
    shutil.copytree(folder / "mllm", output / "mllm")


def training_command(processes: int) -> list[str]:
    """`python -m omni_core.training`, or under `accelerate launch` with `processes` local processes (DDP; on a
    machine without a GPU a CPU group over gloo), each process training its share of every batch."""
    if processes == 1:
        return [sys.executable, "-m", "omni_core.training"]
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ACCELERATE_CONFIG),
            "--num_processes", str(processes), "-m", "omni_core.training"]


def run_training(name: str, output: Path, work: Path, processes: int, extra: list[str]) -> Path:
    """One run of configs/training/shapes/<name>.yaml on `output`'s frozen parts; returns its output folder. Its
    progress goes to work/<name>.log."""
    threads = max(1, (os.cpu_count() or 1) // processes)
    command = [*training_command(processes), "--config", str(CONFIGS / f"{name}.yaml"), f"model.path={output}",
               f"data.jsonl={work / 'data' / 'train.jsonl'}", f"output_dir={work / name}",
               f"train.num_threads={threads}", *extra]
    print(f"training {name}: {' '.join(command)}", flush=True)
    with open(work / f"{name}.log", "a") as log:
        if subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO).returncode != 0:
            raise SystemExit(f"training {name} failed; see {work / f'{name}.log'}")
    return work / name


def train_vae_phases(train_jsonl: Path, output: Path, work: Path) -> None:
    """VAE_PHASES into output/vae; a phase whose folder under work/ exists is not trained again."""
    torch.set_num_threads(os.cpu_count() or 1)
    previous = None
    for phase, (steps, learning_rate) in enumerate(VAE_PHASES):
        previous = built_once(work / f"vae_phase_{phase}", lambda into, start=previous: train_vae(
            train_jsonl, into, steps, learning_rate=learning_rate, seed=phase, start=start))
    shutil.rmtree(output / "vae", ignore_errors=True)
    shutil.copytree(previous, output / "vae")


def train_transformers(output: Path, work: Path, processes: int, steps: int | None, lora_steps: int | None) -> None:
    """The transformer (text-to-image phase, then the mix, then the mix refined) into output/transformer, then the
    independent-condition LoRA on it. `steps`: each transformer phase's."""
    phase_steps = [f"train.steps={steps}"] if steps else []
    transformer = None
    for phase in ("t2i", "joint", "refine"):
        start = [f"model.transformer={transformer}"] if transformer else []
        transformer = run_training(phase, output, work, processes, [*start, *phase_steps]) / "transformer"
    shutil.rmtree(output / "transformer", ignore_errors=True)
    shutil.copytree(transformer, output / "transformer")
    independent = run_training("independent", output, work, processes,
                               [f"train.steps={lora_steps}"] if lora_steps else [])
    (output / INDEPENDENT_CONDITION_LORA).parent.mkdir(exist_ok=True)
    shutil.copyfile(independent / "lora.safetensors", output / INDEPENDENT_CONDITION_LORA)


def calibrate_step_cache(output: Path) -> None:
    """TeaCache's polynomial for the trained transformer (at the model's guidance), into its config.json."""
    torch.set_num_threads(os.cpu_count() or 1)
    prompts = prompts_and_images(None, CALIBRATION_EXAMPLES, 64)
    coefficients, _ = calibrate(load_model(output), prompts, size=64, text_guidance_scale=DEFAULT_MODEL_TEXT_GUIDANCE)
    write_coefficients(output, coefficients)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, required=True, help="the model folder to write (release layout)")
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "shapes", help="data, logs and checkpoints")
    parser.add_argument("--train-examples", type=int, default=24000)
    parser.add_argument("--processes", type=int, default=2,
                        help="training processes (global batch = processes x the configs' batch_size; the shipped "
                             "model used 2)")
    parser.add_argument("--steps", type=int, default=None, help="steps of each transformer phase (default: the configs')")
    parser.add_argument("--lora-steps", type=int, default=None, help="independent-condition LoRA steps (default: the config's)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    args.output.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    train_jsonl, _ = write_dataset(args.work / "data", args.train_examples, 48, resolution=64, seed=0,
                                   rework_train=lambda items: with_corrections(items, 0))
    print(f"data written ({time.perf_counter() - start:.0f} s)", flush=True)
    train_vae_phases(train_jsonl, args.output, args.work)
    print(f"vae trained ({time.perf_counter() - start:.0f} s)", flush=True)
    train_mllm(args.output, args.work)
    print(f"mllm trained ({time.perf_counter() - start:.0f} s)", flush=True)
    train_transformers(args.output, args.work, args.processes, args.steps, args.lora_steps)
    tune_judge(args.output, args.work)
    print(f"judge tuned ({time.perf_counter() - start:.0f} s)", flush=True)
    calibrate_step_cache(args.output)
    print(f"default model written to {args.output} in {time.perf_counter() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
