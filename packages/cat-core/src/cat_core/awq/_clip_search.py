"""Per-group clipping of the weight range (the AWQ clip step).

Each group's [min, max] is shrunk by factors from 1 down to ``max_shrink``; per output row and
group, the factor whose quantized weights best reproduce that group's partial output
``x_g . w_g`` on sampled tokens wins. With ``clip_refine`` (asymmetric quantization only), each
end is then moved alone over the same factors, the other end held at its best. The search runs in float32 whatever ``search_dtype`` says:
with the Gram form below it costs little next to the scale search.
"""

from __future__ import annotations

import torch

from cat_core.config import QuantConfig
from cat_core.quant import _MIN_SCALE, check_group_size

__all__ = ["search_clip", "apply_clip"]

# Bounds the [rows, K] temporaries of one batch of output rows (elements).
_MAX_ELEMENTS = 1 << 24


def _clipped_error(wg: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, config: QuantConfig) -> torch.Tensor:
    """``dequant(quant(clamp(wg, lo, hi))) - wg``: the operations of ``cat_core.quant._params``
    in the same order (same values bit for bit), done in place on one temporary."""
    wc = torch.clamp(wg, min=lo, max=hi)  # lo <= hi always: the same as max(min(wg, hi), lo)
    if config.sym:
        half = 2 ** (config.bits - 1)
        absmax = wc.abs().amax(dim=-1, keepdim=True)
        s = (absmax / (half - 1)).clamp_min_(_MIN_SCALE).to(config.scale_torch_dtype).float()
        return wc.div_(s).round_().clamp_(-half, half - 1).mul_(s).sub_(wg)
    qmax = config.qmax
    mn, mx = torch.aminmax(wc, dim=-1, keepdim=True)
    s = ((mx - mn) / qmax).clamp_min_(_MIN_SCALE).to(config.scale_torch_dtype).float()
    z = torch.round(-mn / s).clamp_(0, qmax)
    return wc.div_(s).round_().add_(z).clamp_(0, qmax).sub_(z).mul_(s).sub_(wg)


@torch.no_grad()
def search_clip(
    weight: torch.Tensor, x: torch.Tensor, config: QuantConfig, *, name: str = ""
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return ``(lo, hi, err)``: per-group clamp bounds ``[N, n_groups, 1]`` and their errors.

    ``x`` is ``[T, K]``, sampled inputs of the linear (already in the folded space).
    """
    n, k = weight.shape
    g = check_group_size(k, config.group_size, name)
    ng = k // g
    xg = x.float().reshape(-1, ng, g).transpose(0, 1)  # [ng, T, g]
    t = xg.shape[1]
    # mean_t (x_g . d_g)^2 = d_g^T H_g d_g with H_g = X_g^T X_g / T: the per-group Gram matrix is
    # formed once per linear (float32), so each factor costs N*K*g instead of N*K*T multiply-adds
    # and the [groups, tokens, rows] error tensor is never built.
    gram = torch.bmm(xg.transpose(1, 2), xg).div_(max(t, 1))  # [ng, g, g]
    steps = config.n_clip_grid
    factors = [1.0 - (1.0 - config.max_shrink) * i / max(steps - 1, 1) for i in range(steps)]
    rows = max(1, min(n, _MAX_ELEMENTS // max(1, k)))
    lo_out, hi_out, err_out = [], [], []
    for r0 in range(0, n, rows):
        wg = weight[r0:r0 + rows].float().reshape(-1, ng, g)
        if config.sym:
            hi0 = wg.abs().amax(dim=-1, keepdim=True)
            lo0 = -hi0
        else:
            lo0 = wg.amin(dim=-1, keepdim=True)
            hi0 = wg.amax(dim=-1, keepdim=True)
        best_err = torch.full(wg.shape[:2], float("inf"), device=wg.device)
        best_lo, best_hi = lo0.clone(), hi0.clone()

        def consider(lo: torch.Tensor, hi: torch.Tensor) -> None:
            nonlocal best_err, best_lo, best_hi
            diff = _clipped_error(wg, lo, hi, config).transpose(0, 1)  # [ng, rows, g]
            # partial-output error per (row, group), averaged over the sampled tokens
            err = (torch.bmm(diff, gram) * diff).sum(dim=-1).transpose(0, 1)  # [rows, ng]
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_lo = torch.where(better.unsqueeze(-1), lo, best_lo)
            best_hi = torch.where(better.unsqueeze(-1), hi, best_hi)

        for f in factors:
            consider(lo0 * f, hi0 * f)
        if config.clip_refine and not config.sym:
            # The two ends of a group rarely deserve the same shrink: move each end alone,
            # the other held at its best so far (two sweeps instead of a 2-D grid).
            for f in factors[1:]:
                consider(lo0 * f, best_hi.clone())
            for f in factors[1:]:
                consider(best_lo.clone(), hi0 * f)
        lo_out.append(best_lo)
        hi_out.append(best_hi)
        err_out.append(best_err)
    return torch.cat(lo_out), torch.cat(hi_out), torch.cat(err_out)


@torch.no_grad()
def apply_clip(weight: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> None:
    n, k = weight.shape
    ng = lo.shape[1]
    wg = weight.data.float().reshape(n, ng, k // ng)
    wg = torch.maximum(torch.minimum(wg, hi), lo)
    weight.data.copy_(wg.reshape(n, k).to(weight.dtype))
