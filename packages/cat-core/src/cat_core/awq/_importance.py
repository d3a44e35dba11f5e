"""Importance-weighted rounding of one linear: each group's scale (and zero point) chosen among
trial grids by the weighted error of its own weights, then refit by weighted least squares.

This is the per-group search of llama.cpp's quantizer with an importance matrix
(``make_qx_quants`` for symmetric groups), re-derived for Caterpillar's stored format. The
importance of weight ``w[r, j]`` is ``m[j] * sqrt(sigma2[r] + w[r, j]^2)``: ``m[j]`` the mean
square of input column ``j`` on the calibration tokens (the diagonal of the input Gram), and
``sigma2[r]`` the mean square weight of row ``r``, so large weights count more than their share of
the activation statistics alone would give them. Each trial maps the group onto the integer grid,
rounds to nearest, and refits the scale given those codes (``s = sum(v w a) / sum(v a^2)`` for
importances ``v`` and centred codes ``a``); the trial with the smallest weighted squared error
wins. Only the group's own weights are involved, which is why it holds up on text unlike the
calibration's (benchmarks/results/imatrix_round_2026-12-07).

- Symmetric (zero point ``2**(bits-1)``, codes ``half + l`` with ``l`` in ``[-half, half-1]``):
  trials map the group's largest-magnitude weight, with its sign, to ``-(half + 0.1 i)`` for
  ``i`` in -9..9, so all ``2**bits`` levels are used and the scale may be negative (the kernels
  compute ``(q - z) * s`` whatever its sign).
- Asymmetric (integer zero point): trial steps ``(max - min) / (qmax + r)`` for ``r`` in
  -0.9..0.9 by 0.05 and the plain min/max grid, each with ``z = round(-min / step)``.
"""

from __future__ import annotations

import torch

from cat_core.quant import _MIN_SCALE, QuantizedTensor

__all__ = ["importance_round"]

# Rows per chunk are chosen so one chunk's [rows, K] float32 temporaries stay this small: the
# search holds about ten of them, and an 8B model's MLP weight is 58M values.
_CHUNK_ELEMENTS = 1 << 21
_SYM_TRIALS = (0, *range(-9, 0), *range(1, 10))  # llama.cpp's order: the first of equals wins
_ASYM_TRIALS = (None, *(-0.9 + 0.05 * i for i in range(37)))  # None: the plain min/max grid first


def importance_round(w: torch.Tensor, column_ms: torch.Tensor, bits: int, group_size: int, sym: bool,
                     scale_dtype: torch.dtype) -> QuantizedTensor:
    """Codes, scales and zeros of ``w`` ``[N, K]`` given ``column_ms`` ``[K]``, the mean square of
    each input column on the calibration tokens."""
    n, k = w.shape
    g = k if group_size == -1 else group_size
    rows = max(1, min(n, _CHUNK_ELEMENTS // k))
    codes, scales, zeros = [], [], []
    m = column_ms.to(device=w.device, dtype=torch.float32).reshape(1, k // g, g)
    for r0 in range(0, n, rows):
        x = w[r0:r0 + rows].float().reshape(-1, k // g, g)
        v = _importance(x, m)
        if sym:
            q, s = _symmetric(x, v, bits, scale_dtype)
        else:
            q, z, s = _asymmetric(x, v, bits, scale_dtype)
            zeros.append(z.squeeze(-1).to(torch.uint8))
        codes.append(q.reshape(-1, k).to(torch.uint8))
        scales.append(s.squeeze(-1).to(scale_dtype))
    return QuantizedTensor(codes=torch.cat(codes), scales=torch.cat(scales),
                           zeros=None if sym else torch.cat(zeros), bits=bits, group_size=group_size)


def _importance(x: torch.Tensor, column_ms: torch.Tensor) -> torch.Tensor:
    sigma2 = (x * x).mean(dim=(1, 2), keepdim=True)
    return column_ms * torch.sqrt(sigma2 + x * x)


def _symmetric(x: torch.Tensor, v: torch.Tensor, bits: int, scale_dtype: torch.dtype):
    half = 2 ** (bits - 1)
    peak = torch.gather(x, -1, x.abs().argmax(dim=-1, keepdim=True))  # signed
    flat = peak.abs() < _MIN_SCALE  # nothing to scale: codes at the zero point
    peak = torch.where(flat, torch.ones_like(peak), peak)
    best = best_l = best_s = None
    for i in _SYM_TRIALS:
        inv = -(half + 0.1 * i) / peak
        l = torch.round(x * inv).clamp_(-half, half - 1)
        sum_lx = (v * x * l).sum(-1, keepdim=True)
        sum_l2 = (v * l * l).sum(-1, keepdim=True)
        fit = sum_l2 > 0
        # sum_lx^2 / sum_l2 is what the refit scale removes from the weighted error: larger is better
        score = torch.where(fit, sum_lx * sum_lx / sum_l2.clamp_min(1e-30), torch.full_like(sum_lx, -1.0))
        s = torch.where(fit, sum_lx / sum_l2.clamp_min(1e-30), 1 / inv)
        if best is None:
            best, best_l, best_s = score, l, s
            continue
        take = score > best
        best = torch.where(take, score, best)
        best_l = torch.where(take, l, best_l)
        best_s = torch.where(take, s, best_s)
    best_l = torch.where(flat, torch.zeros_like(best_l), best_l)
    best_s = _storable(torch.where(flat, torch.full_like(best_s, _MIN_SCALE), best_s), scale_dtype)
    return best_l + half, best_s


def _asymmetric(x: torch.Tensor, v: torch.Tensor, bits: int, scale_dtype: torch.dtype):
    qmax = 2 ** bits - 1
    lo, hi = torch.aminmax(x, dim=-1, keepdim=True)
    span = hi - lo
    best = best_q = best_z = best_s = None
    for r in _ASYM_TRIALS:
        # the first trial is round-to-nearest's grid exactly (its step as stored), so no group
        # ends with a larger weighted error than plain rounding gives it
        step = _storable(span / qmax, scale_dtype) if r is None else span.clamp_min(_MIN_SCALE) / (qmax + r)
        z = torch.round(-lo / step).clamp_(0, qmax)
        q = torch.round(x / step).add_(z).clamp_(0, qmax)
        a = q - z
        if r is None:
            s = step
        else:
            sum_l2 = (v * a * a).sum(-1, keepdim=True)
            s = torch.where(sum_l2 > 0, (v * x * a).sum(-1, keepdim=True) / sum_l2.clamp_min(1e-30), step)
            s = _storable(s, scale_dtype)
        err = (v * (x - s * a) ** 2).sum(-1, keepdim=True)
        if best is None:
            best, best_q, best_z, best_s = err, q, z, s
            continue
        take = err < best
        best = torch.where(take, err, best)
        best_q = torch.where(take, q, best_q)
        best_z = torch.where(take, z, best_z)
        best_s = torch.where(take, s, best_s)
    return best_q, best_z, best_s


def _storable(s: torch.Tensor, scale_dtype: torch.dtype) -> torch.Tensor:
    """``s`` as the stored dtype gives it back, its magnitude at least ``_MIN_SCALE``."""
    s = torch.where(s.abs() < _MIN_SCALE, torch.where(s < 0, -_MIN_SCALE, _MIN_SCALE), s)
    return s.to(scale_dtype).float()
