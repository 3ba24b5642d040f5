"""The CPU-kernel and bfloat16 / fp8 tests again, in a process whose oneDNN, MKL and torch dispatch only to AVX2, as
on an AMD Zen 3 or most desktop and laptop CPUs: there oneDNN has no bfloat16 inner product at all, so every path
that needs one must step aside to torch's own kernels, and forcing oneDNN must fail at load naming it.

The caps are the libraries' own switches (`ONEDNN_MAX_CPU_ISA`, `MKL_ENABLE_INSTRUCTIONS`, `ATEN_CPU_CAPABILITY`), read
once at start-up, hence the subprocess. On a CPU that is AVX2-only anyway they change nothing, and the same tests run.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from omni_core import kernel_choice
from omni_core.cpu_kernels import onednn_built
from conftest import ROOT

AVX2_ONLY = {"ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}
# the tests that crashed on a real AMD EPYC Zen 3 before oneDNN's paths were probed (issue 27), and the kernel tests
TESTS = [
    "tests/test_cpu_gemm.py",
    "tests/test_kernel_choice.py",
    "tests/test_bf16.py",
    "tests/test_loading.py::test_bf16_weights",
    "tests/test_nodes.py::test_fp8_storage_computes_in_bf16",
    "tests/test_nodes.py::test_load_folder_by_name_from_registered_roots",
    "tests/test_lora.py::test_merged_weight_is_base_plus_strength_times_scaled_product_in_float32",
    "tests/test_benchmarks.py::test_bf16_forward_benchmark_times_both_dtypes_side_by_side",
]

pytestmark = pytest.mark.skipif(
    not (onednn_built() and "avx2" in kernel_choice.cpu_description()[1]), reason="an x86 CPU with AVX2 and oneDNN"
)


def _run_avx2_only(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key != kernel_choice.ENV_VAR}
    env.update(AVX2_ONLY, XDG_CACHE_HOME=str(tmp_path / "cache"), PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


def test_avx2_only_onednn_runs_no_bfloat16_path(tmp_path):
    """The simulation takes effect: float32 oneDNN paths run, no bfloat16 one does, and the choice says so."""
    script = (
        "import torch; from omni_core import kernel_choice as k; "
        "print(k.runnable_paths(torch.float32), k.runnable_paths(torch.bfloat16), "
        "k.current_kernels(torch.bfloat16).source, torch.backends.cpu.get_cpu_capability())"
    )
    result = _run_avx2_only(["-c", script], tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[0] == f"{kernel_choice.ONEDNN_PATHS} () unavailable AVX2"


def test_kernel_bf16_and_fp8_tests_pass_with_avx2_only_kernels(tmp_path):
    result = _run_avx2_only(["-m", "pytest", "-q", "-p", "no:cacheprovider", *TESTS], tmp_path)
    summary = result.stdout.strip().splitlines()[-1:] or [""]
    assert result.returncode == 0 and " passed" in summary[0] and "failed" not in summary[0], result.stdout[-4000:]
    # the test of bfloat16 on oneDNN skips there, saying why (pytest's -ra summary)
    assert "oneDNN runs no bfloat16 here" in result.stdout
