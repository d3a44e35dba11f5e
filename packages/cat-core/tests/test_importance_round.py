"""rounding="importance": importance-weighted per-group search (llama.cpp's imatrix rounding,
re-derived for this format), checked against a plain per-group float64 transcription of the
algorithm, against round-to-nearest's weighted error, through the packed layers, and in the AWQ
pipeline (alone and as learned rounding's start)."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from test_awq import CFG, _run, _samples, tiny_llama  # noqa: E402

import cat_core.awq._importance as imp  # noqa: E402
import cat_core.awq._stage_round as runner  # noqa: E402
from cat_core.config import GPTQ, Importance, Learned, QuantConfig  # noqa: E402
from cat_core.quant import dequantize, quantize_tensor  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def _weights(x: np.ndarray, ms: np.ndarray) -> np.ndarray:
    """Importance of each weight of one row ``x`` [K], given column mean squares ``ms``."""
    return ms * np.sqrt((x * x).mean() + x * x)


def _ref_sym(xb: np.ndarray, v: np.ndarray, bits: int) -> tuple[np.ndarray, float]:
    """One group, symmetric: the trial grids one by one, as the algorithm reads (float64)."""
    half = 2 ** (bits - 1)
    peak = xb[np.argmax(np.abs(xb))]
    best = None
    for i in [0, *range(-9, 0), *range(1, 10)]:
        inv = -(half + 0.1 * i) / peak
        l = np.clip(np.round(inv * xb), -half, half - 1)
        slx, sl2 = (v * xb * l).sum(), (v * l * l).sum()
        score = slx * slx / sl2
        if best is None or score > best[0]:
            best = (score, l, slx / sl2)
    return best[1] + half, best[2]


def _ref_asym(xb: np.ndarray, v: np.ndarray, bits: int) -> tuple[np.ndarray, float, float]:
    qmax = 2 ** bits - 1
    lo, hi = xb.min(), xb.max()
    best = None
    for r in [None, *(-0.9 + 0.05 * i for i in range(37))]:
        step = np.float64(np.float16((hi - lo) / qmax)) if r is None else (hi - lo) / (qmax + r)
        z = np.clip(np.round(-lo / step), 0, qmax)
        q = np.clip(np.round(xb / step) + z, 0, qmax)
        a = q - z
        s = step if r is None else np.float64(np.float16((v * xb * a).sum() / (v * a * a).sum()))
        err = (v * (xb - s * a) ** 2).sum()
        if best is None or err < best[0]:
            best = (err, q, z, s)
    return best[1], best[2], best[3]


def _case(n: int, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) * torch.rand(n, 1, generator=g)
    w[0, 3] = 6.0  # an outlier
    ms = torch.rand(k, generator=g) ** 4  # a few columns matter much more than the rest
    ms[5] = 0.0  # a dead input
    return w, ms


@pytest.mark.parametrize("bits,sym,group_size,n", [(4, True, 32, 37), (3, True, 64, 19), (4, False, 64, 37),
                                                   (3, False, 32, 23), (4, False, 128, 5), (4, True, -1, 9)])
def test_matches_a_per_group_transcription(bits, sym, group_size, n):
    k = 256
    w, ms = _case(n, k, seed=bits * 7 + n)
    qt = imp.importance_round(w, ms, bits, group_size, sym, torch.float16)
    g = k if group_size == -1 else group_size
    x, m = w.double().numpy(), ms.double().numpy()
    half = 2 ** (bits - 1)
    d = dequantize(qt, torch.float64).numpy()
    equal = total = 0
    for r in range(n):
        v_row = _weights(x[r], m)
        for j in range(k // g):
            sl, v = slice(j * g, (j + 1) * g), v_row[slice(j * g, (j + 1) * g)]
            ours = qt.codes[r, sl].numpy().astype(np.float64)
            if sym:
                q, s = _ref_sym(x[r, sl], v, bits)

                def gain(c):  # what the refit scale removes from the weighted error
                    lc = c - half
                    return (v * x[r, sl] * lc).sum() ** 2 / (v * lc * lc).sum()

                # float32 sums may pick another of two trials within rounding of each other
                assert gain(ours) >= gain(q) * (1 - 1e-6)
            else:
                q, z, s = _ref_asym(x[r, sl], v, bits)
                ref_err = (v * (x[r, sl] - s * (q - z)) ** 2).sum()
                assert (v * (x[r, sl] - d[r, sl]) ** 2).sum() <= ref_err * (1 + 1e-4) + 1e-12
            same = np.array_equal(q, ours)
            equal += same
            total += 1
            if same:  # the same trial won: the same refit scale up to float32 sums and float16 storage
                assert float(qt.scales[r, j]) == pytest.approx(float(np.float16(s)), rel=2e-3, abs=1e-6)
                assert sym or float(qt.zeros[r, j]) == z
    assert equal >= 0.85 * total, (equal, total)


@pytest.mark.parametrize("bits,sym,group_size", [(4, True, 32), (3, True, 64), (4, False, 64), (3, False, 32)])
def test_weighted_error_at_most_round_to_nearest(bits, sym, group_size):
    w, ms = _case(41, 320, seed=3)
    qt = imp.importance_round(w, ms, bits, group_size, sym, torch.float16)
    rtn = quantize_tensor(w, bits=bits, group_size=group_size, sym=sym)
    v = (ms * torch.sqrt((w * w).mean(-1, keepdim=True) + w * w)).reshape(41, -1, group_size)

    def err(q):
        return ((dequantize(q, torch.float32) - w) ** 2).reshape(41, -1, group_size).mul(v).sum(-1)

    e_imp, e_rtn = err(qt), err(rtn)
    if not sym:  # its first trial is round-to-nearest's grid: never worse, group by group
        assert bool((e_imp <= e_rtn * (1 + 1e-5) + 1e-12).all())
    # symmetric groups use all 2**bits levels, RTN 2**bits - 1: clearly better overall
    assert float(e_imp.sum()) < 0.9 * float(e_rtn.sum())
    assert int(qt.codes.max()) <= 2 ** bits - 1
    if sym:
        assert bool((qt.scales < 0).any()) and bool((qt.scales > 0).any())
        assert int(qt.codes.min()) == 0  # code -half is used


def test_chunks_do_not_change_the_result(monkeypatch):
    w, ms = _case(29, 192, seed=5)
    for sym in (True, False):
        whole = imp.importance_round(w, ms, 4, 64, sym, torch.float16)
        monkeypatch.setattr(imp, "_CHUNK_ELEMENTS", 192 * 4)  # four rows a chunk, the last one short
        parts = imp.importance_round(w, ms, 4, 64, sym, torch.float16)
        monkeypatch.undo()
        assert torch.equal(whole.codes, parts.codes) and torch.equal(whole.scales, parts.scales)
        assert sym or torch.equal(whole.zeros, parts.zeros)


def test_flat_groups_and_dead_inputs():
    w = torch.randn(4, 64)
    w[1, :32] = 0.0  # an all-zero group
    ms = torch.rand(64)
    ms[32:] = 0.0  # a group no input reaches: no weighting at all
    for sym in (True, False):
        qt = imp.importance_round(w, ms, 4, 32, sym, torch.float16)
        d = dequantize(qt, torch.float32)
        assert bool(torch.isfinite(d).all()) and bool((qt.scales.float().abs() >= 1e-5).all())
        assert torch.equal(d[1, :32], torch.zeros(32))
        # unweighted groups keep a usable grid: no worse than twice round-to-nearest's error
        rtn = dequantize(quantize_tensor(w, bits=4, group_size=32, sym=sym), torch.float32)
        assert float(((d - w)[:, 32:] ** 2).sum()) <= 2 * float(((rtn - w)[:, 32:] ** 2).sum()) + 1e-9


def test_negative_scales_run_through_the_packed_layer():
    from cat_core.nn import QuantLinear

    w, ms = _case(24, 96, seed=9)
    qt = imp.importance_round(w, ms, 4, 32, True, torch.float16)
    assert bool((qt.scales < 0).any())
    layer = QuantLinear.from_quantized_tensor(qt)
    x = torch.randn(5, 96)
    want = x @ dequantize(qt, torch.float32).T
    torch.testing.assert_close(layer(x), want, rtol=1e-4, atol=1e-4)


def test_config_spellings_and_refusals():
    assert QuantConfig(rounding="importance").rounding == Importance()
    assert QuantConfig(rounding="learned", learned_round_init="importance").rounding.init == Importance()
    assert QuantConfig(rounding=Learned(init=Importance())).uses_importance
    assert not QuantConfig(rounding=Learned(init=GPTQ())).uses_importance
    with pytest.raises(ValueError, match="minmax"):
        Learned(init=Importance(), minmax=True)
    with pytest.raises(ValueError, match="importance"):
        Learned(init="imatrix")


@pytest.mark.parametrize("rounding", ["importance", "learned"])
def test_pipeline_gives_every_linear_its_input_statistics(monkeypatch, rounding):
    seen: dict[str, torch.Tensor] = {}
    real = runner.importance_round

    def spy(w, column_ms, *args):
        seen[f"{len(seen)}"] = column_ms.clone()
        return real(w, column_ms, *args)

    monkeypatch.setattr(runner, "importance_round", spy)
    extra = dict(learned_round_init="importance", learned_round_iters=4, learned_round_batch=2,
                 learned_round_samples=4) if rounding == "learned" else {}
    cfg = dataclasses.replace(CFG, bits=4, sym=True, group_size=32, rounding=rounding, **extra)
    model = tiny_llama()
    n_linears = sum(1 for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and "lm_head" not in n)
    tensors, _ = _run(model, cfg, _samples(4, 32, seed=1))
    assert len(seen) == n_linears  # q and k too, though they are never clipped
    for ms in seen.values():
        assert bool((ms >= 0).all()) and bool(torch.isfinite(ms).all()) and float(ms.max()) > 0
    for qt in tensors.values():
        assert qt.zeros is None and int(qt.codes.max()) <= 15
    assert any(bool((qt.scales < 0).any()) for qt in tensors.values())


def test_without_the_scale_search_nothing_is_folded():
    cfg = dataclasses.replace(CFG, bits=4, sym=True, group_size=32, rounding="importance", scales=None)
    assert cfg.scales is None and QuantConfig(scales=False).scales is None
    assert QuantConfig(scales=None, n_grid=4).scales is None  # a scale-search keyword does not turn it back on
    model = tiny_llama()
    norms = {n: p.detach().clone() for n, p in model.named_parameters() if "norm" in n}
    tensors, reports = _run(model, cfg, _samples(4, 32, seed=2))
    assert reports == []  # no group was searched
    for n, p in model.named_parameters():
        if n in norms:
            assert torch.equal(p, norms[n]), n
    assert len(tensors) == 14
    with pytest.raises(ValueError, match="scales must be a ScaleSearch"):
        QuantConfig(scales="off")


def test_auto_searches_follow_the_rounding():
    from cat_core.config import ClipSearch, ScaleSearch

    for r in ("importance", Learned(init=Importance())):
        c = QuantConfig(rounding=r)
        assert c.scales is None and c.clip is None  # measured better without them on held-out text
    for r in ("nearest", "gptq", Learned(init=GPTQ())):
        c = QuantConfig(rounding=r)
        assert c.scales == ScaleSearch() and c.clip == ClipSearch()
    c = QuantConfig(rounding="importance", scales=True, n_clip_grid=5)  # asked for: on
    assert c.scales == ScaleSearch() and c.clip.n_grid == 5
    assert QuantConfig(rounding="importance", n_grid=7).scales.n_grid == 7
    assert QuantConfig(rounding="gptq", scales=None, clip=False).clip is None
    with pytest.raises(ValueError, match="clip must be"):
        QuantConfig(clip="sometimes")
