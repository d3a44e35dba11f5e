"""Issue #26 ablation: refit each group's scale by weighted least squares once its codes are
known, as llama.cpp's imatrix quantizer does (make_qx_quants: search, round, refit the scale given
the codes, re-round), on top of the 16-level symmetric grid of ``sym_full_grid.py``.

    python benchmarks/probes/sym_lsq_refit.py <awq_quality.py arguments>

For a linear whose per-group input Gram blocks ``H_g`` the clip search captured (every clipped
linear: all but q/k), after nearest rounding gives codes ``a = q - z``, each group's scale becomes
``s = a' H_g w / a' H_g a`` (the scale that minimizes the group's output error ``(w - s a)' H_g
(w - s a)`` with the codes fixed), rounded to the scale dtype; the codes are re-rounded with it,
twice, and a group keeps the new scale and codes only where its weighted error went down. Learned
rounding from nearest codes starts from the refit scales and keeps them. q/k (no Grams here) keep
their min/max scales.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import sym_full_grid  # noqa: E402,F401  (its patches: the 16-level symmetric grid)
from cat_core.awq import _pipeline, _stage_round  # noqa: E402
from cat_core.quant import QuantizedTensor  # noqa: E402

ROUNDS = 2


def _weighted_error(w: torch.Tensor, s: torch.Tensor, a: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    e = w - s * a  # [n, ng, g]
    return torch.einsum("ngi,gij,ngj->ng", e, h, e)


def refit(qt: QuantizedTensor, w: torch.Tensor, h: torch.Tensor) -> QuantizedTensor:
    """Weighted least-squares scales for ``qt``'s codes (symmetric or not; zero points kept)."""
    n, k = w.shape
    g = qt.group_size if qt.group_size != -1 else k
    ng = k // g
    if h.shape != (ng, g, g):
        return qt
    half = 2 ** (qt.bits - 1)
    wg = w.float().reshape(n, ng, g)
    z = (torch.full((n, ng, 1), float(half)) if qt.zeros is None else qt.zeros.float().reshape(n, ng, 1))
    a = qt.codes.float().reshape(n, ng, g) - z
    s = qt.scales.float().reshape(n, ng, 1)
    hf = h.float()
    best = _weighted_error(wg, s, a, hf)
    lo, hi = -z, (2 ** qt.bits - 1) - z
    for _ in range(ROUNDS):
        ha = torch.einsum("gij,ngj->ngi", hf, a)
        num, den = (ha * wg).sum(-1, keepdim=True), (ha * a).sum(-1, keepdim=True)
        s_new = torch.where(den > 0, num / den.clamp_min(1e-30), s)
        s_new = s_new.to(qt.scales.dtype).float()
        s_new = torch.where(s_new.abs() > 0, s_new, s)
        a_new = torch.minimum(torch.maximum(torch.round(wg / s_new), lo), hi)
        err = _weighted_error(wg, s_new, a_new, hf)
        better = (err < best).unsqueeze(-1)
        s = torch.where(better, s_new, s)
        a = torch.where(better, a_new, a)
        best = torch.minimum(err, best)
    codes = (a + z).reshape(n, k).to(torch.uint8)
    return QuantizedTensor(codes=codes, scales=s.reshape(n, ng).to(qt.scales.dtype), zeros=qt.zeros,
                           bits=qt.bits, group_size=qt.group_size)


_codes = _stage_round._Nearest._codes
_search_clips = _pipeline.search_clips


def search_clips(work, part):
    # the clip search empties part.grams once done: keep them for the rounding
    part.saved_grams = dict(part.grams)
    return _search_clips(work, part)


def codes(self, work, rel, name, mod, w, part, clips):
    grams = getattr(part, "saved_grams", {}).pop(rel, None)
    if grams is None or self.wants_full_grams:
        return _codes(self, work, rel, name, mod, w, part, clips)
    qt = _stage_round.quantize_tensor(w, work.config, name=name)
    qt = refit(qt, w.detach(), grams)
    if _stage_round._collecting(work):
        work.starts.append(_stage_round._start(rel, name, mod, w.float().clone(), qt, w, work.config))
    return qt


_stage_round._Nearest._codes = codes
_pipeline.search_clips = search_clips

if __name__ == "__main__":
    import awq_quality

    awq_quality.main()
