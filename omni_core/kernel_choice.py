"""Which CPU kernels run the model's products on this machine: measured once, cached on disk, overridable.

Two paths exist for float32 CPU inference: oneDNN (`torch.ops.mkldnn._linear_pointwise` for the linear layers, and
blocked attention built on it) and torch's own kernels (`F.linear`, i.e. MKL's sgemm on x86 builds, and
`F.scaled_dot_product_attention`). Which is faster is a property of the CPU, not of the engine: on an AMD EPYC Zen 5,
whose cores run 512-bit vectors at full width, oneDNN runs the model's GEMMs ~2x faster than MKL (which runs at the
rate of 256-bit vectors on both AMD generations measured); on a Zen 4, which splits 512-bit vectors in two halves,
the two are within a few percent; on an Intel Xeon with AMX MKL is the faster one.
bfloat16 has one GEMM path (torch's own bfloat16 CPU GEMM is oneDNN), so only its attention is chosen: blocked
oneDNN products against torch's bfloat16 flash kernel (the blocks 1.9x faster on an AMD EPYC Zen 5 without AMX).

So the choice is made by a micro-benchmark of both paths on a few representative shapes (interleaved rounds,
medians; ~0.1-0.5 s once per dtype), cached per machine in `$XDG_CACHE_HOME/omni_core/cpu_kernels.json` (default
`~/.cache/...`) under a key of everything that decides it: CPU model with its family and model numbers, its relevant
instruction-set flags, torch version, thread count and dtype. A missing, unwritable or corrupt cache only means
measuring again.

Override: `OMNI_CORE_CPU_GEMM=auto|onednn|mkl` (read at first use) or `set_cpu_gemm(...)` (any time); `onednn` or
`mkl` forces both linear layers and attention to that path (`mkl` = torch's own kernels) in every dtype.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from .errors import InvalidInputError

log = logging.getLogger(__name__)

ENV_VAR = "OMNI_CORE_CPU_GEMM"
SETTINGS = ("auto", "onednn", "mkl")
CACHE_FORMAT = 2  # 2: CPU family and model in the key
# instruction-set extensions that change which GEMM kernels oneDNN and MKL dispatch to
RELEVANT_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8")
LINEAR_SHAPES = ((384, 1024, 1024), (384, 1024, 3072))  # (rows, in, out): attention-sized and feed-forward-sized
ATTENTION_SHAPE = (6, 2, 512, 120)  # query heads, key/value heads, tokens, head_dim (the release's head shape)
ROUNDS = 5
KERNEL_DTYPES = (torch.float32, torch.bfloat16)  # the CPU inference dtypes with a choice of kernels


@dataclass(frozen=True)
class KernelChoice:
    """The path of each product ("onednn" or "mkl" = torch's own) and where the choice came from: "measured",
    "cache", "override" or "unavailable" (no oneDNN GEMM in this build). Ratios are oneDNN / torch median times.
    bfloat16 linear layers are always "onednn" (torch's own bfloat16 GEMM is oneDNN), with no ratio."""

    linear: str
    attention: str
    source: str
    linear_ratio: float | None = None
    attention_ratio: float | None = None


def onednn_available() -> bool:
    """oneDNN's dense GEMM is reachable: an x86 build of PyTorch with mkldnn (all official x86 wheels)."""
    return (
        platform.machine().lower() in ("x86_64", "amd64")
        and torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    )


def cpu_description(cpuinfo: str | None = None) -> tuple[str, tuple[str, ...]]:
    """(CPU model string, its relevant flags) from `cpuinfo` (default: /proc/cpuinfo; elsewhere platform and torch's
    view).

    The string carries the family and model numbers where the OS gives them: a virtual machine may name every
    generation alike ("AMD EPYC" for Zen 4 and Zen 5, with equal flags), yet their kernel choices differ."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():  # the first processor's entry
        name, _, value = line.partition(":")
        fields.setdefault(name.strip(), value.strip())
    model = fields.get("model name") or platform.processor() or platform.machine()
    generation = [f"{label} {fields[key]}" for key, label in (("cpu family", "family"), ("model", "model")) if key in fields]
    capability = torch.backends.cpu.get_cpu_capability()  # "AVX512", "AVX2", ...: torch's own dispatch level
    flags = set(fields.get("flags", "").split())
    return f"{model} ({', '.join([*generation, capability])})", tuple(flag for flag in RELEVANT_FLAGS if flag in flags)


def cache_key(threads: int, dtype: torch.dtype = torch.float32) -> str:
    model, flags = cpu_description()
    return f"{model} | {' '.join(flags) or '-'} | torch {torch.__version__} | {threads} threads | {dtype}"


def cache_file() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "omni_core" / "cpu_kernels.json"


def _read_entries(path: Path) -> dict[str, dict]:
    """The cached entries, or {} if the file is missing, unreadable, corrupt or of another format."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT or not isinstance(data.get("entries"), dict):
        return {}
    return data["entries"]


def _valid(entry) -> bool:
    return isinstance(entry, dict) and entry.get("linear") in ("onednn", "mkl") and entry.get("attention") in ("onednn", "mkl")


def _write_entry(path: Path, key: str, choice: KernelChoice) -> None:
    """Add `choice` under `key` (atomically: a reader never sees half a file); a failure only logs."""
    entries = {k: v for k, v in _read_entries(path).items() if _valid(v)}
    entries[key] = {**asdict(choice), "source": "measured"}
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary.write_text(json.dumps({"format": CACHE_FORMAT, "entries": entries}, indent=1))
        os.replace(temporary, path)
    except OSError as error:
        log.debug("could not write the CPU kernel cache %s: %s", path, error)
        try:
            temporary.unlink(missing_ok=True)
        except OSError:  # its folder does not exist either
            pass


def _median_seconds(candidates: dict[str, Callable[[], object]], rounds: int = ROUNDS) -> dict[str, float]:
    """Median wall seconds of each candidate over interleaved rounds (A B A B ...), after one warm-up call each."""
    for fn in candidates.values():
        fn()
    seconds: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(rounds):
        for name, fn in candidates.items():
            start = time.perf_counter()
            fn()
            seconds[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in seconds.items()}


def _attention_inputs(dtype: torch.dtype, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    heads, kv_heads, tokens, head_dim = ATTENTION_SHAPE
    shapes = ((1, heads, tokens, head_dim), (1, kv_heads, tokens, head_dim), (1, kv_heads, tokens, head_dim))
    return tuple(torch.randn(shape, generator=generator).to(dtype) for shape in shapes)


@torch.no_grad()
def measure(dtype: torch.dtype = torch.float32) -> tuple[float | None, float]:
    """(oneDNN / torch time for the linear shapes, the same for attention) in `dtype` on this machine, threads as
    set now. bfloat16 has no linear ratio: both of its GEMM paths are oneDNN."""
    from .attention import blocked_attention_onednn, sdpa_attention  # they import this module: import late
    from .cpu_gemm import onednn_linear

    generator = torch.Generator().manual_seed(0)
    linear_ratio = None
    if dtype == torch.float32:
        linear_time = {"onednn": 0.0, "mkl": 0.0}
        for rows, inner, outer in LINEAR_SHAPES:
            x = torch.randn(rows, inner, generator=generator)
            weight = torch.randn(outer, inner, generator=generator) * inner**-0.5
            times = _median_seconds({"onednn": lambda: onednn_linear(x, weight), "mkl": lambda: F.linear(x, weight)})
            for name in linear_time:
                linear_time[name] += times[name]
        linear_ratio = linear_time["onednn"] / linear_time["mkl"]
    q, k, v = _attention_inputs(dtype, generator)
    attention_time = _median_seconds(
        {"onednn": lambda: blocked_attention_onednn(q, k, v, None), "mkl": lambda: sdpa_attention(q, k, v, None)}
    )
    return linear_ratio, attention_time["onednn"] / attention_time["mkl"]


def check_setting(setting: str, where: str) -> str:
    if setting not in SETTINGS:
        raise InvalidInputError(f"{where} must be one of {', '.join(SETTINGS)}; got {setting!r}.")
    return setting


def _check_kernel_dtype(dtype: torch.dtype) -> torch.dtype:
    """`dtype`, if it is one with a choice of CPU kernels (not loading.strict.check_dtype, which checks model dtypes)."""
    if dtype not in KERNEL_DTYPES:
        raise InvalidInputError(f"CPU kernels are chosen for {', '.join(map(str, KERNEL_DTYPES))} only; got {dtype}.")
    return dtype


def choose_kernels(
    setting: str = "auto", threads: int | None = None, dtype: torch.dtype = torch.float32
) -> KernelChoice:
    """The kernel paths for `setting` at `threads` (default: torch's current count) in `dtype`: forced, cached or
    measured now (and cached). Measuring runs at the current thread count, so `threads` only names the cache entry."""
    check_setting(setting, "the CPU GEMM setting")
    _check_kernel_dtype(dtype)
    fixed_linear = "onednn" if dtype == torch.bfloat16 else None
    if not onednn_available():
        return KernelChoice("mkl", "mkl", "unavailable")
    if setting != "auto":
        return KernelChoice(fixed_linear or setting, setting, "override")
    key = cache_key(threads or torch.get_num_threads(), dtype)
    path = cache_file()
    entry = _read_entries(path).get(key)
    if _valid(entry):
        return KernelChoice(
            entry["linear"], entry["attention"], "cache", entry.get("linear_ratio"), entry.get("attention_ratio")
        )
    linear_ratio, attention_ratio = measure(dtype)
    choice = KernelChoice(
        fixed_linear or ("onednn" if linear_ratio < 1.0 else "mkl"),
        "onednn" if attention_ratio < 1.0 else "mkl",
        "measured",
        None if linear_ratio is None else round(linear_ratio, 3),
        round(attention_ratio, 3),
    )
    _write_entry(path, key, choice)
    return choice


_setting: str | None = None  # set_cpu_gemm's value; None: the environment variable, else "auto"
_chosen: dict[tuple[int, torch.dtype], KernelChoice] = {}  # per thread count and dtype, for this process


def set_cpu_gemm(setting: str | None) -> None:
    """Force "onednn" or "mkl", or "auto" (measure / cache); None returns to $OMNI_CORE_CPU_GEMM (default auto)."""
    global _setting
    _setting = None if setting is None else check_setting(setting, "set_cpu_gemm's setting")
    _chosen.clear()


def current_kernels(dtype: torch.dtype = torch.float32) -> KernelChoice:
    """The choice in force for torch's current thread count and `dtype`: made once per count, dtype and process,
    logged once."""
    threads = torch.get_num_threads()
    choice = _chosen.get((threads, dtype))
    if choice is None:
        setting = _setting or check_setting(os.environ.get(ENV_VAR, "auto").strip().lower() or "auto", ENV_VAR)
        choice = _chosen[threads, dtype] = choose_kernels(setting, threads, dtype)
        log.info(
            "%s CPU kernels (%d threads): linear %s, attention %s (%s; oneDNN/torch time %s / %s); set %s="
            "onednn|mkl to override", str(dtype).removeprefix("torch."), threads, choice.linear, choice.attention,
            choice.source, choice.linear_ratio, choice.attention_ratio, ENV_VAR,
        )
    return choice
