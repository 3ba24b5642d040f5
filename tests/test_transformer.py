"""The transformer against the official forward recorded on a ragged batch, plus its invariants and input checks."""

import ast
from pathlib import Path

import pytest
import torch

from conftest import TOLERANCE, max_abs_diff
from omni_core import InvalidInputError, TransformerConfig
from omni_core.transformer import KVHook, OmniGen2Transformer



def forward_inputs(tensors):
    latents = [tensors["forward.hidden_states.0"], tensors["forward.hidden_states.1"]]
    refs = [[tensors["forward.ref_image_hidden_states.0.0"], tensors["forward.ref_image_hidden_states.0.1"]], None]
    return latents, tensors["forward.timestep"], tensors["forward.text_hidden_states"], tensors["forward.text_attention_mask"], refs


@torch.no_grad()
def test_ragged_batch_forward_matches_official(tiny_transformer, reference_cases):
    tensors, _ = reference_cases
    out = tiny_transformer(*forward_inputs(tensors))
    for i in range(2):
        assert max_abs_diff(out[i], tensors[f"forward.output.{i}"]) < TOLERANCE


@torch.no_grad()
def test_each_sample_alone_equals_the_batch(tiny_transformer, reference_cases):
    tensors, _ = reference_cases
    latents, t, text, mask, refs = forward_inputs(tensors)
    for i in range(2):
        length = int(mask[i].sum())
        alone = tiny_transformer(latents[i][None], t[i : i + 1], text[i : i + 1, :length], mask[i : i + 1, :length], [refs[i]])
        assert max_abs_diff(alone[0], tensors[f"forward.output.{i}"]) < TOLERANCE


@torch.no_grad()
def test_the_kv_hook_seam_sees_every_joint_layer_in_order(tiny_transformer, reference_cases):
    """Caching attaches through one `KVHook`: each joint layer calls it once, in order, with its keys and values over
    the padded joint sequence; a hook that returns them unchanged changes nothing, bit for bit."""

    class Record(KVHook):
        def __init__(self):
            self.calls = []

        def __call__(self, layer, key, value, mask):
            self.calls.append((layer, key.shape[2], tuple(mask.shape)))
            return key, value, mask

    hook, inputs = Record(), forward_inputs(reference_cases[0])
    plain, hooked = tiny_transformer(*inputs), tiny_transformer(*inputs, reference_kv=hook)
    assert all(torch.equal(a, b) for a, b in zip(plain, hooked))
    assert [layer for layer, _, _ in hook.calls] == list(range(len(tiny_transformer.layers)))
    assert len({(length, mask) for _, length, mask in hook.calls}) == 1


def test_the_model_file_imports_no_caching_code():
    from omni_core import transformer

    tree = ast.parse(Path(transformer.__file__).read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not imported & {"reference_cache", "reference_passes", "step_cache"}


def test_state_dict_keys_are_the_official_ones(tiny_transformer, fixture_dir):
    from omni_core.loading.safetensors_io import read_meta

    assert sorted(tiny_transformer.state_dict()) == sorted(read_meta(fixture_dir / "transformer"))


def test_config_inferred_from_shapes_builds_the_same_architecture(tiny_transformer, fixture_dir):
    inferred = TransformerConfig.from_state_dict(tiny_transformer.state_dict())
    with torch.device("meta"):
        rebuilt = OmniGen2Transformer(inferred)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in tiny_transformer.state_dict().items()}
    assert inferred.axes_dim_rope == (8, 8, 8) and inferred.num_kv_heads == 2


def test_config_rejects_inconsistent_heads():
    with pytest.raises(ValueError, match="axes_dim_rope"):
        TransformerConfig(hidden_size=96, num_attention_heads=4, num_kv_heads=2, axes_dim_rope=(8, 8, 6))
    with pytest.raises(ValueError, match="num_kv_heads"):
        TransformerConfig(hidden_size=96, num_attention_heads=4, num_kv_heads=3, axes_dim_rope=(8, 8, 8))


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda l, m, r: ([l[0][:8]], m, r), r"\[16, H, W\] latent"),
        (lambda l, m, r: ([l[0][:, :15]], m, r), "multiples of the patch size"),
        (lambda l, m, r: (l, torch.cat([m[:, :1] * 0, m[:, 1:]], dim=1), r), "right-padded"),
        (lambda l, m, r: (l, m, [[r[0][0]] * 6]), "at most 5"),
    ],
)
def test_bad_inputs_are_named(tiny_transformer, reference_cases, change, message):
    tensors, _ = reference_cases
    latents, t, text, mask, refs = forward_inputs(tensors)
    latents, mask, refs = change([latents[0]], mask[:1], [refs[0]])
    with pytest.raises(InvalidInputError, match=message):
        tiny_transformer(latents, t[:1], text[:1], mask, refs)
