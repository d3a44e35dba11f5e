"""Collects gemm-vs-dense timings from test_bench_gemm.py and prints the speed-up table at
the end of the session (also saved as JSON next to pytest-benchmark's own output)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

_RESULTS: dict[tuple, dict[str, float]] = {}


@pytest.fixture(scope="session")
def bench_results():
    return _RESULTS


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not _RESULTS:
        return
    tr = terminalreporter
    try:
        import cat_kernels as ck

        info = ck.build_info()
    except Exception as e:  # pragma: no cover - the benchmarks would have failed already
        info = {"error": str(e)}
    tr.section("cat-kernels gemm vs dense float32 matmul (median times)")
    tr.write_line(f"build: {info}")
    tr.write_line(f"{'N x K':>12} {'bits':>4} {'M':>3} {'cat-kernels ms':>15} {'dense ms':>9} {'speed-up':>8}")
    rows = []
    for (n, k, bits, m), r in sorted(_RESULTS.items()):
        if "ck" not in r or "dense" not in r:
            continue
        ratio = r["dense"] / r["ck"]
        rows.append({"n": n, "k": k, "bits": bits, "m": m, "ck_s": r["ck"], "dense_s": r["dense"],
                     "dense_impl": r.get("dense_impl", "?"), "speedup": ratio})
        tr.write_line(f"{n:>5} x {k:<5} {bits:>4} {m:>3} {r['ck'] * 1e3:>15.3f} {r['dense'] * 1e3:>9.3f} {ratio:>7.2f}x")
    out = Path(os.environ.get("CAT_KERNELS_BENCH_JSON", Path(__file__).parent / ".results" / "gemm_speedup.json"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"build": info, "results": rows}, indent=2))
    tr.write_line(f"saved {out}")
