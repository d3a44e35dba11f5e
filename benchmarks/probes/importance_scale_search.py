"""Issue #26 ablation: AWQ's input-scale search scored with the rounding that will be used.

    python benchmarks/probes/importance_scale_search.py <awq_quality.py arguments>

The scale search fake-quantizes each candidate ``W * s`` by round-to-nearest, so it picks scales
that suit round-to-nearest; with importance-weighted rounding those scales hurt on held-out text
(imatrix_round_2026-12-07, E2 against E1). Here, when the config's rounding is importance-based,
each candidate is fake-quantized by importance rounding instead, with the scaled input's column
mean squares approximated by ``(mean |x| / s)^2`` (the search has mean |x|, not the mean
square). The identity stays a candidate, so a group keeps its input unscaled unless scaling
lowers the calibration loss under this rounding. Run with ``"scales": true`` in the overrides
(the "auto" default turns the search off for importance rounding).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import cat_core.awq._scale_search as scale_search  # noqa: E402
import cat_core.awq._stage_scales as stage_scales  # noqa: E402
from cat_core.awq._importance import importance_round  # noqa: E402
from cat_core.quant import dequantize  # noqa: E402

_state: dict = {}
_search = scale_search.search_scales
_fake = scale_search.fake_quantize


def search_scales(consumers, inspect, call, x_mean, config, **kw):
    _state["x_mean"] = x_mean.float()
    _state["originals"] = [c.weight.data.float().clone() for c in consumers]
    try:
        return _search(consumers, inspect, call, x_mean, config, **kw)
    finally:
        _state.clear()


def fake_quantize(w, config):
    if not _state or not config.uses_importance:
        return _fake(w, config)
    s = None
    for m in _state["originals"]:  # which consumer this is, and its scales: w = m * s per column
        if m.shape != w.shape:
            continue
        den = (m * m).sum(0)
        est = torch.where(den > 0, (w * m).sum(0) / den.clamp_min(1e-30), torch.ones_like(den))
        if torch.allclose(m * est, w, rtol=1e-5, atol=1e-7):
            s = est
            break
    assert s is not None, "candidate weight not matched to a consumer"
    ms = (_state["x_mean"].to(w.device) / s.abs().clamp_min(1e-12)) ** 2
    qt = importance_round(w, ms, config.bits, config.group_size, config.sym, config.scale_torch_dtype)
    w.copy_(dequantize(qt, w.dtype))
    return w


stage_scales.search_scales = search_scales
scale_search.fake_quantize = fake_quantize

if __name__ == "__main__":
    import awq_quality

    awq_quality.main()
