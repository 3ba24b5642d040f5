"""The CPU kernel choice: only paths probed runnable are chosen; overrides force each path (seen in the profiler), or
name what cannot run; both paths agree to round-off (bfloat16 attention: as close to exact as torch's own kernel);
the per-machine cache survives round trips, misses on another key (thread count, dtype, runnable paths) and shrugs
off corrupt or unwritable files. tests/test_avx2.py runs this file again under an AVX2-only oneDNN."""

import json

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from omni_core import InvalidInputError, kernel_choice
from omni_core.attention import attention
from omni_core.ops import Linear

pytestmark = pytest.mark.skipif(not kernel_choice.onednn_available(), reason="no oneDNN GEMM runs here")
BF16_ONEDNN = kernel_choice.runnable_paths(torch.bfloat16) == kernel_choice.ONEDNN_PATHS  # not on AVX2-only CPUs


@pytest.fixture(autouse=True)
def restore_setting():
    yield
    kernel_choice.set_cpu_gemm(None)


@pytest.fixture
def cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    return tmp_path


def ops_run(fn) -> set[str]:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return {event.key for event in prof.key_averages()}


@torch.no_grad()
def test_override_forces_each_path_and_both_agree():
    layer = Linear(96, 80)
    x = torch.randn(2, 37, 96)
    q, k, v = torch.randn(1, 6, 50, 24), torch.randn(1, 2, 50, 24), torch.randn(1, 2, 50, 24)
    outputs = {}
    for setting in ("onednn", "mkl"):
        kernel_choice.set_cpu_gemm(setting)
        choice = kernel_choice.current_kernels()
        assert (choice.linear, choice.attention, choice.source, choice.fused) == (setting, setting, "override", setting == "onednn")
        linear_ops, attention_ops = ops_run(lambda: layer(x)), ops_run(lambda: attention(q, k, v))
        onednn = setting == "onednn"
        assert ("mkldnn::_linear_pointwise" in linear_ops) == onednn and ("aten::addmm" in linear_ops) != onednn
        assert ("mkldnn::_linear_pointwise" in attention_ops) == onednn
        assert ("aten::scaled_dot_product_attention" in attention_ops) != onednn
        outputs[setting] = layer(x), layer.forward_silu(x), attention(q, k, v)
    for fast, plain in zip(outputs["onednn"], outputs["mkl"]):
        assert (fast - plain).abs().max() < 1e-5


@pytest.mark.skipif(not BF16_ONEDNN, reason="oneDNN runs no bfloat16 here: test_forcing_onednn_where_it_cannot_run")
@torch.no_grad()
def test_bfloat16_attention_paths_are_forced_and_as_exact_as_torchs_kernel():
    generator = torch.Generator().manual_seed(0)
    # sharp attention (logits of tens): rounding the scores to bfloat16 would double the error
    q, k, v = (3 * torch.randn(2, heads, 300, 64, generator=generator, dtype=torch.float64) for heads in (6, 2, 2))
    keys = torch.ones(2, 300, dtype=torch.bool)
    keys[1, 250:] = False
    v[1, :, 250:] = 1e4  # padded keys: any weight on them would show
    exact = attention(q, k, v, keys).float()
    errors = {}
    for setting in ("onednn", "mkl"):
        kernel_choice.set_cpu_gemm(setting)
        choice = kernel_choice.current_kernels(torch.bfloat16)
        assert (choice.linear, choice.attention, choice.fused) == (setting, setting, setting == "onednn")
        inputs = [t.to(torch.bfloat16) for t in (q, k, v)] + [keys]
        ops = ops_run(lambda: attention(*inputs))
        assert ("mkldnn::_linear_pointwise" in ops) == (setting == "onednn")
        assert ("aten::scaled_dot_product_attention" in ops) == (setting == "mkl")
        out = attention(*inputs)
        assert out.dtype == torch.bfloat16
        errors[setting] = (out.float() - exact).pow(2).mean().sqrt().item()
    assert errors["onednn"] < 1.1 * errors["mkl"], errors


def test_environment_variable_overrides_and_bad_values_name_it(monkeypatch):
    monkeypatch.setenv(kernel_choice.ENV_VAR, "mkl")
    kernel_choice.set_cpu_gemm(None)
    assert kernel_choice.current_kernels().linear == "mkl"
    monkeypatch.setenv(kernel_choice.ENV_VAR, "fastest")
    kernel_choice.set_cpu_gemm(None)
    with pytest.raises(InvalidInputError, match=kernel_choice.ENV_VAR):
        kernel_choice.current_kernels()
    with pytest.raises(InvalidInputError, match="set_cpu_gemm"):
        kernel_choice.set_cpu_gemm("cublas")


def test_measured_choice_is_cached_per_key(cache_home):
    first = kernel_choice.choose_kernels("auto", threads=1)
    assert first.source == "measured" and first.linear in ("onednn", "mkl") and first.linear_ratio > 0
    entries = json.loads(kernel_choice.cache_file().read_text())["entries"]
    assert list(entries) == [kernel_choice.cache_key(1)]
    assert "torch " + torch.__version__ in kernel_choice.cache_key(1)
    again = kernel_choice.choose_kernels("auto", threads=1)
    assert again.source == "cache" and (again.linear, again.attention) == (first.linear, first.attention)
    # another key (here: thread count) is not served the cached entry; both are kept
    assert kernel_choice.choose_kernels("auto", threads=3).source == "measured"
    assert len(json.loads(kernel_choice.cache_file().read_text())["entries"]) == 2
    # bfloat16 has its own entry; its linear layers have one path (torch's bfloat16 GEMM is oneDNN), so no ratio
    bf16 = kernel_choice.choose_kernels("auto", threads=1, dtype=torch.bfloat16)
    assert bf16.linear_ratio is None and bf16.onednn_paths == kernel_choice.runnable_paths(torch.bfloat16)
    if BF16_ONEDNN:
        assert bf16.source == "measured" and bf16.linear == "onednn" and bf16.fused
        assert bf16.attention_ratio > 0 and bf16.attention in ("onednn", "mkl")
        assert kernel_choice.choose_kernels("auto", threads=1, dtype=torch.bfloat16).source == "cache"
        assert kernel_choice.cache_key(1, torch.bfloat16) in json.loads(kernel_choice.cache_file().read_text())["entries"]
    else:  # nothing to measure: torch's own kernels, and no entry
        assert bf16 == kernel_choice.KernelChoice("mkl", "mkl", "unavailable", onednn_paths=bf16.onednn_paths)
        assert len(json.loads(kernel_choice.cache_file().read_text())["entries"]) == 2
    with pytest.raises(InvalidInputError, match="float16"):
        kernel_choice.choose_kernels("auto", threads=1, dtype=torch.float16)


def test_corrupt_or_unwritable_cache_is_ignored(cache_home, monkeypatch):
    path = kernel_choice.cache_file()
    path.parent.mkdir(parents=True)
    path.write_text('{"format": 1, "entries": {"')  # cut-off file
    assert kernel_choice.choose_kernels("auto", threads=1).source == "measured"
    assert kernel_choice.choose_kernels("auto", threads=1).source == "cache"  # rewritten whole
    key = kernel_choice.cache_key(1)
    path.write_text(json.dumps({"format": kernel_choice.CACHE_FORMAT, "entries": {key: {"linear": "cublas", "attention": 3}}}))
    assert kernel_choice.choose_kernels("auto", threads=1).source == "measured"
    blocked = cache_home / "not-a-dir"
    blocked.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocked))  # the cache folder cannot be created
    assert kernel_choice.choose_kernels("auto", threads=1).source == "measured"


def test_load_model_chooses_the_kernels_before_any_generation(cache_home, monkeypatch, caplog):
    from omni_core import load_model

    monkeypatch.delenv(kernel_choice.ENV_VAR, raising=False)
    kernel_choice.set_cpu_gemm(None)  # forget this process's choices: the next one is measured, into cache_home
    with caplog.at_level("WARNING", logger="omni_core"):
        load_model(dtype=torch.bfloat16)
    slow = "bfloat16 runs on torch's generic kernels" in caplog.text
    if BF16_ONEDNN:
        entries = json.loads(kernel_choice.cache_file().read_text())["entries"]
        assert list(entries) == [kernel_choice.cache_key(torch.get_num_threads(), torch.bfloat16)]
        assert not slow
    else:  # chosen at load all the same: torch's own kernels, nothing to measure or cache, and the user is told
        assert not kernel_choice.cache_file().exists()
        assert kernel_choice._chosen[torch.get_num_threads(), torch.bfloat16].source == "unavailable"
        assert slow


def test_forcing_onednn_where_it_cannot_run_names_the_path_at_load(monkeypatch):
    """On an AVX2-only CPU (tests/test_avx2.py runs this there) oneDNN has no bfloat16: forcing it fails at load,
    naming the dtype and path, not inside a forward; elsewhere forcing it works."""
    from omni_core import load_model

    monkeypatch.setenv(kernel_choice.ENV_VAR, "onednn")
    kernel_choice.set_cpu_gemm(None)
    if BF16_ONEDNN:
        assert load_model(dtype=torch.bfloat16).dtype == torch.bfloat16
        return
    with pytest.raises(InvalidInputError, match=rf"{kernel_choice.ENV_VAR}=onednn.*bfloat16 gemm: .*auto"):
        load_model(dtype=torch.bfloat16)
    assert load_model().dtype == torch.float32  # float32 oneDNN runs on every x86 CPU


def test_a_cached_choice_made_with_other_runnable_paths_is_measured_again(cache_home):
    """An entry records the paths probed runnable when it was made; one that names a path not runnable now (a cache
    carried from another CPU, or oneDNN capped since) is never served."""
    first = kernel_choice.choose_kernels("auto", threads=1)
    path = kernel_choice.cache_file()
    data = json.loads(path.read_text())
    entry = data["entries"][kernel_choice.cache_key(1)]
    assert entry["onednn_paths"] == list(kernel_choice.runnable_paths(torch.float32))
    entry["onednn_paths"] = entry["onednn_paths"][:1]
    path.write_text(json.dumps(data))
    again = kernel_choice.choose_kernels("auto", threads=1)
    assert again.source == "measured" and again.onednn_paths == first.onednn_paths


# /proc/cpuinfo of two 2-core KVM guests this project ran on (first lines, flags cut to the relevant ones): both name
# themselves "AMD EPYC" with equal flags, but oneDNN's lead and the attention path differ (benchmarks/README.md)
ZEN4_CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 17
model name\t: AMD EPYC
flags\t\t: fpu avx2 fma avx512f avx512_bf16 avx512_vnni
"""
ZEN5_CPUINFO = ZEN4_CPUINFO.replace("cpu family\t: 25", "cpu family\t: 26").replace("model\t\t: 17", "model\t\t: 2")


def test_cpu_generations_with_one_name_get_their_own_kernel_choice():
    zen4, zen5 = kernel_choice.cpu_description(ZEN4_CPUINFO), kernel_choice.cpu_description(ZEN5_CPUINFO)
    assert zen4[1] == zen5[1] == ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16")
    assert zen4[0].startswith("AMD EPYC (family 25, model 17, ") and zen5[0].startswith("AMD EPYC (family 26, model 2, ")
    # an OS whose cpuinfo names no model (or has none) falls back on the platform's name
    unnamed = kernel_choice.cpu_description("flags\t\t: avx2 fma\n")
    assert unnamed[0] and not unnamed[0].startswith(" (") and unnamed[1] == ("avx2", "fma")
    # this machine's cache key carries its own generation, read from the OS
    family = next((line.split(":")[1].strip() for line in _cpuinfo().splitlines() if line.startswith("cpu family")), None)
    if family is not None:
        assert f"(family {family}, model " in kernel_choice.cache_key(1)


def _cpuinfo() -> str:
    try:
        with open("/proc/cpuinfo") as file:
            return file.read()
    except OSError:
        return ""
