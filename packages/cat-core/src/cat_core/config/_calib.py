"""Where calibration text comes from and how much of it."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

__all__ = ["CalibConfig"]


@dataclasses.dataclass(frozen=True)
class CalibConfig:
    """Where calibration text comes from and how much of it.

    ``source`` is one of: a ``datasets`` hub name (needs the network or a warm cache), a local
    file or folder (.txt, .json, .jsonl, .csv, .parquet), a list of strings, a
    ``datasets.Dataset``, or ``"self"`` (text sampled from the model with ``seed``).
    """

    source: Any = "self"
    n_samples: int = 128
    seqlen: int = 512
    text_column: str = "text"
    #: hub datasets only.
    subset: str | None = None
    split: str = "train"
    seed: int = 0

    def __post_init__(self) -> None:
        src = self.source
        if isinstance(src, Path):
            object.__setattr__(self, "source", str(src))
        elif isinstance(src, str):
            if not src:
                raise ValueError("source must be a dataset name, a path, a list of strings or 'self', got ''")
        elif isinstance(src, (list, tuple)):
            if not src:
                raise ValueError("source is an empty list: give at least one document")
            bad = [type(t).__name__ for t in src if not isinstance(t, str)]
            if bad:
                raise ValueError(f"source as a list must hold strings only, found {sorted(set(bad))}")
            object.__setattr__(self, "source", tuple(src))
        for name in ("n_samples", "seqlen"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        if not isinstance(self.text_column, str) or not self.text_column:
            raise ValueError(f"text_column must be a non-empty column name, got {self.text_column!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ValueError(f"seed must be an int, got {self.seed!r}")
