"""Per-group clipping of the weight range (the AWQ clip step).

Each group's [min, max] is shrunk by factors from 1 down to ``max_shrink``; per output row and
group, the factor whose quantized weights best reproduce that group's partial output
``x_g . w_g`` on the calibration tokens wins. With ``ClipSearch.refine`` (asymmetric quantization only),
each end is then moved alone over the same factors, the other end held at its best.

The error is measured through the per-group Gram matrix ``H_g = X_g^T X_g / T`` of the linear's
inputs (:class:`GramAccumulator`), so the token count costs only the accumulation: every token of
the search batch is used. Subsampling tokens (the reference takes 512) is unsafe: a few tokens --
the first of each sequence, in the later blocks of many models -- carry activations tens of times
larger than the rest, and a clip chosen without them ruins those tokens' outputs (measured on
SmolLM2's last blocks: 35x RTN's held-out error). The search runs in float32 whatever
``search_dtype`` says.
"""

from __future__ import annotations

import torch

from cat_core.config import QuantConfig
from cat_core.quant import _MIN_SCALE, check_group_size

__all__ = ["GramAccumulator", "search_clip", "apply_clip"]

# Column block of a full Gram's symmetric accumulation (GramAccumulator): at least this wide.
_TRI_BLOCK = 256
# Bounds the [rows, K] temporaries of one batch of output rows (elements): small enough that the
# search's elementwise passes run in cache (1.7x faster than 1 << 24 at 2048 x 8192, same result).
_MAX_ELEMENTS = 1 << 18


def _clipped_error(wg: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, mn0: torch.Tensor, mx0: torch.Tensor,
                   config: QuantConfig) -> torch.Tensor:
    """``dequant(quant(clamp(wg, lo, hi))) - wg``, the same values bit for bit as
    ``cat_core.quant._params`` gives for the clamped weights, on one temporary.

    ``mn0``/``mx0`` are each group's min and max: a clamp is monotone, so the clamped group's min
    and max are the clamped min and max, exactly, with no pass over the weights; and
    ``clamp(round(x) + z, 0, qmax) - z`` is ``clamp(round(x), -z, qmax - z)`` (small integers in
    float32: exact). Eight cheap passes over the weights instead of ten with two slow clamps
    (:func:`_clamp`): 2x faster on a 1b preset MLP linear (2048 x 8192, g64: 3.14 -> 1.59 s,
    benchmarks/probes/clip_speed.py), where the passes, not the Gram product, were most of the
    search's time."""
    mn = torch.clamp(mn0, min=lo, max=hi)
    mx = torch.clamp(mx0, min=lo, max=hi)
    wc = _clamp(wg, lo, hi)  # a new tensor; lo <= hi always
    if config.sym:
        half = 2 ** (config.bits - 1)
        absmax = torch.maximum(mn.abs(), mx.abs())
        s = (absmax / (half - 1)).clamp_min_(_MIN_SCALE).to(config.scale_torch_dtype).float()
        return wc.div_(s).round_().clamp_(-half, half - 1).mul_(s).sub_(wg)
    qmax = config.qmax
    s = ((mx - mn) / qmax).clamp_min_(_MIN_SCALE).to(config.scale_torch_dtype).float()
    z = torch.round(-mn / s).clamp_(0, qmax)
    q = wc.div_(s).round_()
    return _clamp(q, -z, qmax - z, out=q).mul_(s).sub_(wg)


def _clamp(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """``torch.clamp(x, lo, hi)`` for broadcast tensor bounds (into ``out``, which may be ``x``),
    as ``minimum(maximum(x, lo), hi)``, its definition: torch's clamp with tensor bounds ran 5x
    slower than the two (137 vs 27 us on a [128, 32, 64] float32 group batch, Sapphire Rapids)
    and was half the search's time."""
    out = torch.maximum(x, lo, out=out)
    return torch.minimum(out, hi, out=out)


class GramAccumulator:
    """Running ``sum_t x_g x_g^T`` per input group of one linear, fed batch by batch.

    mean_t (x_g . d_g)^2 = d_g^T H_g d_g: with H_g each clip factor costs N*K*g multiply-adds
    instead of N*K*T, and no ``[tokens, K]`` input is ever stored.

    A wide single group (GPTQ's full ``K x K`` Gram) is symmetric: only its lower column blocks
    are multiplied, the upper ones mirrored when :attr:`sum` is read (a quarter to a third fewer
    multiply-adds at K = 576 to 4096; the Gram of every calibration token is a tenth of the
    statistics pass).
    """

    def __init__(self, k: int, group_size: int, name: str = "") -> None:
        g = check_group_size(k, group_size, name)
        self._ng, self._g = k // g, g
        self._sum: torch.Tensor | None = None
        self._mirror = False  # the upper blocks of _sum are stale
        n_blocks = min(8, g // _TRI_BLOCK) if self._ng == 1 else 1
        self._edges = [g * i // n_blocks for i in range(n_blocks + 1)] if n_blocks > 1 else None
        self.tokens = 0

    @property
    def sum(self) -> torch.Tensor | None:
        """``[n_groups, g, g]`` float32 sums (None before any input); may be modified in place."""
        if self._mirror:
            e, full = self._edges, self._sum[0]
            for i in range(len(e) - 1):
                for j in range(i):
                    full[e[j]:e[j + 1], e[i]:e[i + 1]] = full[e[i]:e[i + 1], e[j]:e[j + 1]].T
            self._mirror = False
        return self._sum

    def add(self, x: torch.Tensor) -> None:
        if self._edges is not None:
            x2 = x.detach().reshape(-1, self._g).float()
            if self._sum is None:
                self._sum = torch.zeros(1, self._g, self._g, dtype=torch.float32, device=x2.device)
            e, full = self._edges, self._sum[0]
            for i in range(len(e) - 1):
                xi_t = x2[:, e[i]:e[i + 1]].T
                for j in range(i + 1):  # the lower blocks, diagonal included
                    full[e[i]:e[i + 1], e[j]:e[j + 1]].addmm_(xi_t, x2[:, e[j]:e[j + 1]])
            self._mirror = True
            self.tokens += x2.shape[0]
            return
        xg = x.detach().reshape(-1, self._ng, self._g).float().transpose(0, 1)  # [ng, T, g]
        part = torch.bmm(xg.transpose(1, 2), xg)
        self._sum = part if self._sum is None else self.sum.add_(part)
        self.tokens += xg.shape[1]

    def merge(self, other: GramAccumulator) -> None:
        """Add ``other``'s tokens (same layout); ``other`` is left as it was."""
        if other.sum is None:
            return
        self._sum = other.sum.clone() if self._sum is None else self.sum.add_(other.sum)
        self.tokens += other.tokens

    def mean(self) -> torch.Tensor:
        """``H_g``, ``[n_groups, g, g]`` float32."""
        if self._sum is None:
            raise ValueError("GramAccumulator.mean: no input was added")
        return self.sum / self.tokens


@torch.no_grad()
def search_clip(
    weight: torch.Tensor, gram: torch.Tensor, config: QuantConfig, *, name: str = ""
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return ``(lo, hi, err)``: per-group clamp bounds ``[N, n_groups, 1]`` and their errors.

    ``gram`` is ``H_g`` of the linear's inputs (already in the folded space), ``[n_groups, g, g]``
    (:meth:`GramAccumulator.mean`).
    """
    n, k = weight.shape
    g = check_group_size(k, config.group_size, name)
    ng = k // g
    if tuple(gram.shape) != (ng, g, g):
        raise ValueError(f"gram of {name or 'weight'} must have shape {(ng, g, g)}, got {tuple(gram.shape)}")
    gram = gram.to(device=weight.device, dtype=torch.float32)
    clip = config.clip
    if clip is None:
        raise ValueError("search_clip: config.clip is None (the clip search is off)")
    if clip.gram == "diagonal":
        gram = torch.diag_embed(torch.diagonal(gram, dim1=-2, dim2=-1))
    steps = clip.n_grid
    factors = [1.0 - (1.0 - clip.max_shrink) * i / max(steps - 1, 1) for i in range(steps)]
    rows = max(1, min(n, _MAX_ELEMENTS // max(1, k)))
    lo_out, hi_out, err_out = [], [], []
    for r0 in range(0, n, rows):
        # groups first ([ng, rows, g]): the Gram product then reads each trial's error in place
        wg = weight[r0:r0 + rows].float().reshape(-1, ng, g).transpose(0, 1).contiguous()
        mn0, mx0 = torch.aminmax(wg, dim=-1, keepdim=True)
        if config.sym:
            hi0 = torch.maximum(mn0.abs(), mx0.abs())
            lo0 = -hi0
        else:
            lo0, hi0 = mn0, mx0

        def error(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
            """Partial-output error per (group, row), ``[ng, rows]``, averaged over the tokens."""
            diff = _clipped_error(wg, lo, hi, mn0, mx0, config)
            return torch.bmm(diff, gram).mul_(diff).sum(dim=-1)

        best = _Best(lo0, hi0)
        _sweep(factors, clip.stride, lambda f: (lo0 * f, hi0 * f), error, best)
        if clip.refine and not config.sym:
            # The two ends of a group rarely deserve the same shrink: move each end alone,
            # the other held at its best so far (two sweeps instead of a 2-D grid).
            held_hi = best.hi.clone()
            _sweep(factors[1:], clip.stride, lambda f: (lo0 * f, held_hi), error, best)
            held_lo = best.lo.clone()
            _sweep(factors[1:], clip.stride, lambda f: (held_lo, hi0 * f), error, best)
        lo_out.append(best.lo.transpose(0, 1))
        hi_out.append(best.hi.transpose(0, 1))
        err_out.append(best.err.transpose(0, 1))
    return torch.cat(lo_out), torch.cat(hi_out), torch.cat(err_out)


class _Best:
    """The best clip bounds per (group, row) so far, and their error."""

    def __init__(self, lo0: torch.Tensor, hi0: torch.Tensor) -> None:
        self.err = torch.full(lo0.shape[:2], float("inf"), device=lo0.device)
        self.lo, self.hi = lo0.clone(), hi0.clone()

    def consider(self, lo: torch.Tensor, hi: torch.Tensor, err: torch.Tensor) -> None:
        better = err < self.err
        self.err = torch.where(better, err, self.err)
        self.lo = torch.where(better.unsqueeze(-1), lo, self.lo)
        self.hi = torch.where(better.unsqueeze(-1), hi, self.hi)


def _sweep(factors: list[float], stride: int, bounds, error, best: _Best) -> None:
    """Offer ``bounds(f)`` for the factors of one sweep to ``best``. With ``stride`` > 1 every
    ``stride``-th factor (and the last) is tried first, then, per (row, group), the factors
    between its best one and the tried neighbours: the same grid, in about a third of the trials
    for stride 3, and the same choice wherever a group's error is unimodal along the grid."""
    if stride <= 1:
        for f in factors:
            lo, hi = bounds(f)
            best.consider(lo, hi, error(lo, hi))
        return
    coarse = list(range(0, len(factors), stride))
    if coarse[-1] != len(factors) - 1:
        coarse.append(len(factors) - 1)
    at = sweep_err = None
    for i in coarse:
        lo, hi = bounds(factors[i])
        err = error(lo, hi)
        best.consider(lo, hi, err)
        if at is None:
            at, sweep_err = torch.zeros_like(err, dtype=torch.long), err
        else:
            better = err < sweep_err
            at = torch.where(better, i, at)
            sweep_err = torch.where(better, err, sweep_err)
    grid = torch.tensor(factors, dtype=torch.float32, device=at.device)
    for d in [d for d in range(-(stride - 1), stride) if d]:
        idx = at + d
        valid = (idx >= 0) & (idx < len(factors))
        f = grid[idx.clamp(0, len(factors) - 1)].unsqueeze(-1)  # [ng, rows, 1]
        lo, hi = bounds(f)
        err = error(lo, hi).masked_fill_(~valid, float("inf"))
        best.consider(lo, hi, err)


@torch.no_grad()
def apply_clip(weight: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> None:
    n, k = weight.shape
    ng = lo.shape[1]
    wg = weight.data.float().reshape(n, ng, k // ng)
    wg = torch.maximum(torch.minimum(wg, hi), lo)
    weight.data.copy_(wg.reshape(n, k).to(weight.dtype))
