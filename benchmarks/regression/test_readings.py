"""The re-measurement rule of the ratio checks: a low reading is measured again, a lasting
regression still fails."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _ratios import RETRIES, readings  # noqa: E402


def test_a_reading_above_the_floor_is_not_remeasured():
    assert readings(2.0, 1.5, lambda: 1 / 0) == [2.0]


def test_a_low_reading_is_remeasured_until_one_reaches_the_floor():
    later = iter([1.2, 1.8, 9.9])
    assert readings(1.0, 1.5, lambda: next(later)) == [1.0, 1.2, 1.8]


def test_a_lasting_regression_fails_every_try():
    tries = readings(0.4, 1.5, lambda: 0.4)
    assert tries == [0.4] * (RETRIES + 1) and max(tries) < 1.5


def test_no_floor_or_no_remeasure_means_one_reading():
    assert readings(0.1, None, lambda: 5.0) == [0.1]
    assert readings(0.1, 1.5, None) == [0.1]
