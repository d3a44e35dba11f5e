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
codes starts from these codes and scales and keeps the scales. Any group size; asymmetric groups take
:func:`imatrix_codes_asym` (integer zero points).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from cat_core.awq import _pipeline, _stage_clip, _stage_round, _stage_stats  # noqa: E402
from cat_core.quant import QuantizedTensor  # noqa: E402

KEEP_CLIP = os.environ.get("IMATRIX_CLIP", "0") == "1"
WEIGHTING = os.environ.get("IMATRIX_WEIGHT", "llama")
assert WEIGHTING in ("llama", "diag"), WEIGHTING


def _importance(x: torch.Tensor, imatrix: torch.Tensor) -> torch.Tensor:
    n, ng, g = x.shape
    imp = imatrix.float().reshape(1, ng, g)
    if WEIGHTING == "llama":
        sigma2 = (x * x).sum(dim=(1, 2), keepdim=True) / (ng * g)
        return imp * torch.sqrt(sigma2 + x * x)
    return imp.expand_as(x)


def imatrix_codes(w: torch.Tensor, imatrix: torch.Tensor, bits: int, group_size: int,
                  scale_dtype: torch.dtype) -> QuantizedTensor:
    """``make_qx_quants(g, half, x, L, 1, weight)`` for every group of ``w`` [N, K] at once."""
    n, k = w.shape
    g, half = group_size, 2 ** (bits - 1)
    x = w.float().reshape(n, k // g, g)
    imp = _importance(x, imatrix)
    idx = x.abs().argmax(dim=-1, keepdim=True)
    mx = torch.gather(x, -1, idx)  # signed: the largest magnitude goes to code -half
    zero = mx.abs() < 1e-15
    mx = torch.where(zero, torch.ones_like(mx), mx)
    best_l = best_s = best = None
    for i in [0, *range(-9, 0), *range(1, 10)]:  # llama.cpp's order: the first of equals wins
        iscale = -(half + 0.1 * i) / mx
        l = torch.round(iscale * x).clamp_(-half, half - 1)
        sumlx = (imp * x * l).sum(-1, keepdim=True)
        suml2 = (imp * l * l).sum(-1, keepdim=True)
        ok = suml2 > 0
        score = torch.where(ok, sumlx * sumlx / suml2.clamp_min(1e-30), torch.full_like(sumlx, -1.0))
        s = torch.where(ok, sumlx / suml2.clamp_min(1e-30), 1 / iscale)
        if best is None:
            best, best_l, best_s = score, l, s
            continue
        take = score > best
        best = torch.where(take, score, best)
        best_s = torch.where(take, s, best_s)
        best_l = torch.where(take, l, best_l)
    best_s = torch.where(zero, torch.zeros_like(best_s), best_s)
    best_l = torch.where(zero, torch.zeros_like(best_l), best_l)
    return QuantizedTensor(codes=(best_l + half).reshape(n, k).to(torch.uint8),
                           scales=best_s.reshape(n, k // g).to(scale_dtype), zeros=None, bits=bits,
                           group_size=group_size)


def imatrix_codes_asym(w: torch.Tensor, imatrix: torch.Tensor, bits: int, group_size: int,
                       scale_dtype: torch.dtype) -> QuantizedTensor:
    """The asymmetric analogue with an integer zero point (Caterpillar's format; llama.cpp's Q4_1
    stores a float offset instead, ``make_qkx3_quants``): trial steps ``(max - min) / (qmax + r)``
    for ``r`` in -0.9..0.9 by 0.05 (llama.cpp's Q4_1 range), each with ``z = round(-min / step)``
    and codes ``clamp(round(x / step) + z)``, the scale refit by weighted least squares given the
    codes and ``z``; the trial with the smallest weighted error wins."""
    n, k = w.shape
    g, qmax = group_size, 2 ** bits - 1
    x = w.float().reshape(n, k // g, g)
    imp = _importance(x, imatrix)
    mn, mx = torch.aminmax(x, dim=-1, keepdim=True)
    span = (mx - mn).clamp_min(1e-12)
    best = best_q = best_z = best_s = None
    for i in [None, *range(37)]:  # None: plain min/max rounding first (llama.cpp's start)
        r = 0.0 if i is None else -0.9 + 0.05 * i
        step = span / (qmax + r)
        z = torch.round(-mn / step).clamp_(0, qmax)
        q = torch.minimum(torch.maximum(torch.round(x / step) + z, torch.zeros_like(x)), torch.full_like(x, qmax))
        a = q - z
        if i is None:
            s = step
        else:
            suml2 = (imp * a * a).sum(-1, keepdim=True)
            s = torch.where(suml2 > 0, (imp * x * a).sum(-1, keepdim=True) / suml2.clamp_min(1e-30), step)
        s = s.to(scale_dtype).float()
        err = (imp * (x - s * a) ** 2).sum(-1, keepdim=True)
        if best is None:
            best, best_q, best_z, best_s = err, q, z, s
            continue
        take = err < best
        best = torch.where(take, err, best)
        best_q, best_z, best_s = (torch.where(take, q, best_q), torch.where(take, z, best_z),
                                  torch.where(take, s, best_s))
    return QuantizedTensor(codes=best_q.reshape(n, k).to(torch.uint8), scales=best_s.reshape(n, k // g).to(scale_dtype),
                           zeros=best_z.reshape(n, k // g).to(torch.uint8), bits=bits, group_size=group_size)


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
    port = imatrix_codes if cfg.sym else imatrix_codes_asym
    qt = port(w.detach(), imatrix, cfg.bits, cfg.group_size, cfg.scale_torch_dtype)
    if _stage_round._collecting(work):
        work.starts.append(_stage_round._start(rel, name, mod, w.float().clone(), qt, w, cfg))
    return qt


_stage_round._Nearest._codes = codes

if __name__ == "__main__":
    import awq_quality

    awq_quality.main()
