"""Issue #26 ablation: llama.cpp's importance-matrix rounding inside Caterpillar's pipeline.

    IMATRIX_CLIP=0|1 IMATRIX_WEIGHT=llama|diag python benchmarks/probes/imatrix_round.py <awq_quality.py arguments>

llama.cpp's Q4_0 with an imatrix (``quantize_row_q4_0_impl`` and ``make_qx_quants`` in the
vendored ggml-quants.c) rounds each block of 32 on its own: per weight an importance
``imatrix[j] * sqrt(sigma2 + w[j]^2)`` (``imatrix[j]``: the mean square of input column ``j`` on
the calibration text; ``sigma2``: the row's mean square weight), then 19 trial scales
``-(8 + 0.1 i) / max`` (``max``: the block's largest-magnitude weight, signed, so it lands on
code -8), each rounded and refit by weighted least squares ``s = sum(w x l) / sum(w l^2)``; the
trial with the smallest weighted error wins, with its refit scale (which may be negative).

Here that rounding replaces round-to-nearest for every linear with calibration inputs, on the
symmetric 16-level grid (Caterpillar's stored format, zero point 8: exactly Q4_0's values). The
importance comes from the diagonal of each linear's per-group input Gram (the clip stage's
capture, taken for every linear here, q/k included). ``IMATRIX_CLIP=1`` keeps the clip search and
rounds the clipped weight; ``0`` (default) skips the clip as llama.cpp does. ``IMATRIX_WEIGHT=diag``
drops the ``sqrt(sigma2 + w^2)`` factor. AWQ's scale search is left to the given overrides
(``"n_grid": 1`` tries only identity scales, i.e. no AWQ scaling). Learned rounding from nearest
codes starts from these codes and scales and keeps the scales. Any group size and either symmetry.

The rounding itself is now the product's (``cat_core.awq._importance``, ``rounding="importance"``).
The session-20 rows in benchmarks/results/imatrix_round_2026-12-07 ran this probe's own copy
(commit 49508f1): the same for symmetric groups (row P1, the product, gave E3's numbers exactly);
for asymmetric ones (D1, D2) that copy's first trial used the unrounded min/max step for its codes
and zero point, where the product uses the step as stored.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import cat_core.awq._importance as _importance_mod  # noqa: E402
from cat_core.awq import _pipeline, _stage_clip, _stage_round, _stage_stats  # noqa: E402
from cat_core.awq._importance import importance_round  # noqa: E402
from cat_core.quant import QuantizedTensor  # noqa: E402

KEEP_CLIP = os.environ.get("IMATRIX_CLIP", "0") == "1"
WEIGHTING = os.environ.get("IMATRIX_WEIGHT", "llama")
assert WEIGHTING in ("llama", "diag"), WEIGHTING


def imatrix_codes(w: torch.Tensor, imatrix: torch.Tensor, bits: int, group_size: int,
                  scale_dtype: torch.dtype, sym: bool = True) -> QuantizedTensor:
    """The rounding, as the product implements it (``cat_core.awq._importance``); with
    ``IMATRIX_WEIGHT=diag`` the ``sqrt(sigma2 + w^2)`` factor is dropped."""
    if WEIGHTING == "diag":
        with _diag_only():
            return importance_round(w, imatrix, bits, group_size, sym, scale_dtype)
    return importance_round(w, imatrix, bits, group_size, sym, scale_dtype)


class _diag_only:
    def __enter__(self):
        self._saved = _importance_mod._importance
        _importance_mod._importance = lambda x, column_ms: column_ms.expand_as(x)

    def __exit__(self, *exc):
        _importance_mod._importance = self._saved


_clipped = _stage_stats.clipped


def every_linear(full, config):  # every linear's per-group Gram is captured
    return True


_stage_stats.clipped = every_linear
_stage_clip.clipped = every_linear


def search_clips(work, part):
    part.imatrix = {rel: torch.diagonal(h, dim1=-2, dim2=-1).reshape(-1) for rel, h in part.grams.items()}
    if KEEP_CLIP:
        names = {rel: name for rel, name, _ in part.linears}
        part.grams = {rel: h for rel, h in part.grams.items() if _clipped(names[rel], work.config)}
        return _search_clips(work, part)
    part.grams.clear()
    return {}


_search_clips = _pipeline.search_clips
_pipeline.search_clips = search_clips
_codes = _stage_round._Nearest._codes


def codes(self, work, rel, name, mod, w, part, clips):
    imatrix = getattr(part, "imatrix", {}).pop(rel, None)
    cfg = work.config
    if imatrix is None or self.wants_full_grams or cfg.group_size == -1:
        return _codes(self, work, rel, name, mod, w, part, clips)
    qt = imatrix_codes(w.detach(), imatrix, cfg.bits, cfg.group_size, cfg.scale_torch_dtype, cfg.sym)
    if _stage_round._collecting(work):
        work.starts.append(_stage_round._start(rel, name, mod, w.float().clone(), qt, w, cfg))
    return qt


_stage_round._Nearest._codes = codes

if __name__ == "__main__":
    import awq_quality

    awq_quality.main()
