"""Does a trained transformer read its prompt? Its training objective with each item's own prompt, with another
item's prompt, and with the empty prompt, on the same fixed draws.

    python benchmarks/prompt_use.py --config RUN/training_config.yaml RUN/transformer RUN/checkpoints/step_500 ...

Per task type of the config's data (the first --count items of each, from --first on), the flow-matching objective
of `omni_core.training` (no prompt or condition dropout; fixed timesteps and noise per micro-step) is printed for:
own prompts, prompts rotated by one within the batch (`shuffled`), and "" (`empty`). A model that uses its prompt
scores `own` clearly below `shuffled`; `shuffled` ~ `own` means the prompt is ignored (the velocity does not depend
on what the prompt says). Each argument is a transformer folder (release layout) or a training checkpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from omni_core.loading.transformer_loader import load_transformer  # noqa: E402
from omni_core.training.batch import assemble_batch  # noqa: E402
from omni_core.training.checkpoint import MODEL_FILE  # noqa: E402
from omni_core.training.config import load_config  # noqa: E402
from omni_core.training.data import TASK_TYPES, read_jsonl  # noqa: E402
from omni_core.training.features import FrozenFeatures  # noqa: E402
from omni_core.training.forward import VelocityModel  # noqa: E402
from omni_core.training.model import build_transformer, load_frozen  # noqa: E402
from omni_core.training.objective import squared_error_sum  # noqa: E402

PROMPTS = ("own", "shuffled", "empty")


def load_weights(model: VelocityModel, source: Path) -> None:
    """A checkpoint's `model.safetensors` (keys behind `transformer.`) or a released transformer folder."""
    if (source / MODEL_FILE).is_file():
        model.load_state_dict(load_file(source / MODEL_FILE))
    else:
        model.transformer.load_state_dict(load_transformer(source).state_dict())


def objective(model: VelocityModel, items, micro_step: int, features: FrozenFeatures, config) -> float:
    batch = assemble_batch(items, range(len(items)), micro_step, features, config)
    predictions = model(batch.noisy, batch.timestep, batch.text, batch.text_mask, batch.references)
    return squared_error_sum(predictions, batch.targets).item() / sum(y.numel() for y in batch.targets)


def with_prompts(items, kind: str):
    if kind == "own":
        return items
    prompts = ["" for _ in items] if kind == "empty" else [items[(i + 1) % len(items)].instruction for i in range(len(items))]
    return [dataclasses.replace(item, instruction=prompt) for item, prompt in zip(items, prompts)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, required=True, help="the run's training YAML (training_config.yaml)")
    parser.add_argument("weights", type=Path, nargs="+", help="transformer folders or training checkpoints")
    parser.add_argument("--count", type=int, default=64, help="items per task type (batches of --batch)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--first", type=int, default=0, help="index of the first item of each task type")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    config = load_config(args.config, ["data.prompt_dropout=0.0", "data.condition_dropout=0.0"])
    items = read_jsonl(config.data.jsonl)
    tasks = {task: [i for i in items if i.task_type == task][args.first : args.first + args.count] for task in TASK_TYPES}
    tasks = {task: chosen for task, chosen in tasks.items() if chosen}
    text_encoder, vae = load_frozen(config.model, torch.device("cpu"))
    features = FrozenFeatures(text_encoder, vae, config.data, torch.device("cpu"), config.condition_size, config.position_scale)
    model = VelocityModel(build_transformer(config.model, config.independent_condition, config.train.seed),
                          config.independent_condition, config.condition_timestep).eval()
    print(f"{'weights':60s} {'task':10s} " + " ".join(f"{p:>9s}" for p in PROMPTS) + "  shuffled/own")
    for source in args.weights:
        load_weights(model, source)
        for task, chosen in tasks.items():
            batches = [chosen[k : k + args.batch] for k in range(0, len(chosen), args.batch)]
            with torch.no_grad():
                losses = {kind: sum(objective(model, with_prompts(b, kind), 10_000 + k, features, config)
                                    for k, b in enumerate(batches)) / len(batches) for kind in PROMPTS}
            print(f"{str(source)[-60:]:60s} {task:10s} " + " ".join(f"{losses[p]:9.4f}" for p in PROMPTS)
                  + f"  {losses['shuffled'] / losses['own']:.3f}", flush=True)


if __name__ == "__main__":
    main()
