"""The ComfyUI nodes, called directly (outside ComfyUI, so the bridge runs them on the CPU with plain torch).

The pack root is imported as a package the way ComfyUI imports it (by file location, under a name that is not
`nodes`), then every node function runs on the tiny fixture model. End-to-end cases are compared with the outputs
the official pipeline recorded for the same inputs, so the nodes are checked for faithfulness, not only for shapes.
"""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import FIXTURES, PACK_NAME, ROOT, TOLERANCE
import omni_core
from omni_core.errors import InvalidInputError, ModelFileError

@pytest.fixture(scope="module")
def node(pack):
    """node("OmniGen2CachedSampler") -> a fresh instance of that node class."""
    return lambda name: pack.NODE_CLASS_MAPPINGS[name]()


@pytest.fixture(scope="module")
def model(node):
    (loaded,) = node("LoadOmniGen2").load(str(FIXTURES), "fp32")
    return loaded


@pytest.fixture(scope="module")
def cases():
    return load_file(str(FIXTURES / "pipeline_cases.safetensors")), json.loads((FIXTURES / "pipeline_cases.json").read_text())


def as_comfy_image(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 [H, W, 3] -> ComfyUI IMAGE float [1, H, W, 3] in 0..1."""
    return (pixels.float() / 255.0).unsqueeze(0)


def run_case(node, model, cases, name, **overrides):
    """Condition Encode + Cached Sampler with one recorded pipeline case's settings; returns (ui, image, latent)."""
    tensors, meta = cases
    case = meta["cases"][name]
    images = {f"image_{j + 1}": as_comfy_image(tensors[f"{name}.input_image.{j}"])
              for j in range(len(case["input_image_sizes"]))}
    (condition,) = node("OmniGen2ConditionEncode").encode(
        model, case["prompt"], case["negative_prompt"] or "", case["max_pixels"], case["max_input_image_side_length"],
        **images)
    settings = dict(seed=case["seed"], steps=case["steps"], width=case["width"] or 0, height=case["height"] or 0,
                    text_guidance=case["text_guidance_scale"], image_guidance=case["image_guidance_scale"],
                    cfg_range_start=case["cfg_range"][0], cfg_range_end=case["cfg_range"][1], cache_per_n_steps=0,
                    batch_size=1)
    settings.update(overrides)
    out = node("OmniGen2CachedSampler").sample(model, condition, **settings)
    image, latent = out["result"]
    return out["ui"], image, latent


# --- registration ----------------------------------------------------------------------------------------------------


def test_pack_registers_nodes_without_claiming_the_name_nodes(pack):
    assert {"LoadOmniGen2", "LoadOmniGen2SingleFiles", "OmniGen2ConditionEncode", "OmniGen2CachedSampler"} <= set(
        pack.NODE_CLASS_MAPPINGS)
    assert set(pack.NODE_DISPLAY_NAME_MAPPINGS) == set(pack.NODE_CLASS_MAPPINGS)
    assert pack.NODE_DISPLAY_NAME_MAPPINGS["LoadOmniGen2"] == "Load OmniGen2"
    assert pack.WEB_DIRECTORY == "./web"
    ours = sys.modules.get("nodes")
    assert ours is None or not str(getattr(ours, "__file__", "")).startswith(str(ROOT / "nodes")), (
        "the pack must never be importable as the top-level module `nodes` (ComfyUI's own)")
    assert {"OmniGen2CompactCondition", "OmniGen2Reflect"} <= set(pack.NODE_CLASS_MAPPINGS)


# Top-level modules of a ComfyUI checkout (its comfy*/ packages and the host modules beside main.py).
COMFYUI_MODULES = {"comfy", "comfy_api", "comfy_api_nodes", "comfy_execution", "comfy_extras", "execution",
                   "folder_paths", "latent_preview", "node_helpers", "nodes", "server"}


def comfyui_imports(path: Path) -> set[str]:
    """The ComfyUI modules a source file imports (absolute imports only; the pack's own are relative)."""
    names = set()
    for statement in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(statement, ast.Import):
            names.update(alias.name for alias in statement.names)
        elif isinstance(statement, ast.ImportFrom) and statement.level == 0:
            names.add(statement.module)
    return {name for name in names if name.split(".")[0] in COMFYUI_MODULES}


def test_only_the_bridge_host_module_imports_comfyui():
    shipped = [ROOT / "__init__.py", *sorted((ROOT / "nodes").rglob("*.py")), *sorted((ROOT / "omni_core").rglob("*.py"))]
    importers = {str(path.relative_to(ROOT)): found for path in shipped if (found := comfyui_imports(path))}
    assert list(importers) == ["nodes/bridge/host.py"], (
        f"ComfyUI is imported outside nodes/bridge/host.py: {importers}; take the names from bridge.host instead")
    assert {"comfy.model_management", "folder_paths", "latent_preview"} <= importers["nodes/bridge/host.py"]


def test_every_node_is_declared_completely(pack, bridge):
    for name, cls in pack.NODE_CLASS_MAPPINGS.items():
        assert cls.CATEGORY == "OmniGen2", name
        assert cls.DESCRIPTION and callable(getattr(cls, cls.FUNCTION)), name
        assert len(cls.OUTPUT_TOOLTIPS) == len(cls.RETURN_TYPES), name
        declared = cls.INPUT_TYPES()
        for group in ("required", "optional"):
            for input_name, spec in declared.get(group, {}).items():
                assert isinstance(spec[0], (str, list, tuple)), (name, input_name)
                assert spec[1].get("tooltip"), f"{name}.{input_name} has no tooltip"
    sampler = pack.NODE_CLASS_MAPPINGS["OmniGen2CachedSampler"].INPUT_TYPES()["required"]
    assert sampler["seed"][1]["control_after_generate"] is True
    assert sampler["width"][1]["default"] == 0 and sampler["height"][1]["default"] == 0
    assert pack.NODE_CLASS_MAPPINGS["OmniGen2CachedSampler"].RETURN_TYPES == ("IMAGE", "LATENT")
    encode = pack.NODE_CLASS_MAPPINGS["OmniGen2ConditionEncode"].INPUT_TYPES()
    assert sorted(encode["optional"]) == [f"image_{i}" for i in range(1, 6)]


# --- loading ---------------------------------------------------------------------------------------------------------


def test_load_folder(model, bridge):
    assert isinstance(model, bridge.OmniGen2Model)
    assert isinstance(model.engine, omni_core.OmniGen2)
    assert model.patchers == {}  # outside ComfyUI nothing is wrapped for its memory manager
    assert next(model.engine.transformer.parameters()).dtype == torch.float32


def test_load_folder_by_name_from_registered_roots(node, bridge, monkeypatch):
    monkeypatch.setenv(bridge.MODEL_DIRS_ENV, str(FIXTURES.parent))
    assert "omnigen2-tiny" in bridge.list_model_folders()
    assert node("LoadOmniGen2").INPUT_TYPES()["required"]["model_folder"][0] == bridge.list_model_folders()
    (loaded,) = node("LoadOmniGen2").load("omnigen2-tiny", "bf16")
    assert next(loaded.engine.transformer.parameters()).dtype == torch.bfloat16


def test_the_bundled_model_is_offered_first_and_loads_with_no_model_folders(node, bridge, monkeypatch):
    monkeypatch.delenv(bridge.MODEL_DIRS_ENV, raising=False)
    choices = node("LoadOmniGen2").INPUT_TYPES()["required"]["model_folder"][0]
    assert choices[0] == bridge.BUNDLED_MODEL_CHOICE
    (loaded,) = node("LoadOmniGen2").load(choices[0], "auto")
    bundled = omni_core.load_model()
    assert loaded.engine.transformer.config == bundled.transformer.config
    assert bridge.BUNDLED_MODEL_CHOICE in bridge.list_tokenizers()  # its processor/ serves the single-file loader


def test_load_single_files(node, model, cases):
    (single,) = node("LoadOmniGen2SingleFiles").load(
        transformer=str(FIXTURES / "transformer" / "diffusion_pytorch_model.safetensors"),
        text_encoder=str(FIXTURES / "mllm" / "model.safetensors"),
        vae=str(FIXTURES / "vae_bfl" / "ae.safetensors"),  # ComfyUI's ae.safetensors key layout
        tokenizer=str(FIXTURES / "processor"),
        weight_dtype="fp32",
    )
    _, from_files, _ = run_case(node, single, cases, "t2i")
    _, from_folder, _ = run_case(node, model, cases, "t2i")
    assert (from_files - from_folder).abs().max().item() < TOLERANCE


def test_fp8_storage_computes_in_bf16(node, cases):
    (fp8,) = node("LoadOmniGen2").load(str(FIXTURES), "fp8_e4m3fn")
    projections = [m.weight.dtype for name, m in fp8.engine.transformer.named_modules()
                   if ".attn.to_" in name and isinstance(m, torch.nn.Linear)]
    assert set(projections) == {torch.float8_e4m3fn}
    assert fp8.engine.transformer.layers[0].norm1.linear.weight.dtype == torch.bfloat16  # modulation: compute dtype
    assert fp8.engine.text_encoder.mllm.get_parameter(
        "model.language_model.layers.0.mlp.up_proj.weight").dtype == torch.float8_e4m3fn
    _, image, _ = run_case(node, fp8, cases, "t2i", steps=2)
    assert torch.isfinite(image).all() and image.dtype == torch.float32


@pytest.mark.parametrize("bad", ["/nonexistent/omnigen2", "not-a-registered-folder"])
def test_missing_model_folder_is_named(node, bad):
    with pytest.raises(ModelFileError, match="not"):
        node("LoadOmniGen2").load(bad, "auto")


def test_missing_single_file_is_named(node):
    with pytest.raises(ModelFileError, match="no_such_transformer.safetensors"):
        node("LoadOmniGen2SingleFiles").load("no_such_transformer.safetensors", str(FIXTURES / "mllm" / "model.safetensors"),
                                             str(FIXTURES / "vae_bfl" / "ae.safetensors"), str(FIXTURES / "processor"), "fp32")


def test_unknown_weight_dtype(node):
    with pytest.raises(InvalidInputError, match="weight_dtype"):
        node("LoadOmniGen2").load(str(FIXTURES), "int4")


# --- conditions ------------------------------------------------------------------------------------------------------


def test_encode_text_only_and_with_batched_images(node, model):
    (text_only,) = node("OmniGen2ConditionEncode").encode(model, "a red circle", "", 9216, 128)
    assert isinstance(text_only, omni_core.Condition) and text_only.references == ()
    two_rows = torch.rand(2, 40, 56, 3)
    (with_images,) = node("OmniGen2ConditionEncode").encode(model, "x", "", 9216, 128, image_1=two_rows,
                                                            image_3=torch.rand(1, 32, 32, 3))
    assert len(with_images.references) == 3  # a batch of 2 counts as two images, then image_3
    assert [ref.pixel_size for ref in with_images.references] == [(32, 48), (32, 48), (32, 32)]


def test_encode_rejects_a_non_image_input(node, model):
    with pytest.raises(InvalidInputError, match="'image_2' must be an IMAGE.*samples"):
        node("OmniGen2ConditionEncode").encode(model, "x", "", 9216, 128, image_1=torch.rand(1, 32, 32, 3),
                                               image_2={"samples": torch.zeros(1, 16, 4, 4)})
    with pytest.raises(InvalidInputError, match="'image_1' must be an IMAGE.*\\(1, 16, 4, 4\\)"):
        node("OmniGen2ConditionEncode").encode(model, "x", "", 9216, 128, image_1=torch.zeros(1, 16, 4, 4))


def test_encode_rejects_six_images(node, model):
    images = {f"image_{i}": torch.rand(1, 32, 32, 3) for i in range(1, 5)}
    images["image_5"] = torch.rand(2, 32, 32, 3)
    with pytest.raises(InvalidInputError, match="6 reference images.*at most 5"):
        node("OmniGen2ConditionEncode").encode(model, "x", "", 9216, 128, **images)


def test_encode_rejects_size_zero(node, model):
    with pytest.raises(InvalidInputError, match="'image_1' is empty"):
        node("OmniGen2ConditionEncode").encode(model, "x", "", 9216, 128, image_1=torch.rand(1, 0, 32, 3))
    with pytest.raises(InvalidInputError, match="max_pixels must be a whole number >= 256.*got 0"):
        node("OmniGen2ConditionEncode").encode(model, "x", "", 0, 128, image_1=torch.rand(1, 32, 32, 3))


def test_compact_condition_returns_a_new_smaller_condition(node, model):
    (condition,) = node("OmniGen2ConditionEncode").encode(model, "x", "", 9216, 128, image_1=torch.rand(1, 64, 64, 3))
    (compact,) = node("OmniGen2CompactCondition").compact(model, condition, 0.5, 0.0)
    assert compact is not condition and condition.references[0].position_scale == 1.0
    assert compact.references[0].latent[0].numel() < condition.references[0].latent[0].numel()
    assert compact.fingerprint != condition.fingerprint


# --- sampling --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["t2i", "edit", "in_context"])
def test_sampler_matches_the_official_pipeline(node, model, cases, name):
    ui, image, latent = run_case(node, model, cases, name)
    expected = cases[0][f"{name}.output"].movedim(1, -1)  # NCHW -> ComfyUI's NHWC
    assert image.shape == expected.shape and image.dtype == torch.float32
    assert (image - expected).abs().max().item() < TOLERANCE
    B, H, W, C = image.shape
    assert latent["samples"].shape == (B, 16, H // 8, W // 8)
    assert ui["omnigen2_stats"][0]["steps"] == cases[1]["cases"][name]["steps"]
    json.dumps(ui)  # what ComfyUI sends to the front-end must be JSON


def test_edit_changes_the_image(node, model, cases):
    """The known edit case: the output differs from the input, and a different instruction gives another image."""
    tensors, _ = cases
    _, edited, _ = run_case(node, model, cases, "edit")
    source = torch.nn.functional.interpolate(as_comfy_image(tensors["edit.input_image.0"]).movedim(-1, 1),
                                             size=edited.shape[1:3], mode="bilinear").movedim(1, -1)
    assert (edited - source).abs().mean().item() > 0.05
    _, other, _ = run_case(node, model, cases, "edit", text_guidance=1.0)
    assert (other - edited).abs().max().item() > 1e-3


def test_sampler_outputs_and_latent_convention(node, model, bridge):
    (condition,) = node("OmniGen2ConditionEncode").encode(model, "a blue square", "", 9216, 128)
    out = node("OmniGen2CachedSampler").sample(model, condition, seed=3, steps=2, width=64, height=48,
                                               text_guidance=4.0, image_guidance=2.0, cfg_range_start=0.0,
                                               cfg_range_end=1.0, cache_per_n_steps=0, batch_size=2)
    image, latent = out["result"]
    assert image.shape == (2, 48, 64, 3) and 0.0 <= image.min() and image.max() <= 1.0
    assert not torch.equal(image[0], image[1])  # seed, seed + 1
    vae = model.engine.vae.config
    # LATENT is raw VAE space: decoding it with the plain VAE (no scale/shift) gives the IMAGE.
    with torch.no_grad():
        decoded = model.engine.vae.decode(latent["samples"]).sample
    assert (((decoded.clamp(-1, 1) + 1) / 2).movedim(1, -1) - image).abs().max().item() < 1e-4
    raw_again = latent["samples"]
    scaled = (raw_again - vae.shift_factor) * vae.scaling_factor
    assert scaled.abs().mean() < raw_again.abs().mean() + 10  # finite, same tensor family
    stats = out["ui"]["omnigen2_stats"][0]
    assert stats["steps"] == 2 and stats["seconds_per_step"] > 0


def test_sampler_rejects_bad_sizes_and_ranges(node, model):
    (condition,) = node("OmniGen2ConditionEncode").encode(model, "x", "", 9216, 128)
    sampler = node("OmniGen2CachedSampler")
    base = dict(seed=0, steps=1, width=64, height=64, text_guidance=4.0, image_guidance=2.0, cfg_range_start=0.0,
                cfg_range_end=1.0, cache_per_n_steps=0, batch_size=1)
    with pytest.raises(InvalidInputError, match="width=50"):
        sampler.sample(model, condition, **{**base, "width": 50})
    with pytest.raises(InvalidInputError, match=r"cfg_range must be \(start, end\) with 0 <= start <= end <= 1, got \(0.8, 0.2\)"):
        sampler.sample(model, condition, **{**base, "cfg_range_start": 0.8, "cfg_range_end": 0.2})
    with pytest.raises(InvalidInputError, match="must come from a Load OmniGen2 node"):
        sampler.sample("not a model", condition, **base)


def test_automatic_size_takes_the_edit_image_size(node, model):
    (condition,) = node("OmniGen2ConditionEncode").encode(model, "x", "", 9216, 128, image_1=torch.rand(1, 70, 100, 3))
    out = node("OmniGen2CachedSampler").sample(model, condition, seed=0, steps=1, width=0, height=0,
                                               text_guidance=4.0, image_guidance=2.0, cfg_range_start=0.0,
                                               cfg_range_end=1.0, cache_per_n_steps=0, batch_size=1)
    assert out["result"][0].shape == (1, 64, 96, 3)  # the reference's processed size, as the official pipeline


def _repaint_inputs():
    canvas = torch.rand(1, 48, 64, 3, generator=torch.Generator().manual_seed(4))
    mask = torch.zeros(1, 48, 64)
    mask[:, 16:32, 16:48] = 1.0
    return canvas, mask


REPAINT_SETTINGS = dict(seed=2, steps=2, text_guidance=4.0, image_guidance=2.0, cfg_range_start=0.0, cfg_range_end=1.0,
                        cache_per_n_steps=0, batch_size=1, independent_condition="auto")


def test_repaint_node_regenerates_only_the_masked_region(node, model):
    canvas, mask = _repaint_inputs()
    (condition,) = node("OmniGen2ConditionEncode").encode(model, "a red square in image 1", "", 9216, 128)
    out = node("OmniGen2Repaint").repaint(model, condition, canvas, mask, **REPAINT_SETTINGS)
    image, latent = out["result"]
    inside = mask[0].bool()
    assert image.shape == canvas.shape and latent["samples"].shape == (1, 16, 6, 8)
    assert torch.equal(image[0][~inside], canvas[0][~inside])  # untouched outside the mask, exactly
    assert (image[0][inside] - canvas[0][inside]).abs().mean() > 1e-3
    engine = model.engine.repaint(condition, canvas[0], mask[0], steps=2, seed=2, text_guidance_scale=4.0)
    assert torch.equal(image, engine.images.movedim(1, -1))  # the node adds nothing to the engine's result
    stats = out["ui"]["omnigen2_stats"][0]
    assert stats["noise_tokens"] == 2 and stats["canvas_tokens"] == 12


def test_repaint_node_rejects_batches_and_mismatched_masks(node, model):
    canvas, mask = _repaint_inputs()
    (condition,) = node("OmniGen2ConditionEncode").encode(model, "x", "", 9216, 128)
    repaint = node("OmniGen2Repaint").repaint
    with pytest.raises(InvalidInputError, match="'image' holds a batch of 2"):
        repaint(model, condition, canvas.repeat(2, 1, 1, 1), mask, **REPAINT_SETTINGS)
    with pytest.raises(InvalidInputError, match="'mask' holds a batch of 2"):
        repaint(model, condition, canvas, mask.repeat(2, 1, 1), **REPAINT_SETTINGS)
    with pytest.raises(InvalidInputError, match="same size"):
        repaint(model, condition, canvas, mask[:, :40], **REPAINT_SETTINGS)


# --- cancel and caching ----------------------------------------------------------------------------------------------


def test_cancel_stops_at_the_next_step_and_leaves_no_cache(node, model, cases, bridge, monkeypatch, created_caches):
    original = bridge.progress_callback
    seen = []

    def cancel_at_step_two(total, device=None, on_step=None):
        def on(step, total):
            seen.append(step)
            if step == 2:
                bridge.request_interrupt()
        return original(total, device, on_step=on)

    monkeypatch.setattr(bridge, "progress_callback", cancel_at_step_two)
    with pytest.raises(bridge.Interrupted):
        run_case(node, model, cases, "in_context", cache_per_n_steps=100)
    assert seen == [1, 2]
    monkeypatch.setattr(bridge, "progress_callback", original)
    assert len(created_caches) == 1, "the cancelled run should have used a reference cache"
    assert created_caches[0].entries == {}, "a cancelled run must not leave cached features behind"
    # The next run is unaffected by the cancelled one: it equals the official output.
    _, image, _ = run_case(node, model, cases, "in_context")
    assert (image - cases[0]["in_context.output"].movedim(1, -1)).abs().max().item() < TOLERANCE


def test_independent_condition_choice_reaches_the_engine(node, model, cases):
    """auto follows the model (the tiny release model is joint); independent with compute-once equals independent
    recomputed every step, bit for bit, and differs from joint."""
    _, auto, _ = run_case(node, model, cases, "in_context", steps=3)
    _, joint, _ = run_case(node, model, cases, "in_context", steps=3, independent_condition="joint")
    _, every_step, _ = run_case(node, model, cases, "in_context", steps=3, independent_condition="independent")
    _, once, _ = run_case(node, model, cases, "in_context", steps=3, independent_condition="independent", cache_per_n_steps=100)
    assert not model.engine.transformer.config.independent_condition
    assert torch.equal(auto, joint) and torch.equal(every_step, once) and not torch.equal(joint, once)
    with pytest.raises(InvalidInputError, match="independent_condition='masked'"):
        run_case(node, model, cases, "in_context", steps=1, independent_condition="masked")


def test_two_conditions_never_share_cached_features(node, model, cases, created_caches):
    cache = 100
    _, first_edit, _ = run_case(node, model, cases, "edit", cache_per_n_steps=cache)
    _, in_context, _ = run_case(node, model, cases, "in_context", cache_per_n_steps=cache)
    _, second_edit, _ = run_case(node, model, cases, "edit", cache_per_n_steps=cache)
    (fresh,) = node("LoadOmniGen2").load(str(FIXTURES), "fp32")
    _, fresh_in_context, _ = run_case(node, fresh, cases, "in_context", cache_per_n_steps=cache)
    assert torch.equal(in_context, fresh_in_context)
    assert torch.equal(first_edit, second_edit)
    assert len({id(c) for c in created_caches}) == len(created_caches)  # one cache per run, none shared
    assert all(c.entries == {} for c in created_caches)


def test_step_cache_widgets_come_last_and_reach_the_engine(node, pack, model, cases):
    """Both samplers end with the shared step-cache widgets (saved workflows keep their values); the choice and its
    settings reach the engine: TaylorSeer's interval sets which steps compute, TeaCache skips steps."""
    sampler = sys.modules[f"{PACK_NAME}.nodes.sampler"]
    for name in ("OmniGen2CachedSampler", "OmniGen2Repaint"):
        widgets = list(pack.NODE_CLASS_MAPPINGS[name].INPUT_TYPES()["required"])
        assert widgets[-len(sampler.STEP_CACHE_WIDGETS):] == list(sampler.STEP_CACHE_WIDGETS)
    ui, _, _ = run_case(node, model, cases, "in_context", steps=8, step_cache="taylorseer", taylorseer_interval=2)
    stats = ui["omnigen2_stats"][0]
    assert stats["step_cache"] == "TaylorSeer" and stats["computed_steps"]["cond"] == [0, 1, 2, 3, 4, 6]
    ui, _, _ = run_case(node, model, cases, "in_context", steps=8, step_cache="taylorseer", taylorseer_interval=3)
    assert ui["omnigen2_stats"][0]["computed_steps"]["cond"] == [0, 1, 2, 3, 4, 7]
    ui, _, _ = run_case(node, model, cases, "in_context", steps=8, step_cache="teacache", teacache_threshold=1.0)
    assert ui["omnigen2_stats"][0]["step_cache"] == "TeaCache" and ui["omnigen2_stats"][0]["pass_steps_skipped"] > 0
    ui, _, _ = run_case(node, model, cases, "in_context", steps=2)
    assert ui["omnigen2_stats"][0]["step_cache"] is None
    with pytest.raises(InvalidInputError, match="step_cache='fast'"):
        run_case(node, model, cases, "in_context", steps=1, step_cache="fast")


def test_the_shapes_scene_node_draws_what_its_caption_and_the_measurer_say(node):
    from omni_core.training.shapes.measure import main_object, read_scene

    image, caption = node("OmniGen2ShapesScene").draw("yellow", "triangle", "small", "left", "purple", 64)
    assert image.shape == (1, 64, 64, 3) and image.dtype == torch.float32
    assert caption == "a small yellow triangle on a purple background"
    found = read_scene(image[0].movedim(-1, 0))
    assert found.background == "purple"
    shape = main_object(found)
    assert (shape.color, shape.shape) == ("yellow", "triangle") and shape.center[0] < 0.4
    with pytest.raises(ValueError, match="color and background are both 'red'"):
        node("OmniGen2ShapesScene").draw("red", "circle", "large", "center", "red", 64)
