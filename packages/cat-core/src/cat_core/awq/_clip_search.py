"""Per-group clipping of the weight range (the AWQ clip step).

Each group's [min, max] is shrunk by factors from 1 down to ``max_shrink``; per output row and
group, the factor whose quantized weights best reproduce that group's partial output
``x_g . w_g`` on sampled tokens wins.
"""

from __future__ import annotations

import torch

from cat_core.awq._scale_search import search_autocast
from cat_core.config import QuantConfig
from cat_core.quant import _params, check_group_size

__all__ = ["search_clip", "apply_clip"]

# Bounds the [tokens, rows, groups] error tensor of one batch of output rows (elements).
_MAX_ELEMENTS = 1 << 24


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
    steps = config.n_clip_grid
    factors = [1.0 - (1.0 - config.max_shrink) * i / max(steps - 1, 1) for i in range(steps)]
    rows = max(1, min(n, _MAX_ELEMENTS // max(1, t * ng)))
    lo_out, hi_out, err_out = [], [], []
    autocast = search_autocast(config, weight.device)
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
        for f in factors:
            lo, hi = lo0 * f, hi0 * f
            wc = torch.maximum(torch.minimum(wg, hi), lo)
            q, z, s = _params(wc, config.bits, config.sym, config.scale_torch_dtype)
            diff = (q - z) * s - wg  # [rows, ng, g]
            # partial-output error per (token, row, group): bmm over groups
            with autocast:
                e = torch.bmm(xg, diff.permute(1, 2, 0)).float()  # [ng, T, rows]
            err = e.pow(2).mean(dim=1).transpose(0, 1)  # [rows, ng]
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_lo = torch.where(better.unsqueeze(-1), lo, best_lo)
            best_hi = torch.where(better.unsqueeze(-1), hi, best_hi)
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
