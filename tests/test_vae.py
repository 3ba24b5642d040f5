"""The VAE loaders (diffusers folder, sharded folder, single file, BFL ae.safetensors) and encode/decode, against
latents and images that ComfyUI's own Encoder/Decoder computed on the tiny fixture VAE."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL
from safetensors.torch import load_file, save_file

from conftest import FIXTURES, TOLERANCE
from omni_core.errors import CheckpointMismatchError, InvalidInputError, ModelFileError
from omni_core.loading.safetensors_io import load_state_dict
from omni_core.loading.vae_bfl import BFL, DIFFUSERS, convert_bfl_vae, detect_vae_layout
from omni_core.loading.vae_loader import FLUX_VAE_CONFIG, infer_vae_config, load_vae
from omni_core.vae import decode_latents, encode_to_latents

VAE_DIR = FIXTURES / "vae"
BFL_FILE = FIXTURES / "vae_bfl" / "ae.safetensors"


@pytest.fixture(scope="module")
def reference() -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURES / "vae_bfl" / "reference.safetensors"))


@pytest.fixture(scope="module")
def diffusers_vae() -> AutoencoderKL:
    return load_vae(VAE_DIR)


@pytest.fixture(scope="module")
def bfl_vae() -> AutoencoderKL:
    return load_vae(BFL_FILE)


def assert_same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    state_a, state_b = a.state_dict(), b.state_dict()
    assert state_a.keys() == state_b.keys()
    for key in state_a:
        assert torch.equal(state_a[key], state_b[key]), key


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return (a - b).abs().max().item()


def ldm_vae_shapes(ch: int, ch_mult: tuple[int, ...], num_res_blocks: int, z: int) -> dict[str, tuple[int, ...]]:
    """Every parameter shape of the original LDM/BFL Encoder and Decoder, written out from their structure."""
    shapes: dict[str, tuple[int, ...]] = {}

    def conv(name: str, c_in: int, c_out: int, k: int) -> None:
        shapes[f"{name}.weight"], shapes[f"{name}.bias"] = (c_out, c_in, k, k), (c_out,)

    def norm(name: str, c: int) -> None:
        shapes[f"{name}.weight"], shapes[f"{name}.bias"] = (c,), (c,)

    def resnet(name: str, c_in: int, c_out: int) -> None:
        norm(f"{name}.norm1", c_in), conv(f"{name}.conv1", c_in, c_out, 3)
        norm(f"{name}.norm2", c_out), conv(f"{name}.conv2", c_out, c_out, 3)
        if c_in != c_out:
            conv(f"{name}.nin_shortcut", c_in, c_out, 1)

    def mid(part: str, c: int) -> None:
        resnet(f"{part}.mid.block_1", c, c), resnet(f"{part}.mid.block_2", c, c)
        norm(f"{part}.mid.attn_1.norm", c)
        for proj in ("q", "k", "v", "proj_out"):
            conv(f"{part}.mid.attn_1.{proj}", c, c, 1)

    levels = len(ch_mult)
    conv("encoder.conv_in", 3, ch, 3)
    c = ch
    for i, mult in enumerate(ch_mult):
        for j in range(num_res_blocks):
            resnet(f"encoder.down.{i}.block.{j}", c, ch * mult)
            c = ch * mult
        if i != levels - 1:
            conv(f"encoder.down.{i}.downsample.conv", c, c, 3)
    mid("encoder", c)
    norm("encoder.norm_out", c), conv("encoder.conv_out", c, 2 * z, 3)
    conv("decoder.conv_in", z, c, 3)
    mid("decoder", c)
    for i in reversed(range(levels)):
        for j in range(num_res_blocks + 1):
            resnet(f"decoder.up.{i}.block.{j}", c, ch * ch_mult[i])
            c = ch * ch_mult[i]
        if i != 0:
            conv(f"decoder.up.{i}.upsample.conv", c, c, 3)
    norm("decoder.norm_out", c), conv("decoder.conv_out", c, 3, 3)
    return shapes


# Loading


def test_diffusers_folder_loads_frozen_float32(diffusers_vae: AutoencoderKL) -> None:
    config = json.loads((VAE_DIR / "config.json").read_text())
    assert list(diffusers_vae.config.block_out_channels) == config["block_out_channels"]
    assert diffusers_vae.config.latent_channels == 16
    assert diffusers_vae.config.scaling_factor == 0.3611 and diffusers_vae.config.shift_factor == 0.1159
    assert not diffusers_vae.training
    assert all(p.dtype == torch.float32 and not p.requires_grad and not p.is_meta for p in diffusers_vae.parameters())


def test_bfl_file_loads_the_same_state_as_the_diffusers_folder(
    bfl_vae: AutoencoderKL, diffusers_vae: AutoencoderKL
) -> None:
    assert_same_state(bfl_vae, diffusers_vae)
    for field in infer_vae_config(diffusers_vae.state_dict()):
        assert bfl_vae.config[field] == diffusers_vae.config[field], field


def test_layouts_are_told_apart() -> None:
    assert detect_vae_layout(load_state_dict(BFL_FILE)) == BFL
    assert detect_vae_layout(load_state_dict(VAE_DIR)) == DIFFUSERS
    with pytest.raises(CheckpointMismatchError, match="neither layout"):
        detect_vae_layout(["model.diffusion_model.x_embedder.weight"])


def test_flux_sized_bfl_keys_convert_to_the_released_flux_vae() -> None:
    """The real ae.safetensors has channel changes (nin_shortcut) and unequal levels the tiny fixture lacks."""
    shapes = ldm_vae_shapes(ch=128, ch_mult=(1, 2, 4, 4), num_res_blocks=2, z=16)
    converted = convert_bfl_vae({key: torch.empty(shape, device="meta") for key, shape in shapes.items()})
    flux_config = json.loads(FLUX_VAE_CONFIG.read_text())
    with torch.device("meta"):
        expected = AutoencoderKL.from_config(flux_config).state_dict()
    assert {k: tuple(v.shape) for k, v in converted.items()} == {k: tuple(v.shape) for k, v in expected.items()}
    for field, value in infer_vae_config(converted).items():
        assert flux_config[field] == value, field


def test_sharded_diffusers_folder_loads_identically(tmp_path: Path, diffusers_vae: AutoencoderKL) -> None:
    state = load_file(str(VAE_DIR / "diffusion_pytorch_model.safetensors"))
    keys = sorted(state)
    shards = {"diffusion_pytorch_model-00001-of-00002.safetensors": keys[: len(keys) // 2],
              "diffusion_pytorch_model-00002-of-00002.safetensors": keys[len(keys) // 2:]}
    for name, shard_keys in shards.items():
        save_file({key: state[key] for key in shard_keys}, str(tmp_path / name))
    weight_map = {key: name for name, shard_keys in shards.items() for key in shard_keys}
    (tmp_path / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    shutil.copy(VAE_DIR / "config.json", tmp_path / "config.json")
    assert_same_state(load_vae(tmp_path), diffusers_vae)


def test_single_diffusers_file_takes_flux_defaults(tmp_path: Path, diffusers_vae: AutoencoderKL) -> None:
    single = tmp_path / "vae.safetensors"
    shutil.copy(VAE_DIR / "diffusion_pytorch_model.safetensors", single)
    vae = load_vae(single)
    assert_same_state(vae, diffusers_vae)
    assert vae.config.shift_factor == 0.1159 and vae.config.force_upcast


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_dtypes_load_as_asked(dtype: torch.dtype) -> None:
    vae = load_vae(BFL_FILE, dtype=dtype)
    assert all(p.dtype == dtype for p in vae.parameters())


@pytest.mark.parametrize("dtype", [torch.float64, "fp16"])
def test_unsupported_dtype_is_refused(dtype: object) -> None:
    with pytest.raises(InvalidInputError, match="bfloat16"):
        load_vae(VAE_DIR, dtype=dtype)


# Bad files


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="nothing.safetensors"):
        load_vae(tmp_path / "nothing.safetensors")


def test_pickled_file_is_refused(tmp_path: Path) -> None:
    torch.save(load_file(str(BFL_FILE)), tmp_path / "ae.bin")
    with pytest.raises(ModelFileError, match="not a .safetensors file"):
        load_vae(tmp_path / "ae.bin")


def test_missing_key_is_named(tmp_path: Path) -> None:
    state = load_file(str(VAE_DIR / "diffusion_pytorch_model.safetensors"))
    del state["decoder.mid_block.resnets.1.conv2.bias"]
    save_file(state, str(tmp_path / "vae.safetensors"))
    with pytest.raises(CheckpointMismatchError, match=r"missing \(1\).*decoder\.mid_block\.resnets\.1\.conv2\.bias"):
        load_vae(tmp_path / "vae.safetensors")


def test_missing_bfl_key_is_named_under_its_diffusers_name(tmp_path: Path) -> None:
    state = load_file(str(BFL_FILE))
    del state["decoder.up.0.block.1.conv1.weight"]  # BFL level 0 is diffusers' last up block
    save_file(state, str(tmp_path / "ae.safetensors"))
    with pytest.raises(CheckpointMismatchError, match=r"BFL layout.*decoder\.up_blocks\.3\.resnets\.1\.conv1\.weight"):
        load_vae(tmp_path / "ae.safetensors")


def test_unknown_bfl_key_is_named(tmp_path: Path) -> None:
    state = load_file(str(BFL_FILE))
    state["decoder.mid.attn_2.q.weight"] = torch.zeros(32, 32, 1, 1)
    save_file(state, str(tmp_path / "ae.safetensors"))
    with pytest.raises(CheckpointMismatchError, match=r"decoder\.mid\.attn_2\.q\.weight"):
        load_vae(tmp_path / "ae.safetensors")


def test_config_disagreeing_with_tensors_is_named(tmp_path: Path) -> None:
    shutil.copy(VAE_DIR / "diffusion_pytorch_model.safetensors", tmp_path)
    config = json.loads((VAE_DIR / "config.json").read_text())
    config["block_out_channels"] = [32, 64, 64, 64]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointMismatchError, match=r"block_out_channels: config.json says \[32, 64, 64, 64\]"):
        load_vae(tmp_path)


# Encode and decode


def test_raw_vae_matches_comfyui_reference(bfl_vae: AutoencoderKL, reference: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        assert max_diff(bfl_vae.decode(reference["latent"]).sample, reference["decoded"]) < TOLERANCE
        assert max_diff(bfl_vae.encode(reference["image"]).latent_dist.mean, reference["encoded_mean"]) < TOLERANCE


def test_encode_to_latents_shifts_then_scales_the_posterior_mean(
    bfl_vae: AutoencoderKL, reference: dict[str, torch.Tensor]
) -> None:
    with torch.no_grad():
        mean = bfl_vae.encode(reference["image"]).latent_dist.mean
    latents = encode_to_latents(bfl_vae, reference["image"])
    assert latents.dtype == torch.float32
    assert torch.equal(latents, (mean - 0.1159) * 0.3611)
    assert max_diff(latents, (reference["encoded_mean"] - 0.1159) * 0.3611) < TOLERANCE
    assert torch.equal(encode_to_latents(bfl_vae, reference["image"]), latents)  # deterministic: no sampling


def test_decode_latents_unscales_then_unshifts(bfl_vae: AutoencoderKL, reference: dict[str, torch.Tensor]) -> None:
    latents = (reference["latent"] - 0.1159) * 0.3611
    with torch.no_grad():
        raw = bfl_vae.decode(latents / 0.3611 + 0.1159).sample
    images = decode_latents(bfl_vae, latents)
    assert images.dtype == torch.float32
    assert torch.equal(images, raw)
    assert max_diff(images, reference["decoded"]) < TOLERANCE


def test_fp16_vae_runs_in_float32_and_stays_fp16(reference: dict[str, torch.Tensor]) -> None:
    """force_upcast: fp16 weights computed in float32 give exactly what a float32 copy of them gives."""
    half = load_vae(BFL_FILE, dtype=torch.float16)
    upcast_copy = load_vae(BFL_FILE, dtype=torch.float16).float()
    latents = encode_to_latents(half, reference["image"])
    assert torch.equal(latents, encode_to_latents(upcast_copy, reference["image"]))
    assert torch.equal(decode_latents(half, latents), decode_latents(upcast_copy, latents))
    assert all(p.dtype == torch.float16 for p in half.parameters())


def test_bf16_vae_returns_float32_close_to_float32(bfl_vae: AutoencoderKL, reference: dict[str, torch.Tensor]) -> None:
    latents = encode_to_latents(load_vae(BFL_FILE, dtype=torch.bfloat16), reference["image"])
    assert latents.dtype == torch.float32
    assert max_diff(latents, encode_to_latents(bfl_vae, reference["image"])) < 0.05  # bf16 keeps 8 mantissa bits


@pytest.mark.parametrize(
    ("shape", "message"),
    [((1, 4, 48, 80), r"\[B, 3, H, W\].*\(1, 4, 48, 80\)"),
     ((1, 48, 80, 3), r"\(1, 48, 80, 3\).*movedim"),
     ((1, 3, 50, 80), r"multiples of 8.*\(1, 3, 50, 80\)")],
)
def test_bad_image_shapes_are_named(bfl_vae: AutoencoderKL, shape: tuple[int, ...], message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        encode_to_latents(bfl_vae, torch.zeros(shape))


def test_nan_images_and_latents_are_refused(bfl_vae: AutoencoderKL) -> None:
    images = torch.zeros(1, 3, 16, 16)
    images[0, 1, 2, 3] = float("nan")
    with pytest.raises(InvalidInputError, match="NaN"):
        encode_to_latents(bfl_vae, images)
    with pytest.raises(InvalidInputError, match="NaN"):
        decode_latents(bfl_vae, torch.full((1, 16, 2, 2), float("nan")))


def test_wrong_latent_channels_are_named(bfl_vae: AutoencoderKL) -> None:
    with pytest.raises(InvalidInputError, match=r"\[B, 16, H, W\].*\(1, 4, 2, 2\)"):
        decode_latents(bfl_vae, torch.zeros(1, 4, 2, 2))
