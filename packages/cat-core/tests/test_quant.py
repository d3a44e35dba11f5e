"""The quantizer against a plain per-group loop written from the format spec."""

from __future__ import annotations

import itertools

import pytest
import torch

from cat_core.config import QuantConfig
from cat_core.quant import dequantize, fake_quantize, quantize_tensor


def _reference(w: torch.Tensor, bits: int, group_size: int, sym: bool, sdtype: torch.dtype):
    """One group at a time, scalar formulas straight from format.md."""
    n, k = w.shape
    g = k if group_size == -1 else group_size
    codes = torch.zeros(n, k, dtype=torch.int64)
    scales = torch.zeros(n, k // g, dtype=torch.float32)
    zeros = torch.zeros(n, k // g, dtype=torch.int64)
    what = torch.zeros(n, k, dtype=torch.float32)
    for r in range(n):
        for j in range(k // g):
            seg = w[r, j * g:(j + 1) * g].float()
            if sym:
                half = 2 ** (bits - 1)
                s = max(seg.abs().max().item() / (half - 1), 1e-5)
                s = torch.tensor(s, dtype=torch.float32).to(sdtype).float()
                q = torch.clamp(torch.round(seg / s), -half, half - 1) + half
                z = half
            else:
                qmax = 2**bits - 1
                lo, hi = seg.min(), seg.max()
                s = torch.clamp((hi - lo) / qmax, min=1e-5).to(sdtype).float()
                z = int(torch.clamp(torch.round(-lo / s), 0, qmax).item())
                q = torch.clamp(torch.round(seg / s) + z, 0, qmax)
            codes[r, j * g:(j + 1) * g] = q.long()
            scales[r, j] = s
            zeros[r, j] = z
            what[r, j * g:(j + 1) * g] = (q - z).float() * s
    return codes, scales, zeros, what


SHAPES = [(3, 64), (7, 96), (5, 256)]


@pytest.mark.parametrize("bits,group_size,sym,sdtype", [
    (b, g, s, d)
    for b, g, s in itertools.product((2, 3, 4, 8), (-1, 32), (False, True))
    for d in ("float16",)
] + [(3, 64, False, "bfloat16"), (4, 32, True, "float32"), (8, -1, False, "bfloat16")])
def test_matches_reference_loop(bits, group_size, sym, sdtype):
    gen = torch.Generator().manual_seed(bits * 100 + group_size)
    cfg = QuantConfig(bits=bits, group_size=group_size, sym=sym, scale_dtype=sdtype)
    for n, k in SHAPES:
        if group_size != -1 and k % group_size:
            continue
        w = torch.randn(n, k, generator=gen) * torch.rand(n, 1, generator=gen) * 3
        w[0, :5] += 10.0  # an outlier group
        if n > 2:
            w[2, :] = w[2, :].abs() + 0.5  # all-positive rows: the zero point clamps to 0
        qt = quantize_tensor(w, cfg)
        codes, scales, zeros, what = _reference(w, bits, group_size, sym, cfg.scale_torch_dtype)
        assert qt.codes.dtype == torch.uint8 and qt.codes.shape == (n, k)
        assert torch.equal(qt.codes.long(), codes)
        assert qt.scales.dtype == cfg.scale_torch_dtype
        assert torch.equal(qt.scales.float(), scales)
        if sym:
            assert qt.zeros is None
        else:
            assert qt.zeros.dtype == torch.uint8
            assert torch.equal(qt.zeros.long(), zeros)
        assert int(qt.codes.max()) < 2**bits
        assert torch.equal(fake_quantize(w, cfg), what)


@pytest.mark.parametrize("wdtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("bits,sym", [(3, False), (4, True), (2, False), (8, True)])
def test_fake_quant_equals_dequant_of_codes(wdtype, bits, sym):
    w = (torch.randn(33, 128, generator=torch.Generator().manual_seed(1)) * 0.05).to(wdtype)
    for sdtype in ("float16", "bfloat16", "float32"):
        cfg = QuantConfig(bits=bits, group_size=64, sym=sym, scale_dtype=sdtype)
        qt = quantize_tensor(w, cfg)
        wh = fake_quantize(w, cfg)
        assert wh.dtype == wdtype
        assert torch.equal(wh, dequantize(qt, wdtype))


def test_error_bound_and_monotone_in_bits():
    w = torch.randn(64, 256, generator=torch.Generator().manual_seed(2))
    errs = []
    for bits in (2, 3, 4, 8):
        cfg = QuantConfig(bits=bits, group_size=128)
        qt = quantize_tensor(w, cfg)
        err = (fake_quantize(w, cfg) - w).abs()
        # at most one step: half from rounding, half from rounding the zero point
        step = qt.scales.float().repeat_interleave(128, dim=1)
        assert bool((err <= step * 1.001 + 1e-6).all())
        errs.append(err.pow(2).mean().item())
    assert errs == sorted(errs, reverse=True)


def test_constant_and_zero_groups_are_finite():
    w = torch.zeros(4, 64)
    w[1] = 3.0
    for sym in (False, True):
        cfg = QuantConfig(bits=3, group_size=32, sym=sym)
        qt = quantize_tensor(w, cfg)
        assert torch.isfinite(qt.scales.float()).all() and bool((qt.scales.float() > 0).all())
        assert torch.equal(fake_quantize(w, cfg)[0], w[0])


def test_group_size_error_names_layer_and_valid_sizes():
    with pytest.raises(ValueError) as e:
        quantize_tensor(torch.randn(8, 576), QuantConfig(group_size=128), name="model.layers.0.mlp.up_proj")
    msg = str(e.value)
    assert "model.layers.0.mlp.up_proj" in msg and "576" in msg and "64" in msg and "192" in msg


def test_cuda_if_available():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    w = torch.randn(48, 256)
    cfg = QuantConfig(bits=3, group_size=128)
    a, b = quantize_tensor(w, cfg), quantize_tensor(w.cuda(), cfg)
    assert torch.equal(a.codes, b.codes.cpu()) and torch.equal(a.scales, b.scales.cpu())
