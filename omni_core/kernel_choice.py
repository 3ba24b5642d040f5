"""Which CPU kernels run the model's products on this machine: probed, measured once, cached on disk, overridable.

Two paths: oneDNN (`_linear_pointwise` for the linear layers, the feed-forward's SiLU fused as a post-op, and
blocked attention built on it) and torch's own (`F.linear`, MKL's sgemm for float32 on x86, and SDPA). Which is
faster depends on the CPU (~2x oneDNN on a Zen 5, even on a Zen 4, MKL on an Intel Xeon with AMX; torch's own
bfloat16 GEMM is oneDNN, so only bfloat16's attention is chosen), and so do the oneDNN paths that exist (no bfloat16
inner product without AVX-512). So each oneDNN path is first probed once per process on tiny inputs (`runnable_paths`); one
that cannot run is never measured, chosen or called. Among the runnable ones, a micro-benchmark picks (~0.1-0.5 s once
per dtype), cached in `$XDG_CACHE_HOME/omni_core/cpu_kernels.json` under a key of all that decides it (`cache_key`);
an entry recorded with other runnable paths (oneDNN capped by `ONEDNN_MAX_CPU_ISA`, say) is measured again, and a
missing, unwritable or corrupt cache only means measuring again. Measurements: benchmarks/README.md.

Override: `OMNI_CORE_CPU_GEMM=auto|onednn|mkl` (read at first use) or `set_cpu_gemm(...)` (any time) forces both
linear layers and attention (`mkl` = torch's own) in every dtype; forcing `onednn` where a path of the dtype cannot
run is an error naming it, raised when the kernels are chosen (load_model chooses them at load).
"""

from __future__ import annotations

import functools
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

from .cpu_kernels import blocked_attention_onednn, onednn_built, onednn_linear, sdpa_attention
from .errors import InvalidInputError

log = logging.getLogger(__name__)

ENV_VAR = "OMNI_CORE_CPU_GEMM"
SETTINGS = ("auto", "onednn", "mkl")
CACHE_FORMAT = 3  # 2: CPU family and model in the key; 3: the runnable oneDNN paths recorded
# instruction-set extensions that change which GEMM kernels oneDNN and MKL dispatch to
RELEVANT_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8")
LINEAR_SHAPES = ((384, 1024, 1024), (384, 1024, 3072))  # (rows, in, out): attention-sized and feed-forward-sized
ATTENTION_SHAPE = (6, 2, 512, 120)  # query heads, key/value heads, tokens, head_dim (the release's head shape)
ROUNDS = 5
KERNEL_DTYPES = (torch.float32, torch.bfloat16)  # the CPU inference dtypes with a choice of kernels
# environment variables that cap the instruction sets oneDNN, MKL and torch dispatch to (part of the cache key)
ISA_CAPS = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS", "ATEN_CPU_CAPABILITY")
ONEDNN_PATHS = ("gemm", "fused gemm", "blocked attention")  # per dtype; all three are needed to force oneDNN


@dataclass(frozen=True)
class KernelChoice:
    """The path of each product ("onednn" or "mkl" = torch's own) and where the choice came from: "measured",
    "cache", "override" or "unavailable" (no oneDNN path of the dtype runs here). Ratios are oneDNN / torch median
    times. bfloat16 linear layers are "onednn" wherever oneDNN runs bfloat16 GEMMs (torch's own bfloat16 GEMM is
    oneDNN there), with no ratio. `onednn_paths`: the oneDNN paths of the dtype probed runnable here."""

    linear: str
    attention: str
    source: str
    linear_ratio: float | None = None
    attention_ratio: float | None = None
    onednn_paths: tuple[str, ...] = ()

    @property
    def fused(self) -> bool:
        """The feed-forward's SiLU runs inside a oneDNN GEMM: wherever oneDNN runs the linear layers and the post-op."""
        return self.linear == "onednn" and "fused gemm" in self.onednn_paths


def onednn_available() -> bool:
    """Some oneDNN path runs here (the op is in this build and its float32 GEMM runs on this CPU)."""
    return "gemm" in runnable_paths(torch.float32)


def _probes(dtype: torch.dtype) -> dict[str, Callable[[], object]]:
    """Each oneDNN path run once on tiny inputs of `dtype`: enough for oneDNN to create (or refuse) its primitives."""
    x, weight = torch.ones(4, 16, dtype=dtype), torch.ones(8, 16, dtype=dtype)
    q, kv = torch.ones(1, 2, 4, 16, dtype=dtype), torch.ones(1, 1, 4, 16, dtype=dtype)
    return {
        "gemm": lambda: onednn_linear(x, weight),
        "fused gemm": lambda: onednn_linear(x, weight, None, "swish"),
        "blocked attention": lambda: blocked_attention_onednn(q, kv, kv, None),
    }


@functools.cache
def probe(dtype: torch.dtype) -> dict[str, str | None]:
    """Per oneDNN path of `dtype`: None if it runs here, else why not (oneDNN's own first line). Once per process."""
    if not onednn_built():
        return dict.fromkeys(ONEDNN_PATHS, "this PyTorch build has no oneDNN GEMM (an x86 build with mkldnn has)")
    failures: dict[str, str | None] = {}
    with torch.no_grad():
        for path, run in _probes(dtype).items():
            try:
                run()
                failures[path] = None
            except RuntimeError as error:
                failures[path] = (str(error).splitlines() or [type(error).__name__])[0][:200]
    return failures


def runnable_paths(dtype: torch.dtype) -> tuple[str, ...]:
    """The oneDNN paths of `dtype` that run on this machine, in ONEDNN_PATHS order."""
    return tuple(path for path, failure in probe(dtype).items() if failure is None)


def cpu_description(cpuinfo: str | None = None) -> tuple[str, tuple[str, ...]]:
    """(CPU model string, its relevant flags) from `cpuinfo` (default: /proc/cpuinfo; elsewhere platform and torch's
    view). With the family and model numbers where the OS gives them: a virtual machine may name Zen 4 and Zen 5
    alike ("AMD EPYC", equal flags), yet their kernel choices differ."""
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
    caps = "".join(f" | {name}={os.environ[name]}" for name in ISA_CAPS if os.environ.get(name))
    return f"{model} | {' '.join(flags) or '-'}{caps} | torch {torch.__version__} | {threads} threads | {dtype}"


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


def _valid(entry, paths: tuple[str, ...]) -> bool:
    """A well-formed entry made with the same oneDNN paths runnable as now, choosing none that is not."""
    return (
        isinstance(entry, dict)
        and entry.get("onednn_paths") == list(paths)
        and entry.get("linear") in ("onednn", "mkl")
        and entry.get("attention") in ("onednn", "mkl")
        and (entry["linear"] == "mkl" or "gemm" in paths)
        and (entry["attention"] == "mkl" or "blocked attention" in paths)
    )


def _write_entry(path: Path, key: str, choice: KernelChoice) -> None:
    """Add `choice` under `key` (atomically: a reader never sees half a file); a failure only logs."""
    entries = {k: v for k, v in _read_entries(path).items() if isinstance(v, dict)}
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
def measure(dtype: torch.dtype = torch.float32) -> tuple[float | None, float | None]:
    """(oneDNN / torch time for the linear shapes, the same for attention) in `dtype` on this machine, threads as
    set now; None where there is nothing to compare: a oneDNN path that cannot run here, or bfloat16's linear
    layers (where oneDNN runs them, torch's own bfloat16 GEMM is oneDNN too)."""
    paths = runnable_paths(dtype)
    generator = torch.Generator().manual_seed(0)
    linear_ratio = attention_ratio = None
    if dtype == torch.float32 and "gemm" in paths:
        linear_time = {"onednn": 0.0, "mkl": 0.0}
        for rows, inner, outer in LINEAR_SHAPES:
            x = torch.randn(rows, inner, generator=generator)
            weight = torch.randn(outer, inner, generator=generator) * inner**-0.5
            times = _median_seconds({"onednn": lambda: onednn_linear(x, weight), "mkl": lambda: F.linear(x, weight)})
            for name in linear_time:
                linear_time[name] += times[name]
        linear_ratio = linear_time["onednn"] / linear_time["mkl"]
    if "blocked attention" in paths:
        q, k, v = _attention_inputs(dtype, generator)
        attention_time = _median_seconds(
            {"onednn": lambda: blocked_attention_onednn(q, k, v, None), "mkl": lambda: sdpa_attention(q, k, v, None)}
        )
        attention_ratio = attention_time["onednn"] / attention_time["mkl"]
    return linear_ratio, attention_ratio


def check_setting(setting: str, where: str) -> str:
    if setting not in SETTINGS:
        raise InvalidInputError(f"{where} must be one of {', '.join(SETTINGS)}; got {setting!r}.")
    return setting


def _check_kernel_dtype(dtype: torch.dtype) -> torch.dtype:
    """`dtype`, if it is one with a choice of CPU kernels (not loading.strict.check_dtype, which checks model dtypes)."""
    if dtype not in KERNEL_DTYPES:
        raise InvalidInputError(f"CPU kernels are chosen for {', '.join(map(str, KERNEL_DTYPES))} only; got {dtype}.")
    return dtype


def _forced_onednn(dtype: torch.dtype) -> KernelChoice:
    """oneDNN for every product, or an error naming what this machine's oneDNN cannot run."""
    failures = {path: why for path, why in probe(dtype).items() if why is not None}
    if failures:
        missing = "; ".join(f"{str(dtype).removeprefix('torch.')} {path}: {why}" for path, why in failures.items())
        raise InvalidInputError(
            f"{ENV_VAR}=onednn (or set_cpu_gemm('onednn')) asks for oneDNN kernels this CPU or PyTorch build cannot "
            f"run ({missing}); use {ENV_VAR}=auto, which picks among the kernels that run here, or mkl."
        )
    return KernelChoice("onednn", "onednn", "override", onednn_paths=ONEDNN_PATHS)


def choose_kernels(
    setting: str = "auto", threads: int | None = None, dtype: torch.dtype = torch.float32
) -> KernelChoice:
    """The kernel paths for `setting` at `threads` (default: torch's current count) in `dtype`, among those that run
    here: forced, cached or measured now (and cached). Measuring runs at the current thread count, so `threads`
    only names the cache entry."""
    check_setting(setting, "the CPU GEMM setting")
    _check_kernel_dtype(dtype)
    if setting == "onednn":
        return _forced_onednn(dtype)
    paths = runnable_paths(dtype)
    if setting == "mkl":
        return KernelChoice("mkl", "mkl", "override", onednn_paths=paths)
    if not paths:
        return KernelChoice("mkl", "mkl", "unavailable", onednn_paths=paths)
    key = cache_key(threads or torch.get_num_threads(), dtype)
    path = cache_file()
    entry = _read_entries(path).get(key)
    if _valid(entry, paths):
        return KernelChoice(
            entry["linear"], entry["attention"], "cache", entry.get("linear_ratio"), entry.get("attention_ratio"), paths
        )
    linear_ratio, attention_ratio = measure(dtype)
    fixed_linear = dtype == torch.bfloat16 and "gemm" in paths  # torch's own bfloat16 GEMM is oneDNN here
    choice = KernelChoice(
        "onednn" if fixed_linear or (linear_ratio is not None and linear_ratio < 1.0) else "mkl",
        "onednn" if attention_ratio is not None and attention_ratio < 1.0 else "mkl",
        "measured",
        None if linear_ratio is None else round(linear_ratio, 3),
        None if attention_ratio is None else round(attention_ratio, 3),
        paths,
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
