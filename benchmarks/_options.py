"""The command-line options the AWQ benchmarks share (awq_quality.py, awq_speed.py): one spelling,
default and meaning for the model, the AWQ run, the machine and where inputs and results live."""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path

import _models as M


def add_awq_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", choices=sorted(M.MODELS), default="smollm2")
    p.add_argument("--n-samples", type=int, default=128)
    p.add_argument("--seqlen", type=int, default=512)
    p.add_argument("--group-size", type=int, default=None, help="default: 64 SmolLM2, 128 Gemma-3")
    p.add_argument("--quant-overrides", default=None, help='JSON of QuantConfig fields, e.g. \'{"n_grid": 10}\'')
    p.add_argument("--blocks", type=int, default=0, help="truncate to the first N blocks (quick checks)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--data-dir", type=Path, default=M.DEFAULT_DATA_DIR)
    p.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent / "results")
    p.add_argument("--date", default=dt.date.today().isoformat())
