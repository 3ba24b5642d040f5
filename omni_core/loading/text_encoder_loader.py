"""Load the Qwen2.5-VL text encoder from the diffusers release folder or a ComfyUI single file, strictly, offline.

Layouts: `<root>/mllm/` (config.json + safetensors, maybe sharded) with `<root>/processor/`; the `mllm/` folder
alone; or one `.safetensors` file (ComfyUI `text_encoders/qwen_2.5_vl_*.safetensors`) with no config and no tokenizer,
whose config is inferred from tensor shapes over the bundled Qwen2.5-VL-3B config. Checkpoint keys in either
transformers layout (`model.layers`/`visual` or `model.language_model`/`model.visual`) are renamed to what the
installed `Qwen2_5_VLForConditionalGeneration` expects.
"""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path
from types import SimpleNamespace

import torch
from accelerate import init_empty_weights
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2TokenizerFast

from ..errors import CheckpointMismatchError, InvalidInputError, ModelFileError
from ..ops import adopt_operations, storage_cast_operations
from ..text_encoder import TextEncoder
from .quantized import fp8_weight_names
from .safetensors_io import load_state_dict, read_meta
from .strict import check_dtype, check_state_dict

try:  # transformers 5: the PIL image processor is its own class; the default one needs torchvision
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil as _ImageProcessor,
    )
except ImportError:  # transformers 4.x: the default (slow) one is PIL/numpy
    from transformers import Qwen2VLImageProcessor as _ImageProcessor

log = logging.getLogger(__name__)

BUNDLED_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "qwen2_5_vl_3b.json"
ATTENTION = ("sdpa", "eager")
RELEASED_HEAD_DIM = 128  # every Qwen2.5 text model; shapes alone cannot tell heads from head size
RELEASED_VISION_HEAD_DIM = 80  # 1280 / 16
# The released image processor's pixel budget (its preprocessor_config.json), for tokenizer folders without one.
IMAGE_PIXELS = {"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 16384}
# Config fields that name tokens: taken from the tokenizer when the config is inferred.
TOKEN_FIELDS = {
    "bos_token_id": "<|endoftext|>",
    "eos_token_id": "<|im_end|>",
    "vision_start_token_id": "<|vision_start|>",
    "vision_end_token_id": "<|vision_end|>",
    "vision_token_id": "<|vision_pad|>",
    "image_token_id": "<|image_pad|>",
    "video_token_id": "<|video_pad|>",
}
REQUIRED_TOKENS = ("<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>")
# Used only when the tokenizer folder has no chat template: renders system/user/assistant turns the way Qwen2.5's
# template does for plain string messages (all OmniGen2 ever sends).
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def load_text_encoder(
    path: str | Path,
    tokenizer_path: str | Path | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    attn_implementation: str = "sdpa",
    operations: SimpleNamespace | None = None,
    storage_dtype: torch.dtype | None = None,
) -> TextEncoder:
    """The MLLM and its tokenizer from a release root, its `mllm/` folder or a single safetensors file.

    `tokenizer_path` is a folder with tokenizer.json or vocab.json + merges.txt (ComfyUI's
    `comfy/text_encoders/qwen25_tokenizer`); it defaults to the release's `processor/` folder.
    `operations`: a host's layer classes (see ops.adopt_operations). storage_dtype (torch.float8_e4m3fn) keeps the
    layers' projection matrices in that dtype (see quantized.py), computed in `dtype` by `operations` that cast them
    per call (ours, or a host's).
    """
    check_dtype(dtype, "text encoder")
    if attn_implementation not in ATTENTION:
        raise InvalidInputError(f"attn_implementation '{attn_implementation}' is unknown; use one of {ATTENTION}.")
    weights, config_file, processor_dir = _locate(Path(path))
    if tokenizer_path is not None:
        processor_dir = Path(tokenizer_path)
    if processor_dir is None:
        raise ModelFileError(
            f"'{path}' holds no tokenizer (single-file text encoders never do). Pass tokenizer_path= a folder with "
            "tokenizer.json or vocab.json + merges.txt, e.g. ComfyUI's comfy/text_encoders/qwen25_tokenizer or the "
            "release's processor/ folder."
        )
    tokenizer = load_tokenizer(processor_dir)
    if storage_dtype is not None and operations is None:
        operations = storage_cast_operations
    narrow = set() if storage_dtype is None else fp8_weight_names({k: t.shape for k, t in read_meta(weights).items()})
    state_dict = load_state_dict(weights, dtype=lambda key: storage_dtype if key in narrow else dtype)
    if config_file:
        config = json.loads(config_file.read_text())
    else:  # sizes from the tensors, token ids from the tokenizer
        config = infer_config({_legacy_name(k): tuple(v.shape) for k, v in state_dict.items()})
        config.update({field: tokenizer.convert_tokens_to_ids(token) for field, token in TOKEN_FIELDS.items()})
    mllm = _build_mllm(state_dict, config, weights, config_file, attn_implementation, operations).to(device)
    log.info("Loaded text encoder from %s (%d tensors, %s, %s)", weights, len(state_dict), dtype, device)
    return TextEncoder(mllm, tokenizer, load_image_processor(processor_dir))


def _locate(path: Path) -> tuple[Path, Path | None, Path | None]:
    """(weights file or folder, config.json or None, processor folder or None) for any accepted layout."""
    if not path.exists():
        raise ModelFileError(f"No such file or folder: '{path}'. Pass the OmniGen2 folder, its mllm/ folder or a "
                             "qwen_2.5_vl_*.safetensors file.")
    if path.is_dir() and (path / "mllm").is_dir():
        path = path / "mllm"
    folder = path if path.is_dir() else path.parent
    config = folder / "config.json"
    if not (config.is_file() and json.loads(config.read_text()).get("model_type") == "qwen2_5_vl"):
        return path, None, None  # a file among others (ComfyUI's text_encoders/): nothing beside it is its own
    processor = folder.parent / "processor"  # the release layout: <root>/mllm beside <root>/processor
    return path, config, processor if processor.is_dir() else None


def load_tokenizer(folder: str | Path):
    """A Qwen2 fast tokenizer from tokenizer.json, or from vocab.json + merges.txt + tokenizer_config.json;
    right padding, and a chat template even when the folder has none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelFileError(f"Tokenizer folder '{folder}' does not exist. Pass the folder that holds the tokenizer.")
    names = {p.name for p in folder.iterdir()}
    if "tokenizer.json" not in names and not {"vocab.json", "merges.txt"} <= names:
        raise ModelFileError(
            f"'{folder}' holds no tokenizer: expected tokenizer.json or vocab.json + merges.txt "
            f"(found {sorted(names)})."
        )
    tokenizer = Qwen2TokenizerFast.from_pretrained(str(folder), local_files_only=True)
    unknown = [t for t in REQUIRED_TOKENS if len(tokenizer(t, add_special_tokens=False).input_ids) != 1]
    if unknown:
        raise ModelFileError(
            f"The tokenizer in '{folder}' does not know the Qwen2.5 special tokens {unknown} (its "
            "tokenizer_config.json must list them). Use the release's processor/ folder or ComfyUI's qwen25_tokenizer."
        )
    tokenizer.padding_side = "right"
    if not tokenizer.chat_template:
        tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def load_image_processor(folder: str | Path):
    """The Qwen2-VL image processor from preprocessor_config.json, else with the released settings."""
    folder = Path(folder)
    if (folder / "preprocessor_config.json").is_file():
        return _ImageProcessor.from_pretrained(str(folder), local_files_only=True)
    return _ImageProcessor(size=dict(IMAGE_PIXELS))


def _build_mllm(
    state_dict: dict[str, torch.Tensor], config_dict: dict, source: Path, config_file: Path | None,
    attn_implementation: str, operations: SimpleNamespace | None,
) -> torch.nn.Module:
    """The MLLM built with parameters on the meta device, then given the checkpoint tensors (strict, assigned)."""
    config = Qwen2_5_VLConfig(**config_dict)
    config._attn_implementation = attn_implementation
    with init_empty_weights():  # parameters on meta; buffers (RoPE frequencies) computed for real, in float32
        mllm = Qwen2_5_VLForConditionalGeneration(config)
    if operations is not None:
        adopt_operations(mllm, operations)
    expected = {name: tuple(t.shape) for name, t in mllm.state_dict().items()}
    nested = any(name.startswith("model.language_model.") for name in expected)
    state_dict = {_installed_name(_legacy_name(k), nested): v for k, v in state_dict.items()}
    head, embed = "lm_head.weight", _installed_name("model.embed_tokens.weight", nested)
    if config.tie_word_embeddings and head in expected and head not in state_dict and embed in state_dict:
        state_dict[head] = state_dict[embed]
    built_from = f"'{config_file}'" if config_file else "the config inferred from its shapes"
    check_state_dict(
        expected,
        state_dict,
        f"'{source}' does not fit a Qwen2.5-VL built from {built_from}",
        "Check that the file is a Qwen2.5-VL text encoder and that its config.json belongs to it.",
    )
    mllm.load_state_dict(state_dict, strict=True, assign=True)
    if config.tie_word_embeddings:
        mllm.tie_weights()  # one embedding tensor, not two copies on the device
    return mllm


def _legacy_name(key: str) -> str:
    """A key in the transformers 4.5x-early layout (`model.layers`, `visual`), whatever layout it came in."""
    if key.startswith("model.language_model."):
        return "model." + key[len("model.language_model."):]
    if key.startswith("model.visual."):
        return key[len("model."):]
    return key


def _installed_name(key: str, nested: bool) -> str:
    """A 4.5x-early key in the layout of the installed class (`nested`: `model.language_model` / `model.visual`)."""
    if not nested or key.startswith("lm_head."):
        return key
    if key.startswith("visual."):
        return "model." + key
    return "model.language_model." + key[len("model."):]


def infer_config(shapes: dict[str, tuple]) -> dict:
    """A Qwen2.5-VL config for a checkpoint without one: the bundled 3B config with every size the tensors show.

    Keys are in the 4.5x-early layout. Head counts assume the released head sizes (128 text, 80 vision); a model
    smaller than one such head gets a single KV head (text) or the text head size (vision), so tiny test models load.
    """
    config = json.loads(BUNDLED_CONFIG.read_text())
    vision = config["vision_config"]
    try:
        vocab, hidden = shapes["model.embed_tokens.weight"]
        kv_width = shapes["model.layers.0.self_attn.k_proj.weight"][0]
        head_dim = min(RELEASED_HEAD_DIM, kv_width)
        v_hidden, in_channels, temporal, patch, _ = shapes["visual.patch_embed.proj.weight"]
        merged_width = shapes["visual.merger.mlp.0.weight"][1]
        config.update(
            vocab_size=vocab,
            hidden_size=hidden,
            num_hidden_layers=_count_blocks(shapes, r"model\.layers\.(\d+)\."),
            intermediate_size=shapes["model.layers.0.mlp.gate_proj.weight"][0],
            num_attention_heads=shapes["model.layers.0.self_attn.q_proj.weight"][0] // head_dim,
            num_key_value_heads=kv_width // head_dim,
            tie_word_embeddings="lm_head.weight" not in shapes,
        )
        depth = _count_blocks(shapes, r"visual\.blocks\.(\d+)\.")
        vision.update(
            depth=depth,
            hidden_size=v_hidden,
            in_channels=in_channels,
            in_chans=in_channels,
            temporal_patch_size=temporal,
            patch_size=patch,
            spatial_patch_size=patch,
            spatial_merge_size=math.isqrt(merged_width // v_hidden),
            intermediate_size=shapes["visual.blocks.0.mlp.gate_proj.weight"][0],
            out_hidden_size=shapes["visual.merger.mlp.2.weight"][0],
            num_heads=v_hidden // (RELEASED_VISION_HEAD_DIM if v_hidden % RELEASED_VISION_HEAD_DIM == 0 else head_dim),
            # the released pattern: full attention in the last block of every eight, and in the last block
            fullatt_block_indexes=[i for i in range(depth) if (i + 1) % 8 == 0 or i == depth - 1],
        )
    except KeyError as error:
        raise CheckpointMismatchError(
            f"The checkpoint has no tensor {error}, so it is not a Qwen2.5-VL text encoder (or not a complete one)."
        ) from error
    half = head_dim // 2  # M-RoPE splits the rotary half of each head into (time, height, width) sections
    height = (half - half // 4) // 2
    config["rope_scaling"]["mrope_section"] = [half - 2 * height, height, height]
    return config


def _count_blocks(shapes: dict[str, tuple], pattern: str) -> int:
    """How many numbered blocks (`layers.N`, `blocks.N`) the keys hold."""
    numbers = {int(m.group(1)) for key in shapes if (m := re.match(pattern, key))}
    return max(numbers) + 1 if numbers else 0
