"""Issue #26 ablation: learned rounding that also learns a factor on each group's start scale.

    LEARNED_SCALE=0.2 FP_IMATRIX=fp|path python benchmarks/probes/learned_scale.py <awq_quality.py arguments>

Learned rounding keeps its start's scales (min/max tuning, which rebuilds them from the group's
range, is refused with the importance start). Here each group's stored scale ``s0`` (and, for
asymmetric groups, its zero point) stays the start's, times a factor ``c`` in
``[1 - r, 1 + r]`` (``r`` = ``LEARNED_SCALE``) learned with the offsets by the same signed
gradient steps: ``q = round(w / (c s0) + V) + z``, ``w_hat = (q - z) * c s0``. The importance start's scales
were fitted per group to the weights alone; the factor lets the block's output move them.
Composes with ``fp_imatrix`` (imported first, so ``FP_IMATRIX`` applies).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import fp_imatrix  # noqa: E402,F401  (its patches)
from cat_core.awq import _learned_round as lr_mod  # noqa: E402

R = float(os.environ.get("LEARNED_SCALE", "0.2"))
_init = lr_mod._Learned.__init__
_grid = lr_mod._Learned.grid
_step = lr_mod._Learned.step


def __init__(self, ls, config, device):
    _init(self, ls, config, device)
    self.c = torch.ones_like(self.s0, requires_grad=True) if self.a is None and R > 0 else None


def params(self):
    return [p for p in (self.v, self.a, self.b, getattr(self, "c", None)) if p is not None]


def grid(self, ste):
    s, z = _grid(self, ste)
    c = getattr(self, "c", None)
    if c is None:
        return s, z
    s = s * c
    stored = s.to(self.config.scale_torch_dtype).float()
    return (s + (stored - s).detach() if ste else stored), z


def step(self, lr):
    c = getattr(self, "c", None)
    _step(self, lr)
    if c is not None:
        with torch.no_grad():
            c.clamp_(1 - R, 1 + R)


lr_mod._Learned.__init__ = __init__
lr_mod._Learned.params = params
lr_mod._Learned.grid = grid
lr_mod._Learned.step = step

if __name__ == "__main__":
    import awq_quality

    awq_quality.main()
