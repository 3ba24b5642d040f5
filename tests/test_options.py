"""`SamplingOptions` is where a sampling option is declared: every entry point takes it, the CLI has a flag and the
nodes a widget for each field (or say why not), widget defaults are its defaults, and a bad or unknown option is
refused before any model work."""

from __future__ import annotations

import pytest

from omni_core import SamplingOptions
from omni_core.__main__ import _options, _parser
from omni_core.errors import InvalidInputError
from omni_core.options import OPTION_NAMES
from omni_core.step_cache import TaylorSeer

SAMPLING_NODES = ("OmniGen2CachedSampler", "OmniGen2Repaint", "OmniGen2Chat", "OmniGen2Reflect",
                  "OmniGen2ConditionEncode")
NOT_SAMPLING_WIDGETS = {"model", "condition", "image", "mask", "prompt", "negative_prompt", "respond", "max_new_tokens",
                        "max_rounds", "judge"}
# Options no node shows: the automatic size rule is width = height = 0; the branch timestep is for research.
ENGINE_ONLY = {"align_res", "condition_timestep"}


def changed_value(spec: tuple):
    """A valid value other than the widget's default."""
    kind, settings = spec
    if isinstance(kind, list):
        return next(choice for choice in kind if choice != settings["default"])
    if kind == "INT":
        return settings["default"] + settings.get("step", 1) if settings["default"] < settings["max"] else settings["min"]
    return settings["default"] / 2 if settings["default"] else settings["max"] / 2


def widgets(pack, node: str) -> dict[str, tuple]:
    required = pack.NODE_CLASS_MAPPINGS[node].INPUT_TYPES()["required"]
    return {name: spec for name, spec in required.items() if name not in NOT_SAMPLING_WIDGETS}


def test_every_option_has_a_widget_and_widget_defaults_are_the_options_defaults(pack, bridge):
    reached = set()
    for node in SAMPLING_NODES:
        shown = widgets(pack, node)
        defaults = {name: settings["default"] for name, (_, settings) in shown.items()}
        base = bridge.sampling_options(defaults)
        for name, spec in shown.items():
            changed = bridge.sampling_options({**defaults, name: changed_value(spec)})
            reached |= {f for f in OPTION_NAMES if getattr(changed, f) != getattr(base, f)}
        # the same defaults, but for the text guidance: the official 5.0 where the engine's default is the model's
        untouched = SamplingOptions()
        differing = {f for f in OPTION_NAMES if getattr(base, f) != getattr(untouched, f)}
        assert differing <= {"text_guidance_scale", "max_pixels"}, (node, differing)
        assert base.encoding_max_pixels == untouched.encoding_max_pixels
    assert reached == set(OPTION_NAMES) - ENGINE_ONLY


def test_every_option_has_a_cli_flag():
    parser = _parser()
    generate = next(a for a in parser._subparsers._group_actions[0].choices.values())
    assert {action.dest for action in generate._actions} >= set(OPTION_NAMES)
    args = generate.parse_args(["--prompt", "x", "--steps", "7", "--text-guidance", "3", "--cfg-range", "0", "0.5",
                                "--no-independent-condition", "--step-cache", "taylorseer", "--taylorseer-order", "2"])
    assert _options(args) == SamplingOptions(steps=7, text_guidance_scale=3.0, cfg_range=(0.0, 0.5),
                                             independent_condition=False, step_cache=TaylorSeer(order=2))
    assert _options(generate.parse_args(["--prompt", "x"])) == SamplingOptions()


@pytest.mark.parametrize("changes,message", [
    ({"stepz": 3}, r"unknown sampling options \['stepz'\]"),
    ({"steps": 0}, "steps must be a whole number >= 1"),
    ({"seed": 1.5}, "seed must be a whole number"),
    ({"cfg_range": (0.9, 0.1)}, "cfg_range must be"),
    ({"image_guidance_scale": float("nan")}, "image_guidance_scale must be a number"),
    ({"condition_scale": 2.0}, "condition_scale must be in"),
    ({"prune_ratio": 1.0}, "prune_ratio must be in"),
    ({"condition_timestep": -0.5}, "condition_timestep must be in"),
    ({"max_input_image_side_length": 8}, "max_input_image_side_length must be a whole number >= 16"),
])
def test_bad_options_are_refused_where_they_are_made(changes, message):
    with pytest.raises(InvalidInputError, match=message):
        SamplingOptions.of(**changes)


def test_every_entry_point_refuses_an_unknown_option_before_any_work(tiny_model):
    condition = tiny_model.encode_condition("x")
    calls = {
        "sample": lambda: tiny_model.sample(condition, stepz=2),
        "repaint": lambda: tiny_model.repaint(condition, None, None, stepz=2),
        "generate": lambda: tiny_model.generate("x", stepz=2),
        "chat": lambda: tiny_model.chat("x", respond="text", stepz=2),
        "reflect": lambda: tiny_model.reflect("x", judge=lambda question, images: "yes", stepz=2),
    }
    for name, call in calls.items():
        with pytest.raises(InvalidInputError, match="unknown sampling options"):
            call()
    with pytest.raises(InvalidInputError, match="options must be a SamplingOptions"):
        tiny_model.sample(condition, {"steps": 2})


def test_an_options_object_and_its_fields_as_keywords_sample_alike(tiny_model):
    condition = tiny_model.encode_condition("a tree")
    options = SamplingOptions(width=32, height=32, steps=2, seed=3)
    assert options.encoding_max_pixels == 1024 * 1024
    as_object = tiny_model.sample(condition, options).images
    assert (as_object == tiny_model.sample(condition, width=32, height=32, steps=2, seed=3).images).all()
    assert (as_object == tiny_model.sample(condition, SamplingOptions(steps=9), width=32, height=32, steps=2, seed=3).images).all()
