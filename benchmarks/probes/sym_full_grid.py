"""Issue #26 ablation: a symmetric grid that uses all 2**bits levels, as llama.cpp's Q4_0 does.

    python benchmarks/probes/sym_full_grid.py <awq_quality.py arguments>

Caterpillar's symmetric quantizer divides each group's absolute maximum by 2**(bits-1) - 1, so
code -2**(bits-1) (-8 at 4 bits) is never used. llama.cpp's Q4_0 maps the largest-magnitude
weight to -8. Here the scale is the smallest that keeps the group inside the codes' range,
``max(-min / half, max / (half - 1))``: the same stored format (zero point ``half``), finer steps
whenever the group's most negative weight is not much smaller in magnitude than its maximum.
The three places that compute symmetric scales for nearest rounding (the final quantizer, the
scale search's fake quantization and the clip search's error) are patched alike; then
``benchmarks/awq_quality.py`` runs with the given arguments. Nearest rounding and learned
rounding from nearest codes (which keeps the start's scales and clamps codes to 0..15) follow the
patch; GPTQ and learned rounding's min/max tuning keep the old grid, so do not use them here.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import cat_core.awq._clip_search as clip_search  # noqa: E402
import cat_core.awq._scale_search as scale_search  # noqa: E402
import cat_core.quant as quant  # noqa: E402
from cat_core.quant import _MIN_SCALE  # noqa: E402


def _scale(mn: torch.Tensor, mx: torch.Tensor, bits: int, dtype: torch.dtype) -> torch.Tensor:
    half = 2 ** (bits - 1)
    return torch.maximum(-mn / half, mx / (half - 1)).clamp_min(_MIN_SCALE).to(dtype).float()


_params = quant._params


def params(wg, bits, sym, scale_dtype):
    if not sym:
        return _params(wg, bits, sym, scale_dtype)
    half = 2 ** (bits - 1)
    mn, mx = torch.aminmax(wg, dim=-1, keepdim=True)
    s = _scale(mn, mx, bits, scale_dtype)
    q = torch.round(wg / s).clamp_(-half, half - 1).add_(half)
    return q, torch.full_like(s, float(half)), s


_fake = scale_search.fake_quantize


def fake_quantize(w, config):
    if not config.sym:
        return _fake(w, config)
    n, k = w.shape
    g = k if config.group_size == -1 else config.group_size
    wg = w.view(n, k // g, g)
    half = 2 ** (config.bits - 1)
    mn, mx = torch.aminmax(wg, dim=-1, keepdim=True)
    s = _scale(mn, mx, config.bits, config.scale_torch_dtype)
    wg.div_(s).round_().clamp_(-half, half - 1).mul_(s)
    return w


_clipped = clip_search._clipped_error


def clipped_error(wg, lo, hi, mn0, mx0, config):
    if not config.sym:
        return _clipped(wg, lo, hi, mn0, mx0, config)
    half = 2 ** (config.bits - 1)
    mn = torch.clamp(mn0, min=lo, max=hi)
    mx = torch.clamp(mx0, min=lo, max=hi)
    s = _scale(mn, mx, config.bits, config.scale_torch_dtype)
    wc = clip_search._clamp(wg, lo, hi)
    return wc.div_(s).round_().clamp_(-half, half - 1).mul_(s).sub_(wg)


quant._params = params
scale_search.fake_quantize = fake_quantize
clip_search._clipped_error = clipped_error

if __name__ == "__main__":
    import awq_quality

    sys.argv = [sys.argv[0], *sys.argv[1:]]
    awq_quality.main()
