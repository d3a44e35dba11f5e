"""Issue #26 diagnostic: calibrate on the text's first consecutive windows, as ``llama-imatrix``
reads its chunks, instead of windows sampled from the whole text.

    python benchmarks/probes/first_windows.py <awq_quality.py arguments>

``cat_core.calib`` cuts the text into non-overlapping windows of ``seqlen`` tokens and picks
``n_samples`` of them at random (seeded). Here the first ``n_samples`` windows are taken instead
(the same cut), so the statistics see the tokens llama.cpp's importance matrix saw in
``benchmarks/llamacpp_quality.py`` (up to llama.cpp's own tokenization of the raw file).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from cat_core import calib  # noqa: E402

_randperm = torch.randperm


def _first(n, *args, generator=None, **kw):
    return torch.arange(n)


def _windows(docs, label, tokenizer, cfg):
    torch.randperm = _first  # _windows' only use of it is the pick
    try:
        return _orig(docs, label, tokenizer, cfg)
    finally:
        torch.randperm = _randperm


_orig = calib._windows
calib._windows = _windows

if __name__ == "__main__":
    import awq_quality

    awq_quality.main()
