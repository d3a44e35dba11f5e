"""Side-by-side timing, the one measurement primitive of the regression checks, and the rule
for re-measuring a ratio that reads below its floor."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

RETRIES = 2  # re-measurements of a ratio below its floor before the check fails


def interleaved(benchmark: Any, subject: Callable[[], Any], baseline: Callable[[], Any],
                rounds: int, warmup: int = 1) -> float:
    """Times ``subject`` with pytest-benchmark and ``baseline`` in the setup of the same rounds;
    returns median(baseline) / median(subject): above 1 when the subject is faster."""
    base: list[float] = []

    def setup() -> None:
        t = time.perf_counter()
        baseline()
        base.append(time.perf_counter() - t)

    benchmark.pedantic(subject, setup=setup, rounds=rounds, warmup_rounds=warmup)
    b = statistics.median(base[-rounds:])
    s = benchmark.stats.stats.median
    benchmark.extra_info.update(baseline_median_s=b, ratio=b / s)
    return b / s


def paired(subject: Callable[[], Any], baseline: Callable[[], Any], rounds: int, warmup: int = 1) -> float:
    """The measurement of :func:`interleaved` without pytest-benchmark, which times one call
    per test: for re-measuring a ratio that fell below its floor."""
    for _ in range(warmup):
        baseline()
        subject()
    base: list[float] = []
    subj: list[float] = []
    for _ in range(rounds):
        t = time.perf_counter()
        baseline()
        base.append(time.perf_counter() - t)
        t = time.perf_counter()
        subject()
        subj.append(time.perf_counter() - t)
    return statistics.median(base) / statistics.median(subj)


def readings(ratio: float, floor: float | None, remeasure: Callable[[], float] | None,
             retries: int = RETRIES) -> list[float]:
    """``ratio``, then up to ``retries`` fresh ones from ``remeasure`` while all are below
    ``floor``: the check passes if any reaches it."""
    tries = [ratio]
    while floor is not None and remeasure is not None and max(tries) < floor and len(tries) <= retries:
        tries.append(remeasure())
    return tries
