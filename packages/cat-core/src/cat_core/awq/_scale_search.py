"""Grid search of the per-input-channel scales of one scale group (the AWQ scale step).

For each candidate ``s`` the consumers' weights become ``Q(W * s) / s``: the quantization error of
the scaled weight, seen from the unscaled input. The candidate minimizing the inspected module's
output MSE wins; the identity (plain round-to-nearest) is always a candidate, so the search never
does worse than RTN on the data it sees.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math

import torch
from torch import nn

from cat_core.awq._capture import BlockCall, first_output
from cat_core.config import QuantConfig
from cat_core.quant import _MIN_SCALE, check_group_size

__all__ = ["ScaleResult", "search_scales", "weight_channel_mean", "search_autocast"]


def search_autocast(config: QuantConfig, device: torch.device):
    """Autocast for the search reruns when ``search_dtype`` is lower than float32.

    Only the reruns (matmuls) are affected: the reference output is computed the same way so the
    losses stay comparable, and folded and stored weights never pass through it.
    """
    if config.search_torch_dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=config.search_torch_dtype)


@dataclasses.dataclass
class ScaleResult:
    scales: torch.Tensor  # float32 [K]
    alpha: float | None  # None: the identity won
    losses: list[tuple[float | None, float]]  # (alpha, loss) in search order, of those run on the whole batch
    #: (alpha, loss on the screening subsample) of every grid point, when the search screened them
    screened: list[tuple[float, float]] = dataclasses.field(default_factory=list)

    @property
    def rtn_loss(self) -> float:
        return self.losses[0][1]

    @property
    def best_loss(self) -> float:
        return min(loss for _, loss in self.losses)


def weight_channel_mean(weights: list[torch.Tensor], group_size: int) -> torch.Tensor:
    """Mean over output rows of |W| normalized by each group's max: the weight side of duo scaling."""
    # one float32 copy, worked on in place: for an 8B model's gate and up projections each
    # full-size temporary is 0.47 GB, and three of them were the peak of a block's search
    n, k = sum(x.shape[0] for x in weights), weights[0].shape[1]
    w = torch.empty(n, k, dtype=torch.float32, device=weights[0].device)
    _fill_rows(w, weights)
    g = check_group_size(k, group_size)
    wg = w.abs_().view(n, k // g, g)
    wg.div_(wg.amax(dim=-1, keepdim=True).clamp_min_(1e-12))
    return w.mean(dim=0)


def _fill_rows(out: torch.Tensor, weights: list[torch.Tensor]) -> None:
    row = 0
    for x in weights:
        out[row:row + x.shape[0]].copy_(x.detach())
        row += x.shape[0]


@torch.no_grad()
def fake_quantize(w: torch.Tensor, config: QuantConfig) -> torch.Tensor:
    """:func:`cat_core.quant.fake_quantize` of a float32 scratch ``w``, IN PLACE; returns ``w``.

    The same operations in the same order (so the same values bit for bit), fused into in-place
    steps: the search calls this once per consumer and grid point, where the temporaries of the
    out-of-place version dominated its cost.
    """
    n, k = w.shape
    g = k if config.group_size == -1 else config.group_size
    wg = w.view(n, k // g, g)
    if config.sym:
        half = 2 ** (config.bits - 1)
        absmax = wg.abs().amax(dim=-1, keepdim=True)
        sc = (absmax / (half - 1)).clamp_min_(_MIN_SCALE).to(config.scale_torch_dtype).float()
        wg.div_(sc).round_().clamp_(-half, half - 1).mul_(sc)  # ((q + half) - half) * s
    else:
        qmax = config.qmax
        lo, hi = torch.aminmax(wg, dim=-1, keepdim=True)
        sc = ((hi - lo) / qmax).clamp_min_(_MIN_SCALE).to(config.scale_torch_dtype).float()
        z = torch.round(-lo / sc).clamp_(0, qmax)
        wg.div_(sc).round_().add_(z).clamp_(0, qmax).sub_(z).mul_(sc)
    return w


def _candidate(x_mean: torch.Tensor, w_mean: torch.Tensor | None, alpha: float) -> torch.Tensor:
    s = x_mean.pow(alpha)
    if w_mean is not None:
        s = s / w_mean.pow(1.0 - alpha)
    s = s.clamp_min(1e-4)
    # Centre the scales geometrically so neither W*s nor x/s drifts in magnitude.
    return s / (s.max() * s.min()).sqrt()


@torch.no_grad()
def search_scales(
    consumers: list[nn.Linear],
    inspect: nn.Module,
    call: BlockCall,
    x_mean: torch.Tensor,
    config: QuantConfig,
    *,
    on_nonfinite,
    tie=None,
    screen: BlockCall | None = None,
) -> ScaleResult:
    """Best scales for ``consumers`` given the inspected module's captured ``call``.

    ``on_nonfinite(what, losses)`` is called (and must raise) when a loss or statistic is not finite.
    ``tie`` maps a candidate to one the fold can apply (e.g. shared across grouped-query heads), so
    the search scores exactly what will be folded. Weights are restored before returning.

    ``screen``, the inspected module's call on a subsample of ``call``'s sequences: every grid point
    is first scored there, and only the ``config.scales.screen_keep`` best (with the identity) are rerun
    on ``call``, in search order; their losses are the same numbers the full search computes, so
    the winner is the full search's whenever it ranks among them on the subsample. Most grid
    points are far from the optimum: their reruns on every token only confirm it.
    """
    x_mean = x_mean.float()
    if not bool(torch.isfinite(x_mean).all()):
        on_nonfinite("activation statistics", [])
    originals = [c.weight.data.clone() for c in consumers]
    autocast = search_autocast(config, originals[0].device)
    with autocast:
        ref = first_output(inspect(*call.args, **call.kwargs)).float()
    if not bool(torch.isfinite(ref).all()):
        on_nonfinite("reference output of the inspected module", [])
    w_mean = weight_channel_mean(originals, config.group_size) if config.scales.duo_scaling else None
    if w_mean is not None and not bool(torch.isfinite(w_mean).all()):
        on_nonfinite("weight statistics", [])

    n_grid = config.scales.n_grid
    grid: list[float] = [i / n_grid for i in range(n_grid)]
    alphas: list[float | None] = [None, *grid]
    losses: list[tuple[float | None, float]] = []
    screened: list[tuple[float, float]] = []
    best: tuple[float, float | None, torch.Tensor] | None = None
    masters = [w.float() for w in originals]
    bufs = [torch.empty_like(m) for m in masters]

    def candidate(alpha: float | None) -> torch.Tensor:
        s = torch.ones_like(x_mean) if alpha is None else _candidate(x_mean, w_mean, alpha)
        if tie is not None and alpha is not None:
            s = tie(s).float()
        s_dev = s.to(originals[0].device)
        for c, m, buf in zip(consumers, masters, bufs):
            torch.mul(m, s_dev, out=buf)
            c.weight.data.copy_(fake_quantize(buf, config).div_(s_dev))
        return s

    def loss_on(c: BlockCall, reference: torch.Tensor) -> float:
        with autocast:
            out = first_output(inspect(*c.args, **c.kwargs)).float()
        return float((out - reference).pow(2).mean())

    try:
        if screen is not None and len(grid) > config.scales.screen_keep:
            with autocast:  # the weights are still the originals
                ref_screen = first_output(inspect(*screen.args, **screen.kwargs)).float()
            for alpha in grid:
                candidate(alpha)
                screened.append((alpha, loss_on(screen, ref_screen)))
                if not math.isfinite(screened[-1][1]):
                    on_nonfinite(f"screening loss at alpha={alpha}", list(screened))
            ranked = sorted(range(len(grid)), key=lambda i: screened[i][1])[:config.scales.screen_keep]
            alphas = [None, *(grid[i] for i in sorted(ranked))]
        for alpha in alphas:
            s = candidate(alpha)
            loss = loss_on(call, ref)
            losses.append((alpha, loss))
            if not math.isfinite(loss):
                on_nonfinite(f"loss at alpha={alpha}", losses)
            if best is None or loss < best[0]:
                best = (loss, alpha, s)
    finally:
        for c, w in zip(consumers, originals):
            c.weight.data.copy_(w)
    assert best is not None
    return ScaleResult(scales=best[2], alpha=best[1], losses=losses, screened=screened)
