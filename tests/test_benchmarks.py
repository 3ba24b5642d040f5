"""The conditioning benchmark runs end to end on a small setting and reports what issue 3 asks for."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_conditioning_benchmark_quick_run(tmp_path):
    out = tmp_path / "conditioning.json"
    modes = ["text_only_3pass", "full_1ref", "cached_1ref", "full_3refs", "cached_3refs", "compact_0_5_3refs"]
    subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "conditioning.py"), "--quick", "--no-memory", "--json", str(out),
         "--modes", *modes],
        check=True, capture_output=True, text=True, timeout=600,
    )
    result = json.loads(out.read_text())
    assert result["max_abs_diff_n1"] == 0.0  # n = 1 is the uncached run, bit for bit
    for key in ("conditional_overhead_reduction", "speedup_1_ref", "speedup_3_refs", "speedup_compact_0_5"):
        assert result[key] > 0, key
    tokens = result["token_counts"]
    assert tokens["full_3refs"]["reference"] == 4 * tokens["compact_0_5_3refs"]["reference"] == 3 * 256
    # compute-once: the condition branch ran once, every later forward reused its features
    assert result["reuse_counts"]["cached_3refs"]["reference_tokens_computed"] == 3 * 256
