"""GPTQ error-feedback rounding (cat_core.awq._gptq) on fixed round-to-nearest groups."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from cat_core.awq import AWQError
from cat_core.awq._gptq import gptq_quantize
from cat_core.config import GPTQ, Learned, QuantConfig
from cat_core.quant import dequantize, quantize_tensor

pytestmark = pytest.mark.usefixtures("one_thread")

N, K, T = 37, 96, 768


def _problem(seed: int = 0, n: int = N, k: int = K):
    """Correlated inputs ``X = Z A`` (calibration and held-out), a weight, and the Gram of X."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(k, k, generator=g) / k**0.5
    x = torch.randn(T, k, generator=g) @ a
    x_held = torch.randn(T, k, generator=g) @ a
    w = torch.randn(n, k, generator=g)
    return x, x_held, w, x.T @ x / T


def _out_err(x: torch.Tensor, w: torch.Tensor, wq: torch.Tensor) -> float:
    return float((x @ w.T - x @ wq.T).norm())


def _check_layout(qt, ref, cfg: QuantConfig) -> None:
    """Scales and zeros are round-to-nearest's exactly; codes are in range; the reconstruction is
    ``(codes - zeros) * scales`` in quant.py's convention."""
    assert qt.codes.dtype == torch.uint8 and qt.codes.shape == ref.codes.shape
    assert torch.equal(qt.scales, ref.scales) and qt.scales.dtype == cfg.scale_torch_dtype
    if cfg.sym:
        assert qt.zeros is None and ref.zeros is None
    else:
        assert torch.equal(qt.zeros, ref.zeros) and qt.zeros.dtype == torch.uint8
    assert qt.bits == cfg.bits and qt.group_size == cfg.group_size
    assert int(qt.codes.max()) <= cfg.qmax
    n, k = qt.codes.shape
    g = k if cfg.group_size == -1 else cfg.group_size
    z = float(2 ** (cfg.bits - 1)) if qt.zeros is None else qt.zeros.float().repeat_interleave(g, 1)
    want = (qt.codes.float() - z) * qt.scales.float().repeat_interleave(g, 1)
    assert torch.equal(dequantize(qt), want)


@pytest.mark.parametrize("group_size", [32, -1])
@pytest.mark.parametrize("bits,sym", [(3, False), (4, True)])
def test_gptq_beats_rtn_on_correlated_inputs(bits, sym, group_size):
    x, x_held, w, h = _problem()
    # gptq_block=40 does not divide K=96: a partial last block
    cfg = QuantConfig(bits=bits, sym=sym, group_size=group_size, gptq_block=40)
    qt, ref = gptq_quantize(w, h, cfg), quantize_tensor(w, cfg)
    _check_layout(qt, ref, cfg)
    e_gptq, e_rtn = _out_err(x, w, dequantize(qt)), _out_err(x, w, dequantize(ref))
    h_gptq, h_rtn = _out_err(x_held, w, dequantize(qt)), _out_err(x_held, w, dequantize(ref))
    assert e_gptq < 0.8 * e_rtn, (e_gptq, e_rtn)  # about 0.7 measured
    assert h_gptq < 0.85 * h_rtn, (h_gptq, h_rtn)  # and on inputs it never saw
    assert (qt.codes != ref.codes).float().mean() > 0.05  # it did move codes


def test_gptq_block_size_only_regroups_the_updates():
    x, _, w, h = _problem(1)
    cfg = QuantConfig(bits=3, group_size=32)
    codes = [gptq_quantize(w, h, dataclasses.replace(cfg, gptq_block=b)).codes for b in (1, 40, 96, 128)]
    for c in codes[1:]:  # float rounding of the regrouped sums may flip a rare tie
        assert (c != codes[0]).float().mean() < 0.01


@pytest.mark.parametrize("bits,sym,group_size", [(3, False, 32), (4, True, 32), (3, False, -1), (4, True, -1)])
def test_uncorrelated_inputs_give_round_to_nearest_codes(bits, sym, group_size):
    """A diagonal Gram has a diagonal inverse factor: no error moves, the codes are RTN's bit for bit."""
    _, _, w, _ = _problem(2)
    cfg = QuantConfig(bits=bits, sym=sym, group_size=group_size, gptq_block=40)
    ref = quantize_tensor(w, cfg)
    diag = torch.rand(K, generator=torch.Generator().manual_seed(3)) + 0.1
    for h in (torch.eye(K), torch.diag(diag)):
        qt = gptq_quantize(w, h, cfg)
        assert torch.equal(qt.codes, ref.codes)
        _check_layout(qt, ref, cfg)


def test_gptq_is_deterministic():
    _, _, w, h = _problem(4)
    cfg = QuantConfig(bits=3, group_size=32)
    a, b = gptq_quantize(w, h, cfg), gptq_quantize(w.clone(), h.clone(), cfg)
    assert torch.equal(a.codes, b.codes) and torch.equal(a.scales, b.scales) and torch.equal(a.zeros, b.zeros)


def test_dead_inputs_neither_pass_nor_receive_errors():
    x, _, w, _ = _problem(5)
    dead = [0, 7, 50, 95]
    x[:, dead] = 0.0
    h = x.T @ x / T
    cfg = QuantConfig(bits=3, group_size=32)
    qt, ref = gptq_quantize(w, h, cfg), quantize_tensor(w, cfg)
    assert torch.equal(qt.codes[:, dead], ref.codes[:, dead])  # nothing reached them
    assert _out_err(x, w, dequantize(qt)) < 0.8 * _out_err(x, w, dequantize(ref))
    # errors of dead columns go nowhere: moving their weights (same grid) changes no other code
    w2 = w.clone()
    w2[:, dead] += torch.randn(N, len(dead), generator=torch.Generator().manual_seed(6))
    qt2 = gptq_quantize(w, h, cfg, target=w2)
    live = [c for c in range(K) if c not in dead]
    assert torch.equal(qt2.codes[:, live], qt.codes[:, live])
    assert not torch.equal(qt2.codes[:, dead], qt.codes[:, dead])
    all_dead = gptq_quantize(w, torch.zeros(K, K), cfg)  # no input at all: plain rounding
    assert torch.equal(all_dead.codes, ref.codes)


def test_target_feeds_the_clipping_error_back():
    """The grid comes from the clipped weight; reproducing the unclipped one beats taking the
    clipped values as exact."""
    x, x_held, w, h = _problem(7)
    w[:, 3::17] *= 4.0  # outliers worth clipping
    cfg = QuantConfig(bits=3, group_size=32)
    wg = w.reshape(N, -1, 32)
    clipped = torch.maximum(torch.minimum(wg, 0.7 * wg.amax(-1, keepdim=True)),
                            0.7 * wg.amin(-1, keepdim=True)).reshape(N, K)
    plain = gptq_quantize(clipped, h, cfg)
    fed = gptq_quantize(clipped, h, cfg, target=w)
    _check_layout(fed, quantize_tensor(clipped, cfg), cfg)
    assert _out_err(x, w, dequantize(fed)) < 0.9 * _out_err(x, w, dequantize(plain))
    assert _out_err(x_held, w, dequantize(fed)) < _out_err(x_held, w, dequantize(plain))
    with pytest.raises(ValueError, match="target of lin must have shape"):
        gptq_quantize(clipped, h, cfg, name="lin", target=w[:, :64])


def test_damping_retries_then_raises_naming_the_linear():
    cfg = QuantConfig(bits=4, group_size=-1)
    w = torch.randn(5, 2, generator=torch.Generator().manual_seed(8))
    with pytest.raises(ValueError, match="group_size"):
        gptq_quantize(w, torch.eye(2), QuantConfig(bits=4, group_size=32))
    # eigenvalues 3 and -1: indefinite until the dampening reaches the mean diagonal
    qt = gptq_quantize(w, torch.tensor([[1.0, 2.0], [2.0, 1.0]]), cfg, name="blk.lin")
    assert int(qt.codes.max()) <= cfg.qmax
    with pytest.raises(AWQError, match=r"blk\.lin.*not positive definite"):
        gptq_quantize(w, torch.tensor([[1.0, 1e6], [1e6, 1.0]]), cfg, name="blk.lin")
    with pytest.raises(AWQError, match=r"non-finite input Gram of blk\.lin"):
        gptq_quantize(w, torch.tensor([[1.0, float("nan")], [0.0, 1.0]]), cfg, name="blk.lin")
    with pytest.raises(ValueError, match=r"gram of blk\.lin must have shape \(2, 2\)"):
        gptq_quantize(w, torch.eye(3), cfg, name="blk.lin")


@pytest.mark.parametrize("kwargs,match", [
    ({"rounding": "rtn"}, r"rounding must be Nearest\(\), GPTQ\(...\), Importance\(\), Learned\(...\) or one of \('nearest', 'gptq', 'importance', 'learned'\)"),
    ({"rounding": None}, "rounding"),
    ({"gptq_damp": 0.0}, r"gptq_damp must be a float in \(0, 1\)"),
    ({"gptq_damp": 1.0}, "gptq_damp"),
    ({"gptq_damp": True}, "gptq_damp"),
    ({"gptq_damp": "0.01"}, "gptq_damp"),
    ({"gptq_block": 0}, "gptq_block must be an int >= 1"),
    ({"gptq_block": 64.0}, "gptq_block"),
    ({"gptq_block": True}, "gptq_block"),
])
def test_config_rejects(kwargs, match):
    with pytest.raises(ValueError, match=match):
        QuantConfig(**kwargs)


def test_config_defaults_and_normalizes():
    c = QuantConfig()
    assert c.rounding == Learned(init=GPTQ(damp=0.1, block=128))
    c = QuantConfig(rounding="gptq", gptq_damp=0.2, gptq_block=1)
    assert c.rounding == GPTQ(damp=0.2, block=1)
    d = QuantConfig(gptq_damp=1e-3)  # learned rounding's GPTQ start
    assert isinstance(d.rounding.init.damp, float) and d.rounding.init.damp == 1e-3
