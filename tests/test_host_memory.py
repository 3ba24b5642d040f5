"""Host memory while loading: every layout peaks at <= 1.2x the weight bytes it loads, in RSS.

Random weights in the released structure, reduced (benchmarks/random_weights.py --reduced: a 200M-parameter
transformer, a 195M MLLM, the FLUX VAE), written in the layouts users have; benchmarks/host_memory.py loads each case
in a fresh process that touches every loaded weight once and reports its peak RSS above what it held before loading
(the same cases at full size: its figures in benchmarks/README.md).
"""

import sys

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import host_memory  # noqa: E402
import random_weights  # noqa: E402


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    out = tmp_path_factory.mktemp("layouts")
    for layout in sorted({case[1] for case in host_memory.CASES.values()}):
        parts = sorted({case[0] for case in host_memory.CASES.values() if case[1] == layout})
        random_weights.write_layout(out, layout, parts, reduced=True)
    return out


@pytest.mark.parametrize("case", host_memory.CASES)
def test_loading_peaks_at_most_1_2x_the_loaded_weight_bytes(layouts, case):
    report = host_memory.measure(layouts, case, timeout=600)
    print(case, report)
    assert report["loaded_bytes"] > 60 * 2**20  # weights dominate the process, so the ratio measures the loader
    assert report["ratio"] <= host_memory.PEAK_RATIO, report
