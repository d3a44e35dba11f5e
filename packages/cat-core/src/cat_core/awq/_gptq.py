"""GPTQ error-feedback rounding (Frantar et al. 2022) on AWQ's fixed groups.

The groups' scales and zero points are those of plain round-to-nearest on the (folded, clipped)
weight -- the clip search already chose every group's range -- and only the integer codes change:
columns are rounded in order, and each column's rounding error, weighted by the inverse input
Gram, is pushed onto the columns not yet rounded, so that the errors of correlated inputs cancel in
the output ``x . w`` instead of adding up.

With ``U`` the upper Cholesky factor of ``(H + damp I)^-1``, column ``i``'s error
``(w_i - dequant(q_i)) / U[i, i]`` moves every later column ``j`` by ``-err * U[i, j]``. A
diagonal ``H`` has a diagonal ``U``: nothing moves and the codes are round-to-nearest's.
"""

from __future__ import annotations

import torch

from cat_core.awq._errors import AWQError
from cat_core.config import GPTQ, Learned, QuantConfig
from cat_core.quant import QuantizedTensor, check_group_size, quantize_tensor

__all__ = ["gptq_quantize"]

# Failed factorizations are retried with 10x the dampening, this many times.
_RETRIES = 4


def _inverse_factor(gram: torch.Tensor, damp: float, name: str) -> torch.Tensor:
    """Upper Cholesky factor of ``(H + d I)^-1``, float32, with ``d = damp * mean(diag H)``.

    Inputs that are always zero (``H[i, i] == 0``) are decoupled: ``H[i, i] = 1`` and ``U``'s row
    and column ``i`` hold only the diagonal, so such a column neither receives nor passes errors.
    """
    diag = gram.diagonal().float()
    dead = diag <= 0
    mean = float(diag.mean())
    if not mean > 0:  # every input is zero: any positive scale will do
        mean = 1.0
    any_dead = bool(dead.any())
    for attempt in range(_RETRIES + 1):
        h = gram.to(torch.float32, copy=True)
        if any_dead:
            h[dead, :] = 0.0
            h[:, dead] = 0.0
            h.diagonal()[dead] = 1.0
        h.diagonal().add_(damp * 10.0**attempt * mean)
        lower, info = torch.linalg.cholesky_ex(h)
        del h
        if int(info) != 0:
            continue
        hinv = torch.cholesky_inverse(lower)
        del lower
        upper, info = torch.linalg.cholesky_ex(hinv, upper=True)
        del hinv
        if int(info) != 0 or not bool(torch.isfinite(upper).all()):
            continue
        if any_dead:
            upper[dead, :] = 0.0
            upper[:, dead] = 0.0
            upper.diagonal()[dead] = 1.0
        return upper
    raise AWQError(
        f"GPTQ: the input Gram of {name or 'a linear'} is not positive definite even with "
        f"dampening {damp * 10.0**_RETRIES:g} x its mean diagonal (Cholesky failed "
        f"{_RETRIES + 1} times)"
    )


@torch.no_grad()
def gptq_quantize(
    weight: torch.Tensor, gram: torch.Tensor, config: QuantConfig, *, name: str = "",
    target: torch.Tensor | None = None, return_corrected: bool = False, settings: GPTQ | None = None,
) -> QuantizedTensor | tuple[QuantizedTensor, torch.Tensor]:
    """Quantize a ``[N, K]`` weight with GPTQ error feedback over the input Gram ``[K, K]``.

    ``gram``: ``mean_t x_t x_t^T`` of the linear's inputs in the same (folded) space as ``weight``.
    The scales and zeros are exactly ``quantize_tensor(weight, config)``'s; the codes follow the
    same rounding convention (``clamp(round(w / s) + z, 0, qmax)``, which for symmetric groups is
    ``clamp(round(w / s), -half, half - 1) + half``), applied to the error-corrected columns.

    ``target``: the weight whose outputs the codes should reproduce, when it is not ``weight``
    itself; the runner passes the weight before the clip (``weight`` being the clipped one, which
    only sets the grid), so that the clipping error is fed back like the rounding error -- GPTQ
    on the clipped weight would take the clipped values as exact. Works on ``weight``'s device in
    float32; deterministic.

    ``return_corrected``: also return the error-corrected weight ``[N, K]`` float32, each column
    as it was just before it was rounded (the codes are its round-to-nearest on the grid); learned
    rounding starts from it.

    ``settings``: dampening and lazy-block width (default: ``config``'s GPTQ rounding, or the GPTQ
    start of its learned rounding, else ``GPTQ()``).
    """
    settings = settings or gptq_settings(config)
    if weight.dim() != 2:
        raise ValueError(f"expected a 2-D weight [N, K], got shape {tuple(weight.shape)} for {name or 'weight'}")
    n, k = weight.shape
    g = check_group_size(k, config.group_size, name)
    if tuple(gram.shape) != (k, k):
        raise ValueError(f"gram of {name or 'weight'} must have shape {(k, k)}, got {tuple(gram.shape)}")
    if target is not None and target.shape != weight.shape:
        raise ValueError(f"target of {name or 'weight'} must have shape {tuple(weight.shape)}, got {tuple(target.shape)}")
    if not bool(torch.isfinite(gram).all()):
        raise AWQError(f"GPTQ: non-finite input Gram of {name or 'a linear'}")
    rtn = quantize_tensor(weight, config, name=name)  # the static groups
    device = weight.device
    u = _inverse_factor(gram.to(device), settings.damp, name)

    w = (weight if target is None else target).to(device=device, dtype=torch.float32, copy=True)
    scales = rtn.scales.float()
    zeros = (
        torch.full_like(scales, float(2 ** (config.bits - 1))) if rtn.zeros is None else rtn.zeros.float()
    )
    qmax = float(config.qmax)
    codes = torch.empty(n, k, dtype=torch.float32, device=device)
    step = settings.block
    for i1 in range(0, k, step):
        i2 = min(i1 + step, k)
        groups = torch.arange(i1, i2, device=device) // g
        s1, z1 = scales[:, groups], zeros[:, groups]
        w1, u1 = w[:, i1:i2], u[i1:i2, i1:i2]  # views: updates land in w
        err1 = torch.empty(n, i2 - i1, dtype=torch.float32, device=device)
        for j in range(i2 - i1):
            col, s, z = w1[:, j], s1[:, j], z1[:, j]
            q = torch.round(col / s).add_(z).clamp_(0.0, qmax)
            codes[:, i1 + j] = q
            err = (col - (q - z) * s).div_(u1[j, j])
            err1[:, j] = err
            if j + 1 < i2 - i1:
                w1[:, j + 1:].addr_(err, u1[j, j + 1:], alpha=-1.0)
        if i2 < k:
            w[:, i2:].addmm_(err1, u[i1:i2, i2:], alpha=-1.0)
    qt = QuantizedTensor(
        codes=codes.to(torch.uint8),
        scales=rtn.scales,
        zeros=rtn.zeros,
        bits=config.bits,
        group_size=config.group_size,
    )
    # w's columns were only moved before their own rounding: w now holds the corrected values
    return (qt, w) if return_corrected else qt


def gptq_settings(config: QuantConfig) -> GPTQ:
    """The GPTQ settings ``config`` rounds with (directly, or as learned rounding's start)."""
    r = config.rounding
    if isinstance(r, Learned):
        r = r.init
    return r if isinstance(r, GPTQ) else GPTQ()
