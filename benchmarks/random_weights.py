"""Random weights in OmniGen2's released configuration, in every layout users have; written on demand, never committed.

Layouts (each a folder under OUT_DIR):
- `folder`: the diffusers release: transformer/ and mllm/ in bf16 shards with an index and config.json, vae/, and the
  fixture model's processor/ and scheduler/ (a tokenizer that fits the random MLLM's vocabulary only for --reduced);
- ComfyUI single files `comfy_fp16`, `comfy_bf16`, `comfy_fp8` (the projection weights in float8_e4m3fn, the rest in
  bf16), `comfy_scaled_fp8` (ComfyUI's scaled fp8: e4m3fn weights with a per-layer `scale_weight` and a `scaled_fp8`
  marker) and `comfy_quant` (ComfyUI's per-layer `comfy_quant` metadata with `weight_scale`): transformer.safetensors,
  text_encoder.safetensors (transformers' legacy key names, as ComfyUI's text_encoders/ files) and vae.safetensors.

Files are streamed tensor by tensor: writing the 4B transformer takes memory for one tensor, not the model. Values
depend only on tensor names (matrices ~ N(0, 1 / fan_in), norm weights ~ 1 + N(0, 0.1)).
`--reduced` writes the same layouts at a size a test can load (a few hundred MB).

usage: python benchmarks/random_weights.py OUT_DIR [--layouts folder comfy_fp16 ...] [--parts transformer ...] [--reduced]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import zlib
from pathlib import Path
from typing import Callable

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from omni_core.config import TransformerConfig  # noqa: E402
from omni_core.loading.model_loader import DEFAULT_MODEL_DIR  # noqa: E402
from omni_core.loading.quantized import FP8, comfy_quant_entry, fp8_weight_names, quantize_scaled  # noqa: E402
from omni_core.loading.text_encoder_loader import BUNDLED_CONFIG, _legacy_name  # noqa: E402
from omni_core.loading.vae_loader import FLUX_VAE_CONFIG  # noqa: E402
from omni_core.transformer import OmniGen2Transformer  # noqa: E402

LAYOUTS = ("folder", "comfy_fp16", "comfy_bf16", "comfy_fp8", "comfy_scaled_fp8", "comfy_quant")
PARTS = ("transformer", "text_encoder", "vae")
SHARD_BYTES = {False: 2 * 2**30, True: 64 * 2**20}  # by --reduced: reduced folders have several shards too
_CODES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float8_e4m3fn: "F8_E4M3",
          torch.uint8: "U8"}
Make = Callable[[], torch.Tensor]


def transformer_config(reduced: bool) -> TransformerConfig:
    if not reduced:
        return TransformerConfig()  # the release: hidden 2520, 32 layers, 3,967,161,400 parameters
    return TransformerConfig(hidden_size=960, num_attention_heads=8, num_kv_heads=2, num_layers=6, text_feat_dim=1024)


def text_encoder_config(reduced: bool) -> dict:
    config = json.loads(BUNDLED_CONFIG.read_text())  # Qwen2.5-VL-3B
    if reduced:  # the fixture tokenizer's vocabulary; layers wide enough that weights dominate the process
        fixture = json.loads((REPO_ROOT / "tests" / "fixtures" / "omnigen2-tiny" / "mllm" / "config.json").read_text())
        ids = {k: v for k, v in fixture.items() if k.endswith("token_id")}
        config.update(ids, vocab_size=526, hidden_size=1024, intermediate_size=4096, num_hidden_layers=12,
                      num_attention_heads=8, num_key_value_heads=2, max_window_layers=12)
        config["rope_scaling"]["mrope_section"] = [16, 24, 24]
        config["vision_config"].update(depth=2, hidden_size=512, intermediate_size=1024, num_heads=8,
                                       out_hidden_size=1024, fullatt_block_indexes=[1])
    return config


def _meta_shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {name: tuple(tensor.shape) for name, tensor in module.state_dict().items()}


def part_shapes(part: str, reduced: bool) -> dict[str, tuple[int, ...]]:
    """Every tensor of a part (diffusers / transformers key names) and its shape, from the model built on meta."""
    with torch.device("meta"):
        if part == "transformer":
            return _meta_shapes(OmniGen2Transformer(transformer_config(reduced)))
        if part == "vae":
            from diffusers import AutoencoderKL

            config = {k: v for k, v in json.loads(FLUX_VAE_CONFIG.read_text()).items() if not k.startswith("_")}
            return _meta_shapes(AutoencoderKL.from_config(config))
        from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

        shapes = _meta_shapes(Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(**text_encoder_config(reduced))))
        shapes.pop("lm_head.weight", None)  # tied to the embedding: files hold it once
        return shapes


def random_tensor(name: str, shape: tuple[int, ...]) -> torch.Tensor:
    """Float32 values that depend only on the name (a sane scale for every kind of tensor)."""
    generator = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    values = torch.randn(shape, generator=generator)
    if len(shape) >= 2 and name != "image_index_embedding":
        return values.div_(shape[1] ** 0.5)
    if "norm" in name and name.endswith("weight"):
        return values.mul_(0.1).add_(1.0)
    return values.mul_(0.02)


def write_safetensors(path: Path, tensors: dict[str, tuple[tuple[int, ...], torch.dtype, Make]]) -> None:
    """A safetensors file written one tensor at a time: {name: (shape, dtype, make)}, `make()` giving the values."""
    header, offset = {}, 0
    for name, (shape, dtype, _) in tensors.items():
        size = torch.Size(shape).numel() * dtype.itemsize
        header[name] = {"dtype": _CODES[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps({"__metadata__": {"format": "pt"}, **header}).encode()
    encoded += b" " * (-len(encoded) % 8)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as out:
        out.write(len(encoded).to_bytes(8, "little") + encoded)
        for name, (shape, dtype, make) in tensors.items():
            tensor = make().to(dtype).contiguous().reshape(shape)
            out.write(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())


def _plain(name: str, shape, dtype) -> tuple:
    return shape, dtype, lambda: random_tensor(name, shape)


def _scaled(name: str, shape) -> tuple[tuple, tuple]:
    """A weight's entries as e4m3fn values and its per-tensor float32 scale (weight ~ values * scale)."""
    return ((shape, FP8, lambda: quantize_scaled(random_tensor(name, shape))[0]),
            ((), torch.float32, lambda: quantize_scaled(random_tensor(name, shape))[1]))


def layout_tensors(part: str, layout: str, reduced: bool) -> dict[str, tuple]:
    """The tensors of one part's file in one layout: {key in that layout: (shape, dtype, make)}."""
    shapes = part_shapes(part, reduced)
    dtype = torch.float16 if layout == "comfy_fp16" else torch.bfloat16
    narrow = fp8_weight_names(shapes) if part != "vae" and layout.startswith(("comfy_fp8", "comfy_scaled", "comfy_quant")) else set()
    tensors: dict[str, tuple] = {}
    for name, shape in shapes.items():
        key = _legacy_name(name) if part == "text_encoder" and layout != "folder" else name
        if name not in narrow:
            tensors[key] = _plain(name, shape, dtype)
        elif layout == "comfy_fp8":
            tensors[key] = _plain(name, shape, FP8)
        else:
            layer = key[: -len(".weight")]
            tensors[key], scale = _scaled(name, shape)
            if layout == "comfy_scaled_fp8":
                tensors[f"{layer}.scale_weight"] = scale
            else:
                conf = comfy_quant_entry()
                tensors[f"{layer}.weight_scale"] = scale
                tensors[f"{layer}.comfy_quant"] = (tuple(conf.shape), torch.uint8, lambda conf=conf: conf)
    if layout == "comfy_scaled_fp8" and narrow:
        tensors["scaled_fp8"] = ((0,), FP8, lambda: torch.empty(0))
    return tensors


def write_sharded(folder: Path, name: str, tensors: dict[str, tuple], shard_bytes: int) -> None:
    """A diffusers / transformers folder's weights: shards of <= shard_bytes and their index."""
    shards, current, size = [], {}, 0
    for key, entry in tensors.items():
        nbytes = torch.Size(entry[0]).numel() * entry[1].itemsize
        if current and size + nbytes > shard_bytes:
            shards.append(current)
            current, size = {}, 0
        current[key], size = entry, size + nbytes
    shards.append(current)
    stem, suffix = name.rsplit(".", 1)
    weight_map = {}
    for i, shard in enumerate(shards):
        file = f"{stem}-{i + 1:05d}-of-{len(shards):05d}.{suffix}"
        write_safetensors(folder / file, shard)
        weight_map.update({key: file for key in shard})
    (folder / f"{name}.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}, indent=1))


def write_layout(out: Path, layout: str, parts=PARTS, reduced: bool = False) -> Path:
    """Write one layout under out/<layout>/ (the parts asked for) and return that folder."""
    root = out / layout
    for part in parts:
        if layout != "folder":
            write_safetensors(root / f"{part}.safetensors", layout_tensors(part, layout, reduced))
            continue
        tensors = layout_tensors(part, layout, reduced)
        if part == "transformer":
            write_sharded(root / "transformer", "diffusion_pytorch_model.safetensors", tensors, SHARD_BYTES[reduced])
            (root / "transformer" / "config.json").write_text(json.dumps(dataclasses.asdict(transformer_config(reduced))))
        elif part == "text_encoder":
            write_sharded(root / "mllm", "model.safetensors", tensors, SHARD_BYTES[reduced])
            (root / "mllm" / "config.json").write_text(json.dumps(text_encoder_config(reduced)))
        else:
            write_safetensors(root / "vae" / "diffusion_pytorch_model.safetensors", tensors)
            shutil.copy(FLUX_VAE_CONFIG, root / "vae" / "config.json")
    if layout == "folder":
        for extra in ("processor", "scheduler"):
            source = (REPO_ROOT / "tests" / "fixtures" / "omnigen2-tiny" if reduced else DEFAULT_MODEL_DIR) / extra
            if source.is_dir() and not (root / extra).exists():
                shutil.copytree(source, root / extra)
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--layouts", nargs="+", choices=LAYOUTS, default=list(LAYOUTS))
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--reduced", action="store_true", help="a test-sized model in the released structure")
    args = parser.parse_args()
    for layout in args.layouts:
        print(write_layout(args.out, layout, args.parts, args.reduced))


if __name__ == "__main__":
    main()
