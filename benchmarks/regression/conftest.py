"""Speed regression checks for CI, as ratios against a baseline measured in the same run.

Absolute times differ between machines and between runs of one shared machine; a ratio of two
timings taken side by side, round by round (the baseline runs in pytest-benchmark's untimed
``setup`` of every round, so both see the same machine state), is far steadier. Each ratio is
compared with the committed ``reference.json``: a test fails when its ratio falls more than
``margin`` (a fraction) below the reference in each of ``1 + _ratios.RETRIES`` measurements: a
low reading is re-measured, a lost fast path (several times slower) fails every try.

libgomp's spin: after each multi-threaded torch op, torch's OpenMP workers spin before they sleep
(GOMP_SPINCOUNT, 300000 pauses by default: milliseconds on this CPU). A kernel timed right after
torch's matmul then shares the second core with that spin and often runs at one thread's speed.
On the quiet 2-core VM (2026-11-27, benchmarks/probes/omp_spin.sh, output in
benchmarks/results/omp_spin_2026-11-27.txt) the 4096x11008 4-bit M=1 kernel took ~2 ms in one
process of six and ~3.5 ms in the other five at the default, and 1.8 ms in all six with
GOMP_SPINCOUNT=10000; CI ratios of 4096x11008 3-bit M=1 read 2.56, 3.32, 3.26, 1.73 and 1.72
(three times in one process) against a reference of 3.50. These checks therefore run with
GOMP_SPINCOUNT=10000 unless it is set: the kernel gets both cores, as the reference assumed. In
a whole model it made no consistent difference (SmolLM2 4-bit decode 34-40 tok/s either way,
over several runs), so the product leaves the setting to the user.

    pytest benchmarks/regression                      # check (what CI runs)
    pytest benchmarks/regression --update-reference   # re-measure and rewrite reference.json

Re-measure the reference on a quiet machine of the CI kind, after a change that is meant to move
a ratio, and commit it with the change.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

# before torch is imported: libgomp reads it once, when it is loaded
os.environ.setdefault("GOMP_SPINCOUNT", "10000")
_SPIN = os.environ["GOMP_SPINCOUNT"] if "torch" not in sys.modules else "torch imported first: libgomp default"

import pytest  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from _ratios import readings  # noqa: E402

REFERENCE = Path(__file__).with_name("reference.json")
DEFAULT_MARGIN = 0.5  # a shared 2-core machine swings single ratios by +-30%; halving is a real regression

_MEASURED: dict[str, dict[str, Any]] = {}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--update-reference", action="store_true",
                     help="write the measured ratios to benchmarks/regression/reference.json")


def _reference() -> dict[str, Any]:
    if not REFERENCE.exists():
        return {"margin": DEFAULT_MARGIN, "ratios": {}}
    return json.loads(REFERENCE.read_text())


@pytest.fixture(scope="session")
def check_ratio(request: pytest.FixtureRequest) -> Callable[..., None]:
    ref = _reference()
    update = request.config.getoption("--update-reference")

    def check(name: str, ratio: float, remeasure: Callable[[], float] | None = None) -> None:
        """``remeasure()`` gives a fresh ratio of the same pair; it is called (up to RETRIES
        times) only while every reading so far is below the floor."""
        margin = float(ref.get("margin", DEFAULT_MARGIN))
        want = ref.get("ratios", {}).get(name)
        floor = None if want is None else want * (1 - margin)
        tries = [ratio] if update else readings(ratio, floor, remeasure)
        row = {"ratio": max(tries), "tries": tries, "reference": want, "floor": floor}
        _MEASURED[name] = row
        if update:
            return
        if want is None:
            pytest.fail(f"{name}: no committed reference ratio in {REFERENCE.name}; measure one with "
                        f"`pytest benchmarks/regression --update-reference` on a quiet machine")
        assert max(tries) >= floor, (
            f"{name}: speed ratio {', '.join(f'{t:.2f}' for t in tries)} in {len(tries)} measurements, each more "
            f"than {margin:.0%} below the committed reference {want:.2f} (floor {floor:.2f})")

    return check


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not session.config.getoption("--update-reference") or not _MEASURED:
        return
    ref = _reference()
    ref.setdefault("margin", DEFAULT_MARGIN)
    ref.setdefault("ratios", {}).update({k: round(v["ratio"], 3) for k, v in _MEASURED.items()})
    ref["measured"] = {"date": dt.date.today().isoformat(), "machine": platform.processor() or platform.machine(),
                       "cpus": os.cpu_count(), "loadavg": [round(x, 2) for x in os.getloadavg()],
                       "GOMP_SPINCOUNT": _SPIN}
    REFERENCE.write_text(json.dumps(ref, indent=1, sort_keys=True) + "\n")


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    if not _MEASURED:
        return
    tr = terminalreporter
    tr.section(f"speed ratios (baseline time / subject time, same run; GOMP_SPINCOUNT {_SPIN})")
    tr.write_line(f"{'check':<44} {'ratio':>7} {'reference':>9} {'floor':>7}  re-measured")
    for name, r in sorted(_MEASURED.items()):
        ref = "-" if r["reference"] is None else f"{r['reference']:.2f}"
        floor = "-" if r["floor"] is None else f"{r['floor']:.2f}"
        again = "" if len(r["tries"]) == 1 else "  after " + ", ".join(f"{t:.2f}" for t in r["tries"][:-1])
        tr.write_line(f"{name:<44} {r['ratio']:>7.2f} {ref:>9} {floor:>7}{again}")
