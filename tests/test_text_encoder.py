"""The text encoder and its loader: prompt features against the official pipelines' recordings on the tiny fixture
MLLM, every checkpoint layout giving the same features, and errors that name the bad input."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
import torch
from accelerate import init_empty_weights
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

from conftest import FIXTURES, TOLERANCE
from omni_core.errors import CheckpointMismatchError, InvalidInputError, ModelFileError
from omni_core.loading.text_encoder_loader import BUNDLED_CONFIG, infer_config, load_text_encoder, load_tokenizer
from omni_core.text_encoder import TextEncoder, chat_template

MLLM_FILE = FIXTURES / "mllm" / "model.safetensors"  # already in ComfyUI's single-file key layout
PROMPT = "a red circle on a blue background"


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    return load_text_encoder(FIXTURES)


@pytest.fixture(scope="module")
def pipeline() -> tuple[dict, dict[str, torch.Tensor]]:
    return json.loads((FIXTURES / "pipeline_cases.json").read_text())["cases"], load_file(
        str(FIXTURES / "pipeline_cases.safetensors")
    )


@pytest.fixture(scope="module")
def chat() -> tuple[dict, dict[str, torch.Tensor], list[Image.Image]]:
    tensors = load_file(str(FIXTURES / "chat_cases.safetensors"))
    images = [Image.fromarray(tensors[f"chat.input_image.{i}"].numpy()) for i in range(2)]
    return json.loads((FIXTURES / "chat_cases.json").read_text())["cases"], tensors, images


@pytest.fixture(scope="module")
def comfy_tokenizer(tmp_path_factory) -> Path:
    """The fixture tokenizer as ComfyUI ships qwen25_tokenizer: vocab.json, merges.txt, tokenizer_config.json with
    the special tokens, no tokenizer.json and no chat template."""
    folder = tmp_path_factory.mktemp("qwen25_tokenizer")
    spec = json.loads((FIXTURES / "processor" / "tokenizer.json").read_text())
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    (folder / "vocab.json").write_text(json.dumps(spec["model"]["vocab"]))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    fields = ("content", "lstrip", "normalized", "rstrip", "single_word", "special")
    added = {str(t["id"]): {f: t[f] for f in fields} for t in spec["added_tokens"]}
    config = {"added_tokens_decoder": added, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
              "tokenizer_class": "Qwen2Tokenizer"}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


def _single_file(tmp_path: Path, tensors: dict[str, torch.Tensor] | None = None) -> Path:
    """The fixture weights (or `tensors`) as a lone file, as in ComfyUI's text_encoders/: no config, no tokenizer."""
    path = tmp_path / "text_encoders" / "qwen_2.5_vl_tiny.safetensors"
    path.parent.mkdir()
    save_file(tensors if tensors is not None else load_file(str(MLLM_FILE)), str(path))
    return path


def _mllm_copy(tmp_path: Path) -> Path:
    """A writable copy of the release's mllm/ folder."""
    folder = tmp_path / "mllm"
    shutil.copytree(FIXTURES / "mllm", folder)
    for file in folder.iterdir():
        file.chmod(0o644)
    return folder


# Generation path: the official OmniGen2Pipeline's prompt features.

def test_prompt_features_match_official_pipeline(encoder, pipeline):
    cases, reference = pipeline
    for name, case in cases.items():
        for kind, condition in (
            ("prompt", encoder.encode_prompt(case["prompt"])),
            ("negative_prompt", encoder.encode_negative(case["negative_prompt"])),
        ):
            expected_mask = reference[f"{name}.{kind}_attention_mask"]
            assert condition.mask.dtype == torch.int64 and torch.equal(condition.mask, expected_mask), (name, kind)
            diff = (condition.embeds - reference[f"{name}.{kind}_embeds"]).abs().max().item()
            assert diff < TOLERANCE, (name, kind, diff)


def test_batched_prompts_equal_single_prompts(encoder, pipeline):
    cases, reference = pipeline
    features, mask = encoder.encode_batch([case["prompt"] for case in cases.values()])
    assert mask.dtype == torch.int64 and mask[:, 0].all() and not mask.all()  # right padding to the longest
    for condition, name in zip(encoder.encode([case["prompt"] for case in cases.values()]), cases):
        assert condition.embeds.shape == reference[f"{name}.prompt_embeds"].shape
        assert (condition.embeds - reference[f"{name}.prompt_embeds"]).abs().max().item() < TOLERANCE


def test_negative_none_is_empty_prompt(encoder):
    assert torch.equal(encoder.encode_negative(None).embeds, encoder.encode_prompt("").embeds)


# Loading: every layout gives the same features.

def test_root_mllm_folder_and_single_file_agree(encoder, tmp_path, comfy_tokenizer):
    expected = encoder.encode_prompt(PROMPT).embeds
    loaded = {
        "mllm folder + processor": load_text_encoder(FIXTURES / "mllm", tokenizer_path=FIXTURES / "processor"),
        "single file beside its config": load_text_encoder(MLLM_FILE),
        "lone single file + ComfyUI-style tokenizer": load_text_encoder(
            _single_file(tmp_path), tokenizer_path=comfy_tokenizer
        ),
    }
    for layout, other in loaded.items():
        assert torch.equal(other.encode_prompt(PROMPT).embeds, expected), layout


def test_comfy_tokenizer_folder_tokenizes_like_the_release(comfy_tokenizer):
    release, comfy = load_tokenizer(FIXTURES / "processor"), load_tokenizer(comfy_tokenizer)
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "it's image 12, okay?"}]
    text = release.apply_chat_template(messages, tokenize=False)
    assert comfy.apply_chat_template(messages, tokenize=False) == text  # the bundled template stands in
    assert comfy(text).input_ids == release(text).input_ids


def test_transformers_5_key_layout_loads_identically(encoder, tmp_path, comfy_tokenizer):
    def renamed(key: str) -> str:
        if key.startswith("visual."):
            return "model." + key
        return key.replace("model.", "model.language_model.", 1)

    tensors = {renamed(k): v for k, v in load_file(str(MLLM_FILE)).items()}
    tensors["lm_head.weight"] = tensors["model.language_model.embed_tokens.weight"].clone()
    other = load_text_encoder(_single_file(tmp_path, tensors), tokenizer_path=comfy_tokenizer)
    assert torch.equal(other.encode_prompt(PROMPT).embeds, encoder.encode_prompt(PROMPT).embeds)


def test_sharded_folder_loads_identically(encoder, tmp_path):
    folder = tmp_path / "root" / "mllm"
    folder.mkdir(parents=True)
    shutil.copy(FIXTURES / "mllm" / "config.json", folder)
    shutil.copytree(FIXTURES / "processor", tmp_path / "root" / "processor")
    tensors = load_file(str(MLLM_FILE))
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for shard, keys in shards.items():
        save_file({k: tensors[k] for k in keys}, str(folder / shard))
    weight_map = {k: shard for shard, keys in shards.items() for k in keys}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    other = load_text_encoder(tmp_path / "root")
    assert torch.equal(other.encode_prompt(PROMPT).embeds, encoder.encode_prompt(PROMPT).embeds)


def test_weights_are_tied_frozen_and_cast(encoder):
    mllm = encoder.mllm
    assert mllm.lm_head.weight is mllm.get_input_embeddings().weight
    assert not mllm.training and not any(p.requires_grad for p in mllm.parameters())
    half = load_text_encoder(FIXTURES, dtype=torch.bfloat16)
    assert {p.dtype for p in half.mllm.parameters()} == {torch.bfloat16}
    assert half.encode_prompt(PROMPT).embeds.dtype == torch.bfloat16


def test_inferred_config_matches_tiny_release_config():
    shapes = {k: tuple(v.shape) for k, v in load_file(str(MLLM_FILE)).items()}
    released = json.loads((FIXTURES / "mllm" / "config.json").read_text())
    inferred = infer_config(shapes)  # flat text fields (4.x layout); the fixture nests them in text_config
    for field in ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                  "intermediate_size", "vocab_size"):
        assert inferred[field] == released["text_config"][field], field
    for field in ("depth", "hidden_size", "intermediate_size", "num_heads", "out_hidden_size", "patch_size",
                  "spatial_merge_size", "temporal_patch_size", "fullatt_block_indexes"):
        assert inferred["vision_config"][field] == released["vision_config"][field], field
    assert inferred["tie_word_embeddings"]


def test_inferred_config_of_released_3b_shapes_is_the_released_config():
    bundled = json.loads(BUNDLED_CONFIG.read_text())
    with init_empty_weights():
        model = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(**copy.deepcopy(bundled)))  # it edits its input
    legacy = {k.replace("model.language_model.", "model.").replace("model.visual.", "visual."): tuple(v.shape)
              for k, v in model.state_dict().items() if k != "lm_head.weight"}  # ComfyUI's file has no lm_head
    assert infer_config(legacy) == bundled


# Chat path: images shown to the MLLM (official OmniGen2ChatPipeline recordings).

def test_chat_inputs_match_official_processor(encoder, chat):
    cases, reference, images = chat
    case = cases["understand"]
    inputs = encoder.chat_inputs(case["prompt"], images)
    assert chat_template(case["prompt"], len(images)) == case["template"]
    assert torch.equal(inputs["input_ids"][0], reference["understand.input_ids"])
    assert torch.equal(inputs["image_grid_thw"], reference["understand.image_grid_thw"])
    assert (inputs["pixel_values"] - reference["understand.pixel_values"]).abs().max().item() < TOLERANCE


def test_greedy_answer_matches_official(encoder, chat):
    cases, reference, images = chat
    case = cases["understand"]
    reply = encoder.generate(case["prompt"], images, max_new_tokens=case["max_new_tokens"])
    assert torch.equal(reply.token_ids, reference["understand.generated_ids"])
    assert reply.text == case["text"]


def test_chat_features_drop_image_pads(encoder, chat):
    cases, reference, images = chat
    condition = encoder.encode_chat(cases["generate"]["prompt"], images)
    assert torch.equal(condition.mask, reference["generate.prompt_attention_mask"])
    assert (condition.embeds - reference["generate.prompt_embeds"]).abs().max().item() < TOLERANCE


# Errors name the bad input.

def test_missing_path_is_named(tmp_path):
    with pytest.raises(ModelFileError, match="nowhere"):
        load_text_encoder(tmp_path / "nowhere")


def test_single_file_without_tokenizer_asks_for_tokenizer_path(tmp_path):
    with pytest.raises(ModelFileError, match="tokenizer_path"):
        load_text_encoder(_single_file(tmp_path))


def test_tokenizer_folder_without_tokenizer_is_named(tmp_path):
    with pytest.raises(ModelFileError, match="vocab.json"):
        load_text_encoder(MLLM_FILE, tokenizer_path=tmp_path)


def test_removed_key_is_named(tmp_path, comfy_tokenizer):
    tensors = load_file(str(MLLM_FILE))
    del tensors["model.layers.1.mlp.up_proj.weight"]
    with pytest.raises(CheckpointMismatchError, match=r"missing.*layers\.1\.mlp\.up_proj\.weight"):
        load_text_encoder(_single_file(tmp_path, tensors), tokenizer_path=comfy_tokenizer)


def test_config_that_disagrees_with_shapes_is_named(tmp_path):
    folder = _mllm_copy(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["text_config"]["intermediate_size"] = 48
    (folder / "config.json").write_text(json.dumps(config))
    named = r"wrong shape.*gate_proj\.weight: file \(64, 32\), model \(48, 32\)"
    with pytest.raises(CheckpointMismatchError, match=named):
        load_text_encoder(folder, tokenizer_path=FIXTURES / "processor")


def test_unsupported_dtype_and_attention_are_named():
    with pytest.raises(InvalidInputError, match="float64"):
        load_text_encoder(FIXTURES, dtype=torch.float64)
    with pytest.raises(InvalidInputError, match="flash"):
        load_text_encoder(FIXTURES, attn_implementation="flash")
