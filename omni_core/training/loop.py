"""The training run: accelerate's Accelerator places the models, wraps DDP/FSDP, runs mixed precision and gradient
accumulation; the loop draws each micro-batch from the plan, steps the optimizer and saves checkpoints and outputs.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from accelerate import Accelerator, DistributedDataParallelKwargs
from tqdm.auto import tqdm

from .batch import assemble_batch
from .checkpoint import checkpoint_dir, latest_checkpoint, load_checkpoint, prune_checkpoints, save_checkpoint
from ..config import TransformerConfig
from .config import ConfigError, TrainingConfig, to_dict
from .data import TrainingItem, output_size, read_jsonl
from .features import FrozenFeatures
from .forward import VelocityModel
from .peft_adapters import add_lora, lora_weights, write_lora
from .model import build_transformer, load_frozen, save_transformer
from .objective import squared_error_sum
from .order import BatchPlan

log = logging.getLogger(__name__)
LOG_FILE = "train_log.jsonl"


def mixed_precision(requested: str) -> str | None:
    """accelerate's mixed_precision for the request: "auto" is what `accelerate launch` was configured with, else
    bf16 on a GPU that has it, otherwise "no" (CPU)."""
    if requested != "auto":
        return requested
    if os.environ.get("ACCELERATE_MIXED_PRECISION"):
        return None  # the launcher's setting
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


def learning_rate(config: TrainingConfig, step: int) -> float:
    """A linear warm-up over `train.warmup_steps`, then constant (OmniGen2's constant-with-warmup schedule) or a
    cosine decay to `train.min_learning_rate` at the last step."""
    settings = config.train
    warmup = settings.warmup_steps
    if step + 1 < warmup:
        return settings.learning_rate * (step + 1) / warmup
    if settings.lr_scheduler == "constant":
        return settings.learning_rate
    progress = (step + 1 - warmup) / max(1, settings.steps - warmup)
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return settings.min_learning_rate + (settings.learning_rate - settings.min_learning_rate) * cosine


def check_compatible(transformer: TransformerConfig, text_width: int, latent_channels: int) -> None:
    """The transformer must read the text encoder's features and the VAE's latents."""
    if transformer.text_feat_dim != text_width:
        raise ConfigError(
            f"the transformer's text_feat_dim is {transformer.text_feat_dim} but the text encoder's features are "
            f"{text_width} wide; set text_feat_dim {text_width} in model.transformer_config or use a matching model.text_encoder."
        )
    if transformer.in_channels != latent_channels:
        raise ConfigError(
            f"the transformer's in_channels is {transformer.in_channels} but the VAE has {latent_channels} latent "
            "channels; fix in_channels in model.transformer_config or use a matching model.vae."
        )


def _accelerator(settings) -> Accelerator:
    return Accelerator(
        # without a GPU, processes started by torchrun / `accelerate launch` join one CPU group over gloo
        cpu=not torch.accelerator.is_available(),
        mixed_precision=mixed_precision(settings.mixed_precision),
        gradient_accumulation_steps=settings.gradient_accumulation_steps,
        # batches without reference images (t2i, condition dropout) leave the reference layers without gradients
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )


@dataclass
class Run:
    """What the steps of a run share: the data, its plan and features, the prepared model and optimizer."""

    config: TrainingConfig
    accelerator: Accelerator
    device: torch.device
    items: list[TrainingItem]
    latent_elements: list[int]  # per item, its output latent's element count
    plan: BatchPlan
    features: FrozenFeatures
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    trainable: list[torch.nn.Parameter]


def _setup(config: TrainingConfig, accelerator: Accelerator) -> Run:
    settings, data = config.train, config.data
    items = read_jsonl(data.jsonl, data.task_types)  # every data error before any model loads
    sizes = [output_size(item, data.max_output_pixels, data.max_side_length) for item in items]
    transformer = build_transformer(config.model, config.independent_condition, settings.seed)
    device = torch.device("cpu") if accelerator.device.type == "cpu" else accelerator.device  # not "cpu:0"
    text_encoder, vae = load_frozen(config.model, device)
    features = FrozenFeatures(text_encoder, vae, data, device, config.condition_size, config.position_scale)
    check_compatible(transformer.config, features.prompt("").shape[-1], vae.config.latent_channels)
    if config.lora is not None:
        torch.manual_seed(settings.seed)  # the adapters' Gaussian init: the same in every run and process
        add_lora(transformer, config.lora)
    transformer.set_gradient_checkpointing(settings.gradient_checkpointing)
    model = VelocityModel(transformer, config.independent_condition, config.condition_timestep)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        trainable, lr=settings.learning_rate, betas=(settings.adam_beta1, settings.adam_beta2),
        eps=settings.adam_epsilon, weight_decay=settings.weight_decay,
        foreach=True,  # one fused update over all tensors (torch picks it on GPUs only by default)
    )
    model, optimizer = accelerator.prepare(model, optimizer)
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    elements = [vae.config.latent_channels * (h // factor) * (w // factor) for h, w in sizes]
    plan = BatchPlan(sizes, settings.batch_size * accelerator.num_processes, settings.seed, data.bucket_by_size)
    return Run(config, accelerator, device, items, elements, plan, features, model, optimizer, trainable)


def _micro_step(run: Run, micro_step: int) -> float:
    """Forward and backward of this process's share of a micro-batch (the optimizer steps on the last one of each
    accumulation); returns the loss averaged over processes."""
    accelerator, settings = run.accelerator, run.config.train
    processes, rank = accelerator.num_processes, accelerator.process_index
    indices = run.plan.local_micro_batch(micro_step, rank, processes)
    positions = range(rank * settings.batch_size, (rank + 1) * settings.batch_size)
    batch = assemble_batch([run.items[i] for i in indices], positions, micro_step, run.features, run.config, run.device)
    # the official normalisation: the error summed over the global batch's latent elements, divided by their count
    # (DDP averages the processes' gradients, hence the factor)
    elements = sum(run.latent_elements[i] for i in run.plan.global_micro_batch(micro_step))
    with accelerator.accumulate(run.model):
        predictions = run.model(batch.noisy, batch.timestep, batch.text, batch.text_mask, batch.references)
        loss = squared_error_sum(predictions, batch.targets) * processes / elements
        accelerator.backward(loss)
        if accelerator.sync_gradients and settings.max_grad_norm:
            accelerator.clip_grad_norm_(run.trainable, settings.max_grad_norm)
        run.optimizer.step()
        run.optimizer.zero_grad(set_to_none=True)
    return accelerator.reduce(loss.detach(), "mean").item()


def train(config: TrainingConfig) -> Path:
    """Run the training `config` describes; returns the output folder."""
    settings, output_dir = config.train, Path(config.output_dir)
    if settings.num_threads is not None:
        torch.set_num_threads(settings.num_threads)
    accelerator = _accelerator(settings)
    run = _setup(config, accelerator)
    start = 0
    resume = latest_checkpoint(output_dir) if settings.resume == "latest" else settings.resume and Path(settings.resume)
    if resume:
        start = load_checkpoint(Path(resume), run.model, run.optimizer.optimizer)
        log.info("resumed from %s at step %d", resume, start)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "training_config.yaml").write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
        _truncate_log(output_dir / LOG_FILE, start)
    bar = tqdm(total=settings.steps, initial=start, disable=not accelerator.is_main_process, desc="training", unit="step")
    log_lines: list[str] = []
    clock = time.perf_counter()
    accumulation = settings.gradient_accumulation_steps
    for step in range(start, settings.steps):
        for group in run.optimizer.param_groups:
            group["lr"] = learning_rate(config, step)
        loss = sum(_micro_step(run, step * accumulation + micro) for micro in range(accumulation)) / accumulation
        done = step + 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}")
        if accelerator.is_main_process:
            log_lines.append(json.dumps({"step": done, "loss": loss, "lr": learning_rate(config, step)}))
            if done % settings.log_every == 0 or done == settings.steps:
                with open(output_dir / LOG_FILE, "a") as handle:
                    handle.write("".join(line + "\n" for line in log_lines))
                log_lines.clear()
        if settings.checkpoint_every and done % settings.checkpoint_every == 0 and done < settings.steps:
            _checkpoint(output_dir, run.model, run.optimizer, done, accelerator, config)
    bar.close()
    if start < settings.steps:
        _checkpoint(output_dir, run.model, run.optimizer, settings.steps, accelerator, config)
    _save_outputs(output_dir, accelerator, run.model, config)
    log.info("trained %d steps in %.1f s", settings.steps - start, time.perf_counter() - clock)
    accelerator.end_training()
    return output_dir


def _truncate_log(path: Path, step: int) -> None:
    """Keep the log lines of steps <= `step`: a run resumed from a checkpoint logs the steps after it again (an
    interrupted run may have logged some of them already); a fresh run starts an empty log."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in kept))


def _checkpoint(output_dir: Path, model, optimizer, step: int, accelerator: Accelerator, config: TrainingConfig) -> None:
    save_checkpoint(checkpoint_dir(output_dir, step), model, optimizer.optimizer, step,
                    accelerator.is_main_process, {"config": to_dict(config)})
    if accelerator.is_main_process:
        prune_checkpoints(output_dir, config.train.checkpoints_total_limit)
    accelerator.wait_for_everyone()


def _save_outputs(output_dir: Path, accelerator: Accelerator, model, config: TrainingConfig) -> None:
    """Full training: transformer/ in the release layout; LoRA: lora.safetensors."""
    state = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        prefix = "transformer."
        if config.lora is not None:
            write_lora(output_dir, lora_weights(state, prefix), config)
        else:
            transformer = accelerator.unwrap_model(model).transformer
            weights = {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}
            save_transformer(weights, transformer.config, output_dir / "transformer")
    accelerator.wait_for_everyone()
