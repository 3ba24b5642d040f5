"""Loading real safetensors files in both layouts (release folder, ComfyUI single files) and rejecting bad ones."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

import omni_core
from conftest import max_abs_diff
from omni_core import CheckpointMismatchError, InvalidInputError, ModelFileError
from omni_core.config import TransformerConfig
from omni_core.loading.transformer_loader import load_transformer


@pytest.fixture(scope="module")
def transformer_weights(fixture_dir):
    return load_file(fixture_dir / "transformer" / "diffusion_pytorch_model.safetensors")


def write_sharded(folder, state_dict, config):
    """A diffusers folder with two shards and an index, as the 4B release is stored."""
    folder.mkdir()
    keys = sorted(state_dict)
    shards = {"diffusion_pytorch_model-00001-of-00002.safetensors": keys[::2], "diffusion_pytorch_model-00002-of-00002.safetensors": keys[1::2]}
    for name, names in shards.items():
        save_file({k: state_dict[k].contiguous() for k in names}, folder / name)
    index = {"metadata": {}, "weight_map": {k: name for name, names in shards.items() for k in names}}
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
    (folder / "config.json").write_text(json.dumps(config))


@torch.no_grad()
def run_transformer(transformer, reference_cases):
    tensors, _ = reference_cases
    latents = [tensors["forward.hidden_states.0"], tensors["forward.hidden_states.1"]]
    refs = [[tensors["forward.ref_image_hidden_states.0.0"], tensors["forward.ref_image_hidden_states.0.1"]], None]
    return transformer(latents, tensors["forward.timestep"], tensors["forward.text_hidden_states"], tensors["forward.text_attention_mask"], refs)


def test_sharded_folder_and_single_file_give_identical_outputs(tmp_path, fixture_dir, transformer_weights, reference_cases):
    config = json.loads((fixture_dir / "transformer" / "config.json").read_text())
    write_sharded(tmp_path / "transformer", transformer_weights, config)
    save_file(transformer_weights, tmp_path / "omnigen2_fp32.safetensors")
    prefixed = {f"model.diffusion_model.{k}": v for k, v in transformer_weights.items()}
    save_file(prefixed, tmp_path / "omnigen2_prefixed.safetensors")
    expected = run_transformer(load_transformer(fixture_dir / "transformer"), reference_cases)
    for path in ("transformer", "omnigen2_fp32.safetensors", "omnigen2_prefixed.safetensors"):
        out = run_transformer(load_transformer(tmp_path / path), reference_cases)
        assert all(torch.equal(a, b) for a, b in zip(out, expected)), path


def test_single_files_load_model_matches_release_folder(tmp_path, fixture_dir, transformer_weights, tiny_model):
    """ComfyUI's files: transformer without config, BFL-key VAE, a text encoder file with a separate tokenizer."""
    save_file(transformer_weights, tmp_path / "omnigen2_fp32.safetensors")
    shutil.copy(fixture_dir / "vae_bfl" / "ae.safetensors", tmp_path / "ae.safetensors")
    shutil.copy(fixture_dir / "mllm" / "model.safetensors", tmp_path / "qwen_2.5_vl_tiny.safetensors")
    files = {
        "transformer": tmp_path / "omnigen2_fp32.safetensors",
        "vae": tmp_path / "ae.safetensors",
        "text_encoder": tmp_path / "qwen_2.5_vl_tiny.safetensors",
        "tokenizer": fixture_dir / "processor",
    }
    singles = omni_core.load_model(files)
    image = torch.rand(40, 56, 3)
    kwargs = dict(images=[image], width=48, height=32, steps=2, seed=4)
    assert max_abs_diff(singles.generate("a cat", **kwargs).images, tiny_model.generate("a cat", **kwargs).images) < 1e-5


def test_default_model_is_bundled():
    model = omni_core.load_model()
    assert model.generate("hello", width=32, height=32, steps=1).images.shape == (1, 3, 32, 32)


def test_bf16_weights(fixture_dir):
    model = omni_core.load_model(fixture_dir, dtype=torch.bfloat16)
    assert model.transformer.x_embedder.weight.dtype == torch.bfloat16
    images = model.generate("a dog", width=32, height=32, steps=2).images
    assert images.dtype == torch.float32 and torch.isfinite(images).all()


def test_missing_files_are_named(tmp_path):
    with pytest.raises(ModelFileError, match="No such file"):
        load_transformer(tmp_path / "nope.safetensors")
    with pytest.raises(ModelFileError, match="lacks transformer"):
        omni_core.load_model(tmp_path)
    with pytest.raises(ModelFileError, match="needs files for"):
        omni_core.load_model({"transformer": tmp_path / "x.safetensors"})
    (tmp_path / "weights.bin").write_bytes(b"pickle")
    with pytest.raises(ModelFileError, match="not a .safetensors file"):
        load_transformer(tmp_path / "weights.bin")
    (tmp_path / "broken.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(ModelFileError, match="Cannot read"):
        load_transformer(tmp_path / "broken.safetensors")


def test_wrong_key_sets_are_named(tmp_path, transformer_weights, fixture_dir):
    save_file({k: v for k, v in transformer_weights.items() if k != "layers.1.attn.to_q.weight"}, tmp_path / "a.safetensors")
    with pytest.raises(CheckpointMismatchError, match=r"missing \(1\): \[layers.1.attn.to_q.weight\]"):
        load_transformer(tmp_path / "a.safetensors")
    save_file({**transformer_weights, "extra.weight": torch.zeros(1)}, tmp_path / "b.safetensors")
    with pytest.raises(CheckpointMismatchError, match=r"unexpected \(1\): \[extra.weight\]"):
        load_transformer(tmp_path / "b.safetensors")
    with pytest.raises(CheckpointMismatchError, match="not an OmniGen2 transformer"):
        load_transformer(fixture_dir / "vae")


def test_config_that_does_not_match_the_tensors(tmp_path, fixture_dir, transformer_weights):
    config = json.loads((fixture_dir / "transformer" / "config.json").read_text())
    write_sharded(tmp_path / "transformer", transformer_weights, {**config, "num_kv_heads": 4})
    with pytest.raises(CheckpointMismatchError, match=r"to_k.weight: file \(48, 96\), model \(96, 96\)"):
        load_transformer(tmp_path / "transformer")


def test_unsupported_dtype(fixture_dir):
    with pytest.raises(InvalidInputError, match="float64"):
        omni_core.load_model(fixture_dir, dtype=torch.float64)


@pytest.mark.parametrize("device", ["cuda:99", "nonsense"])  # no machine has 100 GPUs; not a device type at all
def test_unusable_device_is_named_before_any_weights_load(fixture_dir, device):
    with pytest.raises(InvalidInputError, match=rf"device='{device}' cannot be used here .*use one of cpu"):
        omni_core.load_model(fixture_dir, device=device)


def test_a_transformer_config_missing_sizes_names_them(tmp_path, fixture_dir):
    config = json.loads((fixture_dir / "transformer" / "config.json").read_text())
    del config["hidden_size"], config["text_feat_dim"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelFileError, match=r"lacks \['hidden_size', 'text_feat_dim'\]"):
        TransformerConfig.from_json(tmp_path / "config.json")
