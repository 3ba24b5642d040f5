"""Step caching (TeaCache, TaylorSeer) against the official pipeline's recorded runs, and composed with every
conditioning mode (reference reuse, independent condition, compact and pruned tokens, repainting)."""

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import FIXTURES, max_abs_diff
from omni_core import CheckpointMismatchError, InvalidInputError, ModelFileError, TaylorSeer, TeaCache, TransformerConfig
from omni_core import denoise as denoise_module
from omni_core.condition import Condition, ReferenceImage, TextCondition
from omni_core.step_cache import OFFICIAL_TEACACHE_COEFFICIENTS, StepCacheRun, TeaCacheCalibration, polynomial
from omni_core.training import calibrate_teacache
from omni_core.training.model import config_dict
from omni_core.vae import decode_latents

RNG = np.random.default_rng(5)
IMAGES = [RNG.integers(0, 256, (48, 64, 3), dtype=np.uint8), RNG.integers(0, 256, (64, 32, 3), dtype=np.uint8)]
SAMPLE = dict(width=48, height=48, steps=10, text_guidance_scale=4.0, image_guidance_scale=2.0, seed=3)
CACHES = {"teacache": TeaCache(threshold=0.6), "taylorseer": TaylorSeer()}


@pytest.fixture(scope="module")
def step_cache_cases():
    return load_file(FIXTURES / "step_cache_cases.safetensors"), json.loads((FIXTURES / "step_cache_cases.json").read_text())


def official_options(spec):
    return (TeaCache if spec["method"] == "teacache" else TaylorSeer)(**spec["options"])


@pytest.mark.parametrize("case", ["teacache_refs", "teacache_batched", "taylorseer_refs", "taylorseer_custom"])
def test_matches_the_official_step_cache(tiny_model, step_cache_cases, case):
    """Same steps computed per guidance pass and the same image as the official pipeline with the cache enabled."""
    tensors, meta = step_cache_cases
    spec = meta["cases"][case]
    t = lambda key: tensors[f"{case}.{key}"]
    refs = tuple(ReferenceImage(t(f"ref_latents.{j}"), (0, 0)) for j in range(spec["num_references"]))
    condition = Condition(
        TextCondition(t("prompt_embeds"), t("prompt_attention_mask")),
        TextCondition(t("negative_prompt_embeds"), t("negative_prompt_attention_mask")),
        refs,
    )
    h, w = (8 * side for side in spec["latent"])
    result = tiny_model.sample(
        condition, width=w, height=h, steps=spec["steps"], text_guidance_scale=spec["text_guidance_scale"],
        image_guidance_scale=spec["image_guidance_scale"], cfg_range=spec["cfg_range"], seed=spec["seed"],
        num_images=spec["num_images"], max_pixels=h * w, step_cache=official_options(spec),
    )
    assert torch.equal(denoise_module.initial_noise(spec["seed"], spec["num_images"], 16, tuple(spec["latent"])), t("initial_latents"))
    assert result.stats["computed_steps"] == spec["computed_steps"]
    assert max_abs_diff(decode_latents(tiny_model.vae, result.latents), t("decoded_image")) < 1e-4


@pytest.fixture(scope="module")
def condition(tiny_model):
    return tiny_model.encode_condition("the cat of image 1 under the tree of image 2", "blurry", IMAGES)


def test_off_is_bit_identical(tiny_model, condition):
    default = tiny_model.sample(condition, **SAMPLE)
    off = tiny_model.sample(condition, step_cache=None, **SAMPLE)
    assert torch.equal(default.images, off.images) and torch.equal(default.latents, off.latents)
    assert off.stats["step_cache"] is None


@pytest.mark.parametrize("name", list(CACHES))
@pytest.mark.parametrize(
    "mode",
    [
        dict(),
        dict(cache_per_n_steps=3),
        dict(independent_condition=True, cache_per_n_steps=1000),
        dict(compact=dict(condition_scale=0.5, prune_ratio=0.25)),
        dict(repaint=True),
    ],
    ids=["every_step", "reuse_3", "independent_once", "compact_pruned", "repaint"],
)
def test_every_conditioning_mode_runs_with_each_cache(tiny_model, condition, name, mode):
    """Each composes: steps are skipped, the image stays near the uncached one of the same mode."""
    mode = dict(mode)
    cond = tiny_model.compact_condition(condition, **mode.pop("compact")) if "compact" in mode else condition
    if mode.pop("repaint", False):
        mask = np.zeros((48, 64), np.float32)
        mask[8:32, 16:48] = 1
        run = lambda **kw: tiny_model.repaint(cond, IMAGES[0], mask, **{k: v for k, v in SAMPLE.items() if k not in ("width", "height")}, **mode, **kw)
    else:
        run = lambda **kw: tiny_model.sample(cond, **SAMPLE, **mode, **kw)
    plain, cached = run(), run(step_cache=CACHES[name])
    stats = cached.stats
    assert stats["step_cache"] == type(CACHES[name]).__name__ and stats["pass_steps_skipped"] > 0
    assert stats["pass_steps_computed"] + stats["pass_steps_skipped"] == 3 * SAMPLE["steps"]
    assert all(steps[0] == 0 for steps in stats["computed_steps"].values())
    assert torch.isfinite(cached.images).all() and max_abs_diff(plain.images, cached.images) < 0.5


def test_skipped_steps_do_less_reference_work(tiny_model, condition):
    """A skipped step runs no joint blocks, so reuse refreshes on the next computed step and no reference tokens run."""
    plain = tiny_model.sample(condition, cache_per_n_steps=3, **SAMPLE).stats
    cached = tiny_model.sample(condition, cache_per_n_steps=3, step_cache=TaylorSeer(), **SAMPLE).stats
    total = lambda s: s["reference_tokens_computed"] + s["reference_tokens_reused"]
    assert total(cached) < total(plain)
    # TaylorSeer computes steps 0-4 and 7 (10 steps): windows [0,3) [3,6) [6,9) refresh at 0, 3 and 7
    per_step = 2 * sum(r.num_tokens for r in condition.references)  # the cond and ref passes see the references
    assert cached["computed_steps"]["cond"] == [0, 1, 2, 3, 4, 7]
    assert cached["reference_tokens_computed"] == 3 * per_step and cached["reference_tokens_reused"] == 3 * per_step


@pytest.mark.parametrize("name", list(CACHES))
def test_state_is_cleared_after_a_cancelled_run(tiny_model, condition, monkeypatch, name):
    """Cancel (an exception from the progress callback, as ComfyUI interrupts) mid-run: the finally drops every
    pass state; the next run shares nothing with it."""
    runs = []

    class Recorded(StepCacheRun):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            runs.append(self)

    monkeypatch.setattr(denoise_module, "StepCacheRun", Recorded)

    class Cancelled(Exception):
        pass

    def cancel(i, n, x):
        if i == 7:
            raise Cancelled

    with pytest.raises(Cancelled):
        tiny_model.sample(condition, step_cache=CACHES[name], progress=cancel, **SAMPLE)
    assert len(runs) == 1 and runs[0].skipped and runs[0].states == {}
    # a later run starts from nothing and gives what an undisturbed run gives
    again = tiny_model.sample(condition, step_cache=CACHES[name], **SAMPLE)
    fresh = tiny_model.sample(condition, step_cache=CACHES[name], **SAMPLE)
    assert torch.equal(again.images, fresh.images) and all(run.states == {} for run in runs)


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda: TeaCache(threshold=-1), "threshold"),
        (lambda: TeaCache(coefficients=()), "coefficients"),
        (lambda: TaylorSeer(order=-1), "order"),
        (lambda: TaylorSeer(interval=0), "interval"),
        (lambda: TaylorSeer(first_enhance=0.5), "first_enhance"),
    ],
)
def test_bad_options_raise_clear_errors(make, message):
    with pytest.raises(InvalidInputError, match=message):
        make()


def test_bad_step_cache_argument(tiny_model, condition):
    with pytest.raises(InvalidInputError, match="step_cache must be None"):
        tiny_model.sample(condition, step_cache="teacache", **SAMPLE)


def test_calibration_computes_every_step_and_records_each_pass(tiny_model, condition):
    """Calibrating samples exactly the uncached image; every pass adds one pair per step after its first."""
    calibration = TeaCacheCalibration()
    plain = tiny_model.sample(condition, **SAMPLE)
    calibrated = tiny_model.sample(condition, step_cache=calibration, **SAMPLE)
    assert torch.equal(plain.images, calibrated.images) and calibrated.stats["pass_steps_skipped"] == 0
    assert len(calibration.pairs) == 3 * (SAMPLE["steps"] - 1)
    assert all(x > 0 and y > 0 for x, y in calibration.pairs)


def test_calibration_fit_is_the_least_squares_polynomial():
    """Pairs that lie on a polynomial give it back, highest power first (the layout TeaCache evaluates)."""
    truth = (0.5, -1.0, 2.0, 0.1)
    x = np.linspace(0.01, 0.6, 40)
    calibration = TeaCacheCalibration([(float(v), float(np.polyval(truth, v))) for v in x])
    assert np.allclose(calibration.fit(degree=3), truth, atol=1e-8)
    assert polynomial(calibration.fit(degree=3), 0.3) == pytest.approx(np.polyval(truth, 0.3))
    with pytest.raises(InvalidInputError, match="4 step pairs, a degree-4 fit"):
        TeaCacheCalibration(calibration.pairs[:4]).fit()


@pytest.fixture(scope="module")
def calibrated_model_dir(tmp_path_factory):
    """A copy of the tiny model whose config carries a polynomial written by the calibration command."""
    folder = tmp_path_factory.mktemp("calibrated") / "omnigen2-tiny"
    shutil.copytree(FIXTURES, folder)
    prompts = folder.parent / "prompts.txt"
    prompts.write_text("a red circle\n\na blue square on green\n")
    assert calibrate_teacache.main(["--model", str(folder), "--prompts", str(prompts), "--steps", "6", "10",
                                    "--size", "32", "--write"]) == 0
    return folder


def test_teacache_takes_the_model_calibration(tiny_model, calibrated_model_dir, condition):
    """TeaCache() without coefficients uses the model's own (written by the calibration command), else the official."""
    import omni_core

    coefficients = json.loads((calibrated_model_dir / "transformer" / "config.json").read_text())["teacache_coefficients"]
    calibrated = omni_core.load_model(calibrated_model_dir)
    assert calibrated.transformer.config.teacache_coefficients == tuple(coefficients) and len(coefficients) == 5
    options = dict(step_cache=TeaCache(threshold=0.3), **SAMPLE)
    own = calibrated.sample(condition, **options).stats["computed_steps"]
    explicit = tiny_model.sample(condition, **{**options, "step_cache": TeaCache(0.3, tuple(coefficients))}).stats["computed_steps"]
    official = tiny_model.sample(condition, **{**options, "step_cache": TeaCache(0.3, OFFICIAL_TEACACHE_COEFFICIENTS)}).stats["computed_steps"]
    assert own == explicit and own != official
    assert tiny_model.sample(condition, **options).stats["computed_steps"] == official


def test_calibration_command_errors_name_the_input(tmp_path, capsys):
    empty = tmp_path / "prompts.txt"
    empty.write_text("\n\n")
    assert calibrate_teacache.main(["--model", str(FIXTURES), "--prompts", str(empty)]) == 2
    assert "holds no prompt" in capsys.readouterr().err
    with pytest.raises(ModelFileError, match="transformer/config.json"):
        calibrate_teacache.write_coefficients(tmp_path, (1.0, 0.0))


def test_config_keeps_the_calibration_only_when_set():
    base = TransformerConfig(hidden_size=96, num_attention_heads=4, num_kv_heads=2, axes_dim_rope=(8, 8, 8))
    assert "teacache_coefficients" not in config_dict(base)
    calibrated = TransformerConfig.from_dict({**config_dict(base), "teacache_coefficients": [1, 2.5]})
    assert calibrated.teacache_coefficients == (1.0, 2.5) and config_dict(calibrated)["teacache_coefficients"] == [1.0, 2.5]
    with pytest.raises(CheckpointMismatchError, match="teacache_coefficients"):
        TransformerConfig.from_dict({**config_dict(base), "teacache_coefficients": "fast"})
