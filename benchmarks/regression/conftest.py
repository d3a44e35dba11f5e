"""Speed regression checks for CI, as ratios against a baseline measured in the same run.

Absolute times differ between machines and between runs of one shared machine; a ratio of two
timings taken side by side, round by round (the baseline runs in pytest-benchmark's untimed
``setup`` of every round, so both see the same machine state), is far steadier. Each ratio is
compared with the committed ``reference.json``: a test fails when its ratio falls more than
``margin`` (a fraction) below the reference.

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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

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
def check_ratio(request: pytest.FixtureRequest) -> Callable[[str, float], None]:
    ref = _reference()
    update = request.config.getoption("--update-reference")

    def check(name: str, ratio: float) -> None:
        margin = float(ref.get("margin", DEFAULT_MARGIN))
        want = ref.get("ratios", {}).get(name)
        row = {"ratio": ratio, "reference": want, "floor": None if want is None else want * (1 - margin)}
        _MEASURED[name] = row
        if update:
            return
        if want is None:
            pytest.fail(f"{name}: no committed reference ratio in {REFERENCE.name}; measure one with "
                        f"`pytest benchmarks/regression --update-reference` on a quiet machine")
        assert ratio >= row["floor"], (
            f"{name}: speed ratio {ratio:.2f} is more than {margin:.0%} below the committed reference "
            f"{want:.2f} (floor {row['floor']:.2f})")

    return check


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not session.config.getoption("--update-reference") or not _MEASURED:
        return
    ref = _reference()
    ref.setdefault("margin", DEFAULT_MARGIN)
    ref.setdefault("ratios", {}).update({k: round(v["ratio"], 3) for k, v in _MEASURED.items()})
    ref["measured"] = {"date": dt.date.today().isoformat(), "machine": platform.processor() or platform.machine(),
                       "cpus": os.cpu_count(), "loadavg": [round(x, 2) for x in os.getloadavg()]}
    REFERENCE.write_text(json.dumps(ref, indent=1, sort_keys=True) + "\n")


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    if not _MEASURED:
        return
    tr = terminalreporter
    tr.section("speed ratios (baseline time / subject time, same run)")
    tr.write_line(f"{'check':<44} {'ratio':>7} {'reference':>9} {'floor':>7}")
    for name, r in sorted(_MEASURED.items()):
        ref = "-" if r["reference"] is None else f"{r['reference']:.2f}"
        floor = "-" if r["floor"] is None else f"{r['floor']:.2f}"
        tr.write_line(f"{name:<44} {r['ratio']:>7.2f} {ref:>9} {floor:>7}")
