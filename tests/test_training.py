"""Training (omni_core.training): loss goes down, outputs load, LoRAs change the model, resume is exact, two CPU
processes under `accelerate launch` agree with one, the independent-condition forward equals inference, and bad
configs or data get errors that name the key or the line."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from safetensors.torch import load_file

import omni_core
from conftest import FIXTURES, max_abs_diff
from masked_joint import masked_joint_forward
from omni_core.condition import ReferenceImage
from omni_core.lora import read_lora
from omni_core.packing import pad_sequences
from omni_core.reference_cache import KVReuse, condition_branch, place_condition
from omni_core.training import ConfigError, TrainingDataError, load_config, train
from omni_core.training.batch import assemble_batch
from omni_core.training.data import read_jsonl
from omni_core.training.features import FrozenFeatures
from omni_core.training.forward import VelocityModel
from omni_core.training.loop import learning_rate
from omni_core.training.model import build_transformer
from omni_core.training.objective import squared_error_sum, training_timesteps
from omni_core.training.config import TimestepConfig

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs" / "training"
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 60), "blue": (40, 60, 230), "yellow": (230, 220, 40)}
SIZE = 32  # pixels: 4 x 4 latent, 2 x 2 tokens with the tiny VAE and patch 2


def _square(colour: str, corner: int) -> PIL.Image.Image:
    pixels = np.full((SIZE, SIZE, 3), 245, dtype=np.uint8)
    top, left = (corner // 2) * 16, (corner % 2) * 16
    pixels[top : top + 16, left : left + 16] = COLOURS[colour]
    return PIL.Image.fromarray(pixels)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """Coloured squares: 4 t2i items, 2 edits (recolour), 2 in-context pairs (two references)."""
    folder = tmp_path_factory.mktemp("training_data")
    lines = []
    for k, colour in enumerate(COLOURS):
        _square(colour, k).save(folder / f"{colour}.png")
        lines.append({"task_type": "t2i", "instruction": f"a {colour} square", "output_image": f"{colour}.png"})
    lines.append({"task_type": "edit", "instruction": "make it blue", "input_images": ["red.png"], "output_image": "blue.png"})
    lines.append({"task_type": "edit", "instruction": "make it yellow", "input_images": ["green.png"], "output_image": "yellow.png"})
    lines.append({"task_type": "in_context", "instruction": "the square of image 1 where image 2 has its",
                  "input_images": ["red.png", "green.png"], "output_image": "green.png"})
    lines.append({"task_type": "in_context", "instruction": "both squares",
                  "input_images": ["blue.png", "yellow.png"], "output_image": "yellow.png"})
    (folder / "train.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return folder


def _overrides(data_dir: Path, output_dir: Path, **extra) -> list[str]:
    values = {
        "output_dir": str(output_dir), "model.path": str(FIXTURES), "data.jsonl": str(data_dir / "train.jsonl"),
        "data.max_output_pixels": SIZE * SIZE, "data.max_input_pixels": SIZE * SIZE, "train.num_threads": 1,
        "train.resume": None, "train.checkpoint_every": 0, "train.warmup_steps": 0, **extra,
    }
    return [f"{key}={'null' if value is None else value}" for key, value in values.items()]


def _evaluation_loss(transformer, config, items, features, micro_steps=range(6)) -> float:
    """The objective on fixed draws (micro-steps 0..5, every item), without gradients."""
    model = VelocityModel(transformer, config.independent_condition)
    total = 0.0
    with torch.no_grad():
        for micro in micro_steps:
            batch = assemble_batch(items, range(len(items)), micro, features, config)
            elements = sum(y.numel() for y in batch.targets)
            total += squared_error_sum(model(batch.noisy, batch.timestep, batch.text, batch.text_mask, batch.references), batch.targets).item() / elements
    return total / len(micro_steps)


@pytest.fixture(scope="module")
def features_for(tiny_model):
    def make(config):
        return FrozenFeatures(tiny_model.text_encoder, tiny_model.vae, config.data, torch.device("cpu"),
                              config.condition_size, config.position_scale)
    return make


def test_full_training_from_random_init_lowers_the_loss_and_writes_the_release_layout(data_dir, tmp_path, features_for):
    """The shipped from-scratch config (paths overridden): 40 steps from random weights lower the objective on fixed
    draws, and transformer/ loads with omni_core.load_model beside the other models."""
    config = load_config(CONFIGS / "full_from_scratch.yaml", _overrides(
        data_dir, tmp_path / "run", **{"model.transformer_config": str(FIXTURES / "transformer" / "config.json"),
                                      "train.steps": 40, "train.batch_size": 4, "train.learning_rate": 2e-3,
                                      "data.prompt_dropout": 0.0, "data.condition_dropout": 0.0}))
    output = train(config)
    items = read_jsonl(config.data.jsonl)
    features = features_for(config)
    initial = build_transformer(config.model, False, config.train.seed)
    model = omni_core.load_model({"transformer": output / "transformer", "vae": FIXTURES / "vae", "text_encoder": FIXTURES})
    before = _evaluation_loss(initial, config, items, features)
    after = _evaluation_loss(model.transformer, config, items, features)
    assert after < 0.8 * before, (before, after)
    log = [json.loads(line) for line in (output / "train_log.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in log] == list(range(1, 41))
    saved = json.loads((output / "transformer" / "config.json").read_text())
    assert saved["_class_name"] == "OmniGen2Transformer2DModel" and "independent_condition" not in saved
    assert model.generate("a red square", width=SIZE, height=SIZE, steps=2).images.shape == (1, 3, SIZE, SIZE)


def test_full_training_continues_from_a_trained_transformer_folder(data_dir, tmp_path):
    """A curriculum's second phase: full training from a released-layout transformer (loaded frozen, for inference)
    trains every parameter, so each tensor of the output differs from the one it started from."""
    start = FIXTURES / "transformer"
    output = train(load_config(None, _overrides(data_dir, tmp_path / "run", **{
        "model.transformer": str(start), "train.steps": 2, "train.batch_size": 4, "train.learning_rate": 1e-3})))
    before = load_file(start / "diffusion_pytorch_model.safetensors")
    after = load_file(output / "transformer" / "diffusion_pytorch_model.safetensors")
    assert sorted(before) == sorted(after)
    unchanged = [key for key in before if torch.equal(before[key], after[key])]
    assert not unchanged, unchanged


def test_lora_trains_and_its_file_loads_and_changes_the_output(data_dir, tmp_path, tiny_model):
    """An independent-condition LoRA from the shipped config: the file has our format with its training facts, and
    load_model(loras=) gives another velocity than the base model and makes independent the default mode."""
    config = load_config(CONFIGS / "lora_independent_condition.yaml", _overrides(
        data_dir, tmp_path / "run", **{"train.steps": 6, "train.batch_size": 2, "train.learning_rate": 5e-3,
                                      "lora.rank": 4, "train.mixed_precision": "no"}))
    output = train(config)
    lora = read_lora(output / "lora.safetensors")
    assert lora.training.independent_condition is True and lora.key_format == "omni_core"
    assert {m.rank for m in lora.modules.values()} == {4} and lora.metadata["alpha"] == "4.0"
    assert {"layers.0.attn.to_q", "noise_refiner.0.attn.to_out.0"} <= set(lora.modules)
    assert not list(output.glob("transformer"))  # a LoRA run writes no full weights
    with_lora = omni_core.load_model(FIXTURES, loras=[(output / "lora.safetensors", 1.0)])
    assert with_lora.transformer.config.independent_condition is True
    x, t = torch.randn(1, 16, 4, 4), torch.tensor([0.5])
    text = tiny_model.text_encoder.encode_prompt("a red square")
    with torch.no_grad():
        base = tiny_model.transformer(x, t, text.embeds, text.mask)
        tuned = with_lora.transformer(x, t, text.embeds, text.mask)
    assert max_abs_diff(base, tuned) > 1e-3


@pytest.mark.parametrize("kind", ["full", "full_t2i_only", "independent_lora"])
def test_resume_continues_from_the_saved_step_and_equals_an_uninterrupted_run(data_dir, tmp_path, kind):
    """4 steps (gradient accumulation 2) in one go vs 2 steps, then resumed to 4: the same weights; the resumed run
    starts at step 3 and keeps the data order and draws (they are functions of the step). t2i-only data leaves the
    reference layers without gradients, hence without optimizer moments in the checkpoint."""
    common = {"train.batch_size": 2, "train.gradient_accumulation_steps": 2, "train.learning_rate": 1e-3}
    if kind == "full_t2i_only":
        common["data.task_types"] = "[t2i]"
    if kind.startswith("full"):
        common["model.transformer_config"] = str(FIXTURES / "transformer" / "config.json")
        weights = lambda run: load_file(run / "transformer" / "diffusion_pytorch_model.safetensors")
    else:
        common.update({"lora.rank": 2, "independent_condition": "true", "train.learning_rate": 1e-2})
        weights = lambda run: load_file(run / "lora.safetensors")
    whole = train(load_config(None, _overrides(data_dir, tmp_path / "whole", **common, **{"train.steps": 4})))
    split = tmp_path / "split"
    train(load_config(None, _overrides(data_dir, split, **common, **{"train.steps": 2})))
    assert (split / "checkpoints" / "step_2" / "model.safetensors").is_file()
    train(load_config(None, _overrides(data_dir, split, **common, **{"train.steps": 4, "train.resume": "latest"})))
    a, b = weights(whole), weights(split)
    assert sorted(a) == sorted(b) and max(max_abs_diff(a[k], b[k]) for k in a) < 1e-6
    log = [json.loads(line) for line in (split / "train_log.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in log] == [1, 2, 3, 4]
    whole_log = [json.loads(line) for line in (whole / "train_log.jsonl").read_text().splitlines()]
    assert abs(log[3]["loss"] - whole_log[3]["loss"]) < 1e-5
    assert not list((split / "checkpoints").glob("*.partial"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_cpu_processes_under_accelerate_launch_agree_with_one(data_dir, tmp_path):
    """accelerate launch with configs/accelerate/cpu_2proc.yaml (gloo): batch 1 per process equals batch 2 in one
    process (the same global batch), step by step in the loss and in the final weights."""
    common = {"model.transformer_config": str(FIXTURES / "transformer" / "config.json"), "train.steps": 3,
              "train.learning_rate": 1e-3}
    one = train(load_config(None, _overrides(data_dir, tmp_path / "one", **common, **{"train.batch_size": 2})))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(ROOT / "configs" / "accelerate" / "cpu_2proc.yaml"), "--main_process_port", str(_free_port()),
               "-m", "omni_core.training",
               *_overrides(data_dir, tmp_path / "two", **common, **{"train.batch_size": 1})]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    two = tmp_path / "two"
    losses = [[json.loads(line)["loss"] for line in (run / "train_log.jsonl").read_text().splitlines()] for run in (one, two)]
    assert np.allclose(losses[0], losses[1], atol=1e-5), losses
    a = load_file(one / "transformer" / "diffusion_pytorch_model.safetensors")
    b = load_file(two / "transformer" / "diffusion_pytorch_model.safetensors")
    assert max(max_abs_diff(a[k], b[k]) for k in a) < 1e-5


def test_checkpoints_of_fsdp2_shards_restore_exactly_sharded_or_not(tmp_path):
    """tests/fsdp_checkpoint.py under torchrun, two CPU processes over gloo: a checkpoint written from FSDP2 shards
    (every transformer block a unit, as configs/accelerate/fsdp.yaml) restores parameters and optimizer state exactly,
    into shards and into one unsharded model, and parameters that never had a gradient come back with no optimizer
    state (not torch.distributed.checkpoint's zero-gradient step 1, which would change their first real update)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
               str(ROOT / "tests" / "fsdp_checkpoint.py"), str(tmp_path / "checkpoints" / "step_2")]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["step"] == 2 and report["sharded"] == report["unsharded"] == [True, True], report


def _tiny_trainable():
    transformer = omni_core.load_model(FIXTURES).transformer
    return transformer.requires_grad_(True)


def test_independent_condition_training_forward_equals_inference_and_the_masked_joint_reference(tiny_model):
    """A batch of two samples (different prompts, one plain and one compact reference vs two references) through the
    training forward with autograd equals inference's independent mode (condition branch once, KVReuse) per sample,
    and its gradients equal those of the naive single masked joint forward."""
    transformer = _tiny_trainable()
    texts = tiny_model.text_encoder.encode(["a cat", "the dog of image 1 on the sofa of image 2"])
    compact = ReferenceImage(torch.randn(16, 4, 4), (64, 64), position_scale=2.0)
    refs = [[torch.randn(16, 6, 8)], [compact, torch.randn(16, 8, 6)]]
    x = [torch.randn(16, 6, 6), torch.randn(16, 4, 6)]
    t = torch.tensor([0.3, 0.8])
    text, mask = pad_sequences([c.embeds[0] for c in texts])
    model = VelocityModel(transformer, independent_condition=True)
    predictions = model(x, t, text, mask.long(), refs)
    sum((p ** 2).sum() for p in predictions).backward()
    trained = {name: p.grad.clone() for name, p in transformer.named_parameters()}
    transformer.zero_grad()
    naive = [masked_joint_forward(transformer, x[i], t[i : i + 1], texts[i].embeds, texts[i].mask, refs[i]) for i in range(2)]
    sum((p ** 2).sum() for p in naive).backward()
    for i in range(2):
        with torch.no_grad():
            features = place_condition(transformer, condition_branch(transformer, refs[i]), texts[i].embeds.shape[1])
            inference = transformer(x[i][None], t[i : i + 1], texts[i].embeds, texts[i].mask, [refs[i]], reference_kv=KVReuse(features))
        assert max_abs_diff(predictions[i], inference[0]) < 1e-5
        assert max_abs_diff(predictions[i], naive[i]) < 1e-4
    worst = max((trained[n] - p.grad).abs().max().item() / (p.grad.abs().max().item() + 1e-12)
                for n, p in transformer.named_parameters() if p.grad is not None and p.grad.abs().max() > 0)
    assert worst < 1e-4
    assert transformer.ref_image_refiner[0].attn.to_q.weight.grad.abs().sum() > 0  # the condition branch trains


def test_joint_training_forward_is_the_inference_forward_with_gradients(tiny_model):
    """Without independent_condition the training forward is the model's own forward; under autograd the CPU GEMM
    and attention fall back to F.linear/SDPA and the gradient matches finite differences."""
    transformer = _tiny_trainable().double()
    text = tiny_model.text_encoder.encode_prompt("a red square")
    x, ref = torch.randn(16, 4, 4, dtype=torch.float64), torch.randn(16, 4, 4, dtype=torch.float64)
    model = VelocityModel(transformer)
    weight = transformer.layers[1].attn.to_v.weight
    loss = lambda: (model([x], torch.tensor([0.4]), text.embeds.double(), text.mask, [[ref]])[0] ** 2).sum()
    loss().backward()
    eps, (i, j) = 1e-6, (3, 5)
    with torch.no_grad():
        weight[i, j] += eps
        up = loss().item()
        weight[i, j] -= 2 * eps
        down = loss().item()
        weight[i, j] += eps
    assert abs((up - down) / (2 * eps) - weight.grad[i, j].item()) < 1e-5 * max(1.0, abs(weight.grad[i, j].item()))


def test_gradient_checkpointing_recomputes_blocks_and_keeps_gradients(tiny_model):
    transformer = _tiny_trainable()
    text = tiny_model.text_encoder.encode_prompt("a red square")
    x, refs = [torch.randn(16, 4, 4)], [[torch.randn(16, 4, 4)]]
    calls = []
    transformer.layers[0].attn.register_forward_hook(lambda *args: calls.append(1))
    grads = []
    for enabled in (False, True):
        transformer.set_gradient_checkpointing(enabled)
        transformer.zero_grad()
        calls.clear()
        model = VelocityModel(transformer, independent_condition=True)
        (model(x, torch.tensor([0.5]), text.embeds, text.mask, refs)[0] ** 2).sum().backward()
        grads.append({n: p.grad.clone() for n, p in transformer.named_parameters()})
        assert len(calls) == (4 if enabled else 2)  # condition branch + main pass, each run again in backward
    transformer.set_gradient_checkpointing(False)
    assert all(torch.equal(grads[0][n], grads[1][n]) for n in grads[0])


def test_compact_condition_features_are_the_tokens_inference_sees(data_dir, tiny_model, features_for):
    """condition_size 16 on a 32-pixel reference: the cached reference latent and position scale equal what
    inference's compact_condition makes of the same image (a LoRA trains on the tokens it will see)."""
    config = load_config(CONFIGS / "lora_compact_condition.yaml", _overrides(data_dir, data_dir / "unused", **{"condition_size": 16}))
    item = [i for i in read_jsonl(config.data.jsonl) if i.task_type == "edit"][0]
    posterior = features_for(config).references(item)[0]
    condition = tiny_model.encode_condition("x", images=[PIL.Image.open(item.input_images[0])], max_pixels=SIZE * SIZE)
    expected = tiny_model.compact_condition(condition, condition_scale=0.5).references[0]
    assert posterior.mean.shape == expected.latent.shape == (16, 2, 2)
    assert max_abs_diff(posterior.mean, expected.latent) < 1e-5
    assert posterior.position_scale == expected.position_scale == 2.0


def test_timesteps_follow_the_official_logit_normal_with_dynamic_shift():
    """Median of t: sigmoid(0) = 0.5 unshifted; at 256 tokens the shift has mu = 0.5: 1 - e^0.5 / (e^0.5 + 1)."""
    normal = torch.zeros(2)
    assert training_timesteps(normal, [256, 256], TimestepConfig(dynamic_shift=False)).tolist() == [0.5, 0.5]
    shifted = training_timesteps(normal, [256, 4096], TimestepConfig()).tolist()
    assert abs(shifted[0] - (1 - np.exp(0.5) / (np.exp(0.5) + 1))) < 1e-6
    assert abs(shifted[1] - (1 - np.exp(1.15) / (np.exp(1.15) + 1))) < 1e-6


def test_a_curriculum_phase_trains_on_its_task_types_only(data_dir, tmp_path):
    config = load_config(None, _overrides(data_dir, tmp_path, **{"data.task_types": "[edit, in_context]"}))
    assert config.data.task_types == ("edit", "in_context")
    kept = read_jsonl(config.data.jsonl, config.data.task_types)
    every = read_jsonl(config.data.jsonl)
    assert [i.source for i in kept] == [i.source for i in every if i.task_type != "t2i"] and len(kept) == 4
    only_edits = tmp_path / "edits.jsonl"
    only_edits.write_text('{"task_type": "edit", "instruction": "x", "input_images": ["red.png"], "output_image": "red.png"}\n')
    (tmp_path / "red.png").write_bytes((data_dir / "red.png").read_bytes())
    with pytest.raises(TrainingDataError, match=r"holds no t2i items \(data.task_types\)"):
        read_jsonl([only_edits], ("t2i",))


def test_cosine_schedule_warms_up_then_decays_to_its_minimum_at_the_last_step(data_dir, tmp_path):
    common = {"train.steps": 12, "train.learning_rate": 1e-3, "train.min_learning_rate": "1e-5"}
    cosine = load_config(None, _overrides(data_dir, tmp_path, **common, **{"train.warmup_steps": 2,
                                                                           "train.lr_scheduler": "cosine"}))
    rates = [learning_rate(cosine, step) for step in range(12)]
    assert rates[0] == pytest.approx(5e-4) and rates[1] == pytest.approx(1e-3)
    assert rates[6] == pytest.approx(1e-5 + (1e-3 - 1e-5) * 0.5)  # half way through the decay: cos(pi / 2)
    assert rates[11] == pytest.approx(1e-5) and all(a > b for a, b in zip(rates[1:], rates[2:]))
    constant = load_config(None, _overrides(data_dir, tmp_path, **common, **{"train.warmup_steps": 2}))
    assert [learning_rate(constant, step) for step in range(12)] == [5e-4] + [1e-3] * 11


def test_shipped_configs_parse(data_dir, tmp_path):
    for path in sorted(CONFIGS.rglob("*.yaml")):
        config = load_config(path, _overrides(data_dir, tmp_path))
        assert config.train.steps > 0, path


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["train.stepz=3"], "unknown config key train.stepz"),
        (["train.steps=ten"], "'train.steps' must be a whole number"),
        (["lora.rank=0"], "'lora.rank' must be >= 1"),
        (["data.prompt_dropout=1.5"], "'data.prompt_dropout' must be a probability"),
        (["train.mixed_precision=fp8"], "'train.mixed_precision' must be one of"),
        (["train.lr_scheduler=linear"], "'train.lr_scheduler' must be one of constant, cosine"),
        (["data.task_types=[t2i, paint]"], "'data.task_types' must be a non-empty list of t2i, edit, in_context"),
        (["data.task_types=[]"], "'data.task_types' must be a non-empty list"),
        (["train.min_learning_rate=-1"], "'train.min_learning_rate' must be >= 0"),
        (["train.steps"], "must look like dotted.key=value"),
        (["lora.rank=4", "model.transformer_config=/x/config.json"], "a LoRA needs trained base weights"),
    ],
)
def test_config_errors_name_the_key(data_dir, tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load_config(None, _overrides(data_dir, tmp_path) + overrides)


def test_config_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "none.yaml")
    (tmp_path / "bad.yaml").write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "missing.yaml").write_text("model: {path: x}\ndata: {jsonl: y}\n")
    with pytest.raises(ConfigError, match="missing config key output_dir"):
        load_config(tmp_path / "missing.yaml")


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"task_type": "t2i", "instruction": "x", "output_image": "red.png"', "not valid JSON"),
        ('{"task_type": "t2i", "instruction": "x", "output_image": "nope.png"}', "output_image 'nope.png' does not exist"),
        ('{"task_type": "t2i", "instruction": 3, "output_image": "red.png"}', "instruction must be a string"),
        ('{"task_type": "paint", "instruction": "x", "output_image": "red.png"}', "task_type must be one of"),
        ('{"task_type": "t2i", "instruction": "x", "output_image": "red.png", "extra": 1}', "unknown key"),
        ('{"task_type": "t2i", "instruction": "x"}', "missing key 'output_image'"),
        ('{"task_type": "in_context", "instruction": "x", "input_images": ["red.png", "red.png", "red.png", '
         '"red.png", "red.png", "red.png"], "output_image": "red.png"}', "6 input_images given; OmniGen2 takes at most 5"),
        ('{"task_type": "edit", "instruction": "x", "input_images": "red.png", "output_image": "red.png"}',
         "input_images must be a list"),
    ],
)
def test_data_errors_name_the_line(data_dir, tmp_path, line, message):
    jsonl = tmp_path / "bad.jsonl"
    good = '{"task_type": "t2i", "instruction": "a red square", "output_image": "red.png"}'
    jsonl.write_text(f"{good}\n\n{line}\n")
    for name in ("red.png",):
        (tmp_path / name).write_bytes((data_dir / name).read_bytes())
    with pytest.raises(TrainingDataError, match=f"{jsonl}:3: .*{message}".replace("(", r"\(").replace("[", r"\[")):
        read_jsonl([jsonl])


def test_a_bad_data_line_fails_before_any_model_loads(data_dir, tmp_path):
    jsonl = tmp_path / "bad.jsonl"
    jsonl.write_text('{"task_type": "t2i", "instruction": "x", "output_image": "missing.png"}\n')
    config = load_config(None, _overrides(data_dir, tmp_path / "run", **{"data.jsonl": str(jsonl), "model.path": str(tmp_path / "no_model")}))
    with pytest.raises(TrainingDataError, match=":1: output_image 'missing.png' does not exist"):
        train(config)
