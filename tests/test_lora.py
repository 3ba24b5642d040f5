"""LoRA files and loading: our format round trip, PEFT / diffusers / kohya / ComfyUI conventions, applying LoRAs
to a model without touching the shared one, cache keying, and the OmniGen2 LoRA node."""

import copy
import json
import sys

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import omni_core
import omni_core.lora
from conftest import TOLERANCE, max_abs_diff
from test_transformer import forward_inputs
from omni_core.errors import CheckpointMismatchError, InvalidInputError, ModelFileError
from omni_core.lora import read_lora, save_lora


def _weights(seed: int = 0, rank: int = 4) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Random LoRA pairs (non-zero B) for a few Linears of the tiny transformer (hidden 96, kv 48, ffn 384)."""
    g = torch.Generator().manual_seed(seed)
    shapes = {"layers.0.attn.to_q": (96, 96), "layers.1.attn.to_k": (48, 96), "layers.1.feed_forward.linear_2": (96, 384)}
    return {m: (torch.randn(rank, i, generator=g), torch.randn(o, rank, generator=g)) for m, (o, i) in shapes.items()}


def test_our_format_round_trip(tmp_path):
    weights = _weights()
    path = save_lora(tmp_path / "ours.safetensors", weights, alpha=8.0,
                     metadata={"independent_condition": True, "condition_size": 512, "position_scale": 2.0})
    with safe_open(str(path), framework="pt") as handle:
        keys, metadata = set(handle.keys()), handle.metadata()
    assert keys == {f"transformer.{m}.lora_{ab}.weight" for m in weights for ab in "AB"}
    assert metadata["format"] == "omni_core_lora" and metadata["rank"] == "4" and float(metadata["alpha"]) == 8.0
    assert metadata["independent_condition"] == "true"
    assert json.loads(metadata["target_modules"]) == ["attn.to_k", "attn.to_q", "feed_forward.linear_2"]
    lora = read_lora(path)
    assert lora.key_format == "omni_core" and set(lora.modules) == set(weights)
    for module, (down, up) in weights.items():
        assert torch.equal(lora.modules[module].down, down) and torch.equal(lora.modules[module].up, up)
        assert lora.modules[module].scale == 2.0
    assert (lora.training.independent_condition, lora.training.condition_size, lora.training.position_scale) == (True, 512, 2.0)


def test_save_lora_rejects_bad_weights(tmp_path):
    down, up = _weights()["layers.0.attn.to_q"]
    with pytest.raises(InvalidInputError, match="layers.0.attn.to_q"):
        save_lora(tmp_path / "bad.safetensors", {"layers.0.attn.to_q": (down, up[:, :3])}, alpha=4)
    with pytest.raises(InvalidInputError, match=".safetensors"):
        save_lora(tmp_path / "bad.pt", {"layers.0.attn.to_q": (down, up)}, alpha=4)


# --- applying: PEFT as the reference ---------------------------------------------------------------------------------

PEFT_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "linear_1", "linear_2"]


@pytest.fixture(scope="module")
def peft_lora(tiny_transformer, reference_cases, tmp_path_factory):
    """The tiny transformer wrapped by real peft (non-zero lora_B, alpha != rank, a per-module alpha), saved by peft
    itself; returns (folder, peft's own forward output, peft's state dict)."""
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict

    config = LoraConfig(r=4, lora_alpha=8, target_modules=PEFT_TARGETS, alpha_pattern={"feed_forward.linear_2": 2})
    wrapped = get_peft_model(copy.deepcopy(tiny_transformer), config)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, parameter in wrapped.named_parameters():
            if "lora_" in name:
                parameter.copy_(0.05 * torch.randn(parameter.shape, generator=g))
    folder = tmp_path_factory.mktemp("peft")
    wrapped.save_pretrained(folder)
    with torch.no_grad():
        expected = wrapped(*forward_inputs(reference_cases[0]))
    state_dict = {k: v.detach().clone() for k, v in get_peft_model_state_dict(wrapped).items()}
    return folder, expected, state_dict


def test_peft_saved_lora_matches_peft_forward(tiny_model, peft_lora, reference_cases):
    folder, expected, _ = peft_lora
    lora = read_lora(folder / "adapter_model.safetensors")
    assert lora.key_format == "peft"
    assert lora.modules["layers.0.attn.to_q"].scale == 2.0 and lora.modules["layers.0.feed_forward.linear_2"].scale == 0.5
    model = tiny_model.with_loras([(folder / "adapter_model.safetensors", 1.0)])
    with torch.no_grad():
        ours = model.transformer(*forward_inputs(reference_cases[0]))
        base = tiny_model.transformer(*forward_inputs(reference_cases[0]))
    for mine, theirs, plain in zip(ours, expected, base):
        assert max_abs_diff(mine, theirs) < TOLERANCE
        assert max_abs_diff(plain, theirs) > 100 * TOLERANCE  # the LoRA does change the output


def _renamed(state_dict, prefix, down, up, alphas, kohya=False):
    """peft's state dict under another convention: prefix + module (kohya: `_` for `.`) + suffix, and `.alpha`s."""
    out = {}
    name = (lambda module: module.replace(".", "_")) if kohya else (lambda module: module)
    for key, value in state_dict.items():
        module = key[len("base_model.model."):].rsplit(".lora_", 1)[0]
        out[f"{prefix}{name(module)}{down if '.lora_A.' in key else up}"] = value
    for module, alpha in alphas.items():
        out[f"{prefix}{name(module)}.alpha"] = torch.tensor(alpha)
    return out


def _merged(model):
    return {k: v for k, v in model.transformer.state_dict().items()}


def test_other_conventions_of_the_same_weights_give_the_same_model(tiny_model, peft_lora, tmp_path):
    """kohya, ComfyUI (diffusion_model. and bare names, lora_down/up or lora_A/B with .alpha) and diffusers
    (written by diffusers' own Lumina2 LoRA saver, alpha in its metadata) load to bit-identical merged weights."""
    from diffusers.loaders import Lumina2LoraLoaderMixin
    from peft import LoraConfig

    folder, _, state_dict = peft_lora
    reference = _merged(tiny_model.with_loras([(folder / "adapter_model.safetensors", 0.8)]))
    modules = {k[len("base_model.model."):].rsplit(".lora_", 1)[0] for k in state_dict}
    alphas = {m: 2.0 if m.endswith("feed_forward.linear_2") else 8.0 for m in modules}
    files = {
        "kohya": _renamed(state_dict, "lora_unet_", ".lora_down.weight", ".lora_up.weight", alphas, kohya=True),
        "comfyui": _renamed(state_dict, "diffusion_model.", ".lora_down.weight", ".lora_up.weight", alphas),
        "comfyui_bare": _renamed(state_dict, "", ".lora_A.weight", ".lora_B.weight", alphas),
    }
    for name, tensors in files.items():
        save_file(tensors, str(tmp_path / f"{name}.safetensors"))
    config = LoraConfig(r=4, lora_alpha=8, target_modules=PEFT_TARGETS, alpha_pattern={"feed_forward.linear_2": 2})
    diffusers_layers = {k[len("base_model.model."):]: v for k, v in state_dict.items()}
    Lumina2LoraLoaderMixin.save_lora_weights(
        tmp_path / "diffusers", transformer_lora_layers=diffusers_layers, transformer_lora_adapter_metadata=config.to_dict()
    )
    paths = {name: tmp_path / f"{name}.safetensors" for name in files}
    paths["diffusers"] = tmp_path / "diffusers" / "pytorch_lora_weights.safetensors"
    formats = {"kohya": "kohya", "comfyui": "comfyui", "comfyui_bare": "comfyui", "diffusers": "diffusers"}
    for name, path in paths.items():
        assert read_lora(path).key_format == formats[name]
        merged = _merged(tiny_model.with_loras([(path, 0.8)]))
        assert all(torch.equal(merged[k], reference[k]) for k in reference), name


# --- strength, restore, composition ----------------------------------------------------------------------------------


def _snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _bit_equal(state, module):
    current = module.state_dict()
    return set(state) == set(current) and all(torch.equal(state[k].view(torch.uint8), current[k].view(torch.uint8)) for k in state)


def _saved(tmp_path, name, seed=0, **metadata):
    return save_lora(tmp_path / f"{name}.safetensors", _weights(seed), alpha=2.0, metadata=metadata)


def test_strength_zero_and_removal_restore_the_exact_weights_and_the_shared_model_is_untouched(tiny_model, tmp_path):
    pristine = _snapshot(tiny_model.transformer)
    path = _saved(tmp_path, "a")
    assert tiny_model.with_loras([(path, 0.0)]).transformer is tiny_model.transformer
    lora = tiny_model.with_loras([(path, 1.0)])
    assert not _bit_equal(pristine, lora.transformer)
    assert _bit_equal(pristine, tiny_model.transformer), "applying a LoRA must not change the model it was applied to"
    assert lora.vae is tiny_model.vae and lora.text_encoder is tiny_model.text_encoder
    removed = lora.with_loras([], replace=True)
    assert removed.transformer is tiny_model.transformer and _bit_equal(pristine, removed.transformer)
    assert _bit_equal(pristine, lora.with_loras([(path, 0.0)], replace=True).transformer)
    # a new strength is merged from the pristine weights again, not on top of the old merge
    assert _bit_equal(_snapshot(tiny_model.with_loras([(path, 0.5)]).transformer),
                      lora.with_loras([(path, 0.5)], replace=True).transformer)
    # unchanged modules share their tensors with the base: memory only for what the LoRA changes
    assert lora.transformer.layers[1].attn.to_q.weight is tiny_model.transformer.layers[1].attn.to_q.weight
    assert lora.transformer.layers[0].attn.to_q.weight is not tiny_model.transformer.layers[0].attn.to_q.weight


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_merged_weight_is_base_plus_strength_times_scaled_product_in_float32(tiny_model, fixture_dir, tmp_path, dtype):
    """Merged in float32 and cast back once; the Linear keeps its class and a dense weight (the oneDNN fast path)."""
    path = _saved(tmp_path, "a")
    model = tiny_model if dtype == torch.float32 else omni_core.load_model(fixture_dir, dtype=dtype)
    down, up = _weights()["layers.1.attn.to_k"]
    base = model.transformer.layers[1].attn.to_k
    merged = model.with_loras([(path, -0.7)]).transformer.layers[1].attn.to_k
    expected = (base.weight.float() + (-0.7 * 2.0 / 4) * (up @ down)).to(dtype)
    assert merged.weight.dtype == dtype and merged.weight.is_contiguous() and type(merged) is type(base)
    assert max_abs_diff(merged.weight, expected) <= (1e-5 if dtype == torch.float32 else 0.0)


def test_chained_loras_compose_and_load_model_takes_loras(tiny_model, fixture_dir, tmp_path):
    a, b = _saved(tmp_path, "a", seed=0), _saved(tmp_path, "b", seed=1)
    chained = tiny_model.with_loras([(a, 1.0)]).with_loras([(b, 0.5)])
    together = tiny_model.with_loras([(a, 1.0), (b, 0.5)])
    assert _bit_equal(_snapshot(together.transformer), chained.transformer)
    assert [x.strength for x in chained.transformer.lora_stack.applied] == [1.0, 0.5]
    loaded = omni_core.load_model(fixture_dir, loras=[(a, 1.0), (b, 0.5)])
    assert _bit_equal(_snapshot(together.transformer), loaded.transformer)
    with pytest.raises(ModelFileError, match="missing.safetensors"):
        omni_core.load_model(fixture_dir, loras=[(tmp_path / "missing.safetensors", 1.0)])


def test_independent_condition_lora_sets_the_models_default(tiny_model, tmp_path):
    independent = _saved(tmp_path, "ind", independent_condition=True)
    joint = _saved(tmp_path, "joint", seed=1)
    model = tiny_model.with_loras([(independent, 1.0)])
    assert model.transformer.config.independent_condition and not tiny_model.transformer.config.independent_condition
    assert model.with_loras([(joint, 1.0)]).transformer.config.independent_condition  # joint records nothing
    assert not model.with_loras([], replace=True).transformer.config.independent_condition


# --- errors ----------------------------------------------------------------------------------------------------------


def test_a_lora_of_another_size_names_the_key_and_both_shapes(tiny_model, tmp_path):
    path = save_lora(tmp_path / "big.safetensors", {"layers.0.attn.to_q": (torch.ones(4, 128), torch.ones(128, 4))}, alpha=4)
    with pytest.raises(CheckpointMismatchError, match=r"layers.0.attn.to_q.*\(128, 128\).*\(96, 96\)"):
        tiny_model.with_loras([(path, 1.0)])


def test_a_lora_of_another_architecture_names_the_module(tiny_model, tmp_path):
    flux = save_lora(tmp_path / "flux.safetensors", {"single_transformer_blocks.0.attn.to_q": (torch.ones(4, 96), torch.ones(96, 4))}, alpha=4)
    with pytest.raises(CheckpointMismatchError, match="single_transformer_blocks.0.attn.to_q"):
        tiny_model.with_loras([(flux, 1.0)])
    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.ones(4, 96),
               "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.ones(96, 4)}, str(tmp_path / "sdxl.safetensors"))
    with pytest.raises(CheckpointMismatchError, match="lora_unet_down_blocks_0_attentions_0_proj_in"):
        read_lora(tmp_path / "sdxl.safetensors")


def test_unknown_keys_and_non_safetensors_files_are_rejected_by_name(tmp_path):
    save_file({"transformer.layers.0.attn.to_q.lora_A.weight": torch.ones(4, 96),
               "transformer.layers.0.attn.to_q.lora_B.weight": torch.ones(96, 4),
               "transformer.layers.0.attn.to_q.lora_B.bias": torch.ones(96),
               "transformer.layers.0.attn.to_q.dora_scale": torch.ones(96, 1)}, str(tmp_path / "odd.safetensors"))
    with pytest.raises(ModelFileError, match=r"odd.safetensors.*unrecognised keys \(2\).*dora_scale.*lora_B.bias"):
        read_lora(tmp_path / "odd.safetensors")
    save_file({"layers.0.attn.to_q.lora_A.weight": torch.ones(4, 96)}, str(tmp_path / "half.safetensors"))
    with pytest.raises(ModelFileError, match="lacking their down"):
        read_lora(tmp_path / "half.safetensors")
    (tmp_path / "pickled.pt").write_bytes(b"\x80\x04")
    with pytest.raises(ModelFileError, match="not a .safetensors file"):
        read_lora(tmp_path / "pickled.pt")
    (tmp_path / "broken.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ModelFileError, match="broken.safetensors"):
        read_lora(tmp_path / "broken.safetensors")
    with pytest.raises(InvalidInputError, match="strength"):
        omni_core.lora.resolve_loras([(tmp_path / "odd.safetensors", "1")])


# --- reference-feature caches ----------------------------------------------------------------------------------------


def test_cached_reference_features_are_never_reused_under_other_loras(tiny_model, tmp_path):
    """A cache filled under one set of LoRAs is dropped under another (other file, other strength): the run then
    equals a run without any cache. Under the same LoRAs (the same file read again) the features are reused."""
    from PIL import Image

    from omni_core.guidance import GuidancePass
    from omni_core.reference_cache import ReferenceFeatureCache
    from omni_core.reference_passes import TransformerPasses

    condition = tiny_model.encode_condition("a red square", images=[Image.new("RGB", (64, 48), (200, 30, 30))], max_pixels=64 * 48)
    passes = [GuidancePass("cond", condition.positive, True)]
    x, t = torch.randn(1, 16, 6, 8, generator=torch.Generator().manual_seed(0)), torch.tensor(0.4)
    path = _saved(tmp_path, "a")
    models = {
        "base": tiny_model,
        "lora": tiny_model.with_loras([(path, 1.0)]),
        "half": tiny_model.with_loras([(path, 0.5)]),
        "lora again": tiny_model.with_loras([(str(path), 1.0)]),
    }
    cache = ReferenceFeatureCache(every_n_steps=100)
    TransformerPasses(models["base"].transformer, condition, cache, False)(x, t, passes, step=0)
    for name in ("lora", "lora again", "half"):
        runner = TransformerPasses(models[name].transformer, condition, cache, False)
        out = runner(x, t, passes, step=1)["cond"]  # step 1 of n=100: cached features are used if kept
        uncached = TransformerPasses(models[name].transformer, condition, None, False)(x, t, passes, step=1)["cond"]
        if name == "lora again":
            assert runner.stats()["reference_tokens_reused"] > 0  # same file and strength: the cache stays valid
        else:
            assert runner.stats()["reference_tokens_reused"] == 0, name
            assert torch.equal(out, uncached), name
    assert len({omni_core.lora.lora_fingerprint(m.transformer) for m in models.values()}) == 3


# --- the OmniGen2 LoRA node ------------------------------------------------------------------------------------------


def test_lora_node_leaves_its_input_alone_and_chains(fixture_dir, tmp_path):
    from conftest import load_pack
    from test_nodes import run_case

    pack = load_pack()
    node = lambda name: pack.NODE_CLASS_MAPPINGS[name]()
    assert pack.NODE_DISPLAY_NAME_MAPPINGS["OmniGen2LoRA"] == "OmniGen2 LoRA"
    (model,) = node("LoadOmniGen2").load(str(fixture_dir), "fp32")
    pristine = _snapshot(model.engine.transformer)
    a, b = _saved(tmp_path, "a", seed=0), _saved(tmp_path, "b", seed=1, independent_condition=True)
    (one,) = node("OmniGen2LoRA").apply(model, str(a), 1.0)
    after_one = _snapshot(one.engine.transformer)
    (two,) = node("OmniGen2LoRA").apply(one, str(b), 0.5)
    assert _bit_equal(pristine, model.engine.transformer) and _bit_equal(after_one, one.engine.transformer)
    assert _bit_equal(_snapshot(model.engine.with_loras([(a, 1.0), (b, 0.5)]).transformer), two.engine.transformer)
    assert two.engine.transformer.config.independent_condition and not one.engine.transformer.config.independent_condition
    cases = (None, json.loads((fixture_dir / "pipeline_cases.json").read_text()))  # t2i reads no tensors
    ui, with_lora, _ = run_case(node, two, cases, "t2i", steps=2)
    _, without, _ = run_case(node, model, cases, "t2i", steps=2)
    assert ui["omnigen2_stats"][0]["independent_condition"] is True
    assert (with_lora - without).abs().mean() > 1e-3
    with pytest.raises(ModelFileError, match="loras"):
        node("OmniGen2LoRA").apply(model, "no_such_lora.safetensors", 1.0)


def test_the_lora_node_offers_the_bundled_independent_condition_lora_first():
    """On the bundled model, the bundled LoRA (the choice a fresh install has) makes the independent condition the
    sampler's default, as its training recorded."""
    from conftest import load_pack

    pack = load_pack()
    node = lambda name: pack.NODE_CLASS_MAPPINGS[name]()
    bridge = sys.modules[f"{pack.__name__}.nodes.bridge"]
    choices = pack.NODE_CLASS_MAPPINGS["OmniGen2LoRA"].INPUT_TYPES()["required"]["lora_name"][0]
    assert choices[0] == bridge.BUNDLED_LORA_CHOICE
    (model,) = node("LoadOmniGen2").load(bridge.BUNDLED_MODEL_CHOICE, "fp32")
    (independent,) = node("OmniGen2LoRA").apply(model, bridge.BUNDLED_LORA_CHOICE, 1.0)
    assert independent.engine.transformer.config.independent_condition
    assert not model.engine.transformer.config.independent_condition
    assert read_lora(omni_core.DEFAULT_MODEL_DIR / omni_core.INDEPENDENT_CONDITION_LORA).training.independent_condition


def test_lora_nodes_in_a_real_comfyui(comfyui, fixture_dir):
    """Inside ComfyUI the LoRA goes in as ModelPatcher weight patches: two chained LoRA nodes and the base model
    sampled in one prompt give the images the engine's own merge gives outside ComfyUI (SaveImage's 8-bit rounding
    aside), and a later run of the base model is unaffected."""
    import numpy as np
    from PIL import Image

    from conftest import load_pack

    folder = comfyui.home / "models" / "loras"
    folder.mkdir(parents=True, exist_ok=True)
    a = _saved(folder, "omnigen2_lora_a", seed=0)
    b = _saved(folder, "omnigen2_lora_b", seed=1, independent_condition=True)
    choices = comfyui.get("/object_info/OmniGen2LoRA")["OmniGen2LoRA"]["input"]["required"]["lora_name"][0]
    assert {a.name, b.name} <= set(choices)
    encode = {"prompt": "a red square on blue", "negative_prompt": "", "max_pixels": 4096, "max_input_image_side_length": 64}
    settings = {"seed": 1, "steps": 3, "width": 64, "height": 48, "text_guidance": 5.0, "image_guidance": 2.0,
                "cfg_range_start": 0.0, "cfg_range_end": 1.0, "cache_per_n_steps": 0, "batch_size": 1,
                "independent_condition": "auto", "step_cache": "none", "teacache_threshold": 0.05, "taylorseer_order": 4,
                "taylorseer_interval": 3}

    def sampler(model_node, seed, prefix):
        return [{"class_type": "OmniGen2CachedSampler",
                 "inputs": {**settings, "seed": seed, "model": [model_node, 0], "condition": ["4", 0]}},
                {"class_type": "SaveImage", "inputs": {"filename_prefix": prefix, "images": None}}]

    def prompt_of(*samplers):
        prompt = {
            "1": {"class_type": "LoadOmniGen2", "inputs": {"model_folder": "omnigen2-tiny", "weight_dtype": "fp32"}},
            "2": {"class_type": "OmniGen2LoRA", "inputs": {"model": ["1", 0], "lora_name": a.name, "strength": 1.0}},
            "3": {"class_type": "OmniGen2LoRA", "inputs": {"model": ["2", 0], "lora_name": b.name, "strength": 0.5}},
            "4": {"class_type": "OmniGen2ConditionEncode", "inputs": {**encode, "model": ["1", 0]}},
        }
        for i, (sample, save) in enumerate(samplers):
            prompt[f"s{i}"], prompt[f"v{i}"] = sample, {**save, "inputs": {**save["inputs"], "images": [f"s{i}", 0]}}
        return prompt

    def saved(outputs, key):
        image = outputs[key]["images"][0]
        return np.asarray(Image.open(comfyui.home / image["type"] / image.get("subfolder", "") / image["filename"]), dtype=np.int16)

    first = prompt_of(sampler("3", 1, "lora"), sampler("1", 1, "base"))
    outputs = comfyui.run(first)["outputs"]
    assert outputs["s0"]["omnigen2_stats"][0]["independent_condition"] is True
    assert outputs["s1"]["omnigen2_stats"][0]["independent_condition"] is False
    later = comfyui.run(prompt_of(sampler("1", 2, "base_later")))["outputs"]

    pack = load_pack()  # the same nodes outside ComfyUI: the engine merges the LoRAs itself
    node = lambda name: pack.NODE_CLASS_MAPPINGS[name]()
    (model,) = node("LoadOmniGen2").load(str(fixture_dir), "fp32")
    (lora_model,) = node("OmniGen2LoRA").apply(node("OmniGen2LoRA").apply(model, str(a), 1.0)[0], str(b), 0.5)
    (condition,) = node("OmniGen2ConditionEncode").encode(model, **encode)

    def expected(m, seed):
        image = node("OmniGen2CachedSampler").sample(m, condition, **{**settings, "seed": seed})["result"][0][0]
        return (255.0 * image).clamp(0, 255).to(torch.uint8).numpy().astype(np.int16)  # as SaveImage writes it

    for got, want in ((saved(outputs, "v0"), expected(lora_model, 1)), (saved(outputs, "v1"), expected(model, 1)),
                      (saved(later, "v0"), expected(model, 2))):
        assert np.abs(got - want).max() <= 1
    assert np.abs(saved(outputs, "v0") - saved(outputs, "v1")).mean() > 2  # the LoRAs change the picture
