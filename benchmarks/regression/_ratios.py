"""Side-by-side timing: the one measurement primitive of the regression checks."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any


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
