"""The amx path (AMX-BF16 tiles for float-x products of 16 rows or more; kernels_amx.cpp) against
the float64 reference, on CPUs that have it. Elsewhere the path does not exist: ``amx`` is then
absent from ``_available_isas()`` and refused by ``_set_isa`` (checked here too)."""

from __future__ import annotations

import numpy as np
import pytest

import cat_kernels as ck
from cat_kernels import _C
from _cases import make_case
from test_ops import check_gemm

HAVE_AMX = "amx" in _C._available_isas()
needs_amx = pytest.mark.skipif(not HAVE_AMX, reason="this CPU has no AMX-BF16 (the amx path is not offered)")


def test_amx_offered_only_where_supported():
    if HAVE_AMX:
        _C._set_isa("amx")
        assert ck.build_info()["cpu_isa"] == "amx"
    else:
        with pytest.raises(RuntimeError, match="not supported"):
            _C._set_isa("amx")


def _gemm(case, x, g):
    return ck.gemm(x, case.packed, case.scales_np(), case.zeros_packed, g)


@needs_amx
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_against_reference(rng, bits):
    """Row counts around the 16-row tiles and the 16 / 32 / 64-row work items, K not a multiple of
    32 (zero-padded blocks), N not a multiple of 16, symmetric and asymmetric, every output."""
    _C._set_isa("amx")
    for n, k, g, sym in ((35, 1000, -1, False), (50, 576, 64, True), (17, 4096, 128, False), (40, 224, 32, False)):
        case = make_case(rng, n, k, bits, g, sym, "float16")
        for m in (16, 17, 31, 48, 64, 65, 130):
            x = rng.standard_normal((m, k)).astype(np.float32)
            check_gemm(case, x, _gemm(case, x, g))


@needs_amx
def test_long_rows_take_smaller_items(rng):
    """K = 12001 makes a 64-row chunk of x pieces 4.6 MB, so work items shrink to 16 rows."""
    _C._set_isa("amx")
    case = make_case(rng, 20, 12001, 4, -1, False, "float16")
    x = rng.standard_normal((70, 12001)).astype(np.float32)
    check_gemm(case, x, _gemm(case, x, -1))


@needs_amx
def test_exact_split_of_float32(rng):
    """x spanning 60 binary orders of magnitude, with values that need all 24 bits: the three
    bfloat16 pieces hold each exactly, so the error stays that of float32 sums. Compared with
    the avx512 float kernel, not only the reference."""
    case = make_case(rng, 33, 320, 4, 32, False, "float16")
    x = (rng.standard_normal((21, 320)) * 2.0 ** rng.integers(-30, 30, (21, 320))).astype(np.float32)
    x[:, ::7] += np.float32(1 + 2 ** -23)
    _C._set_isa("amx")
    y = _gemm(case, x, 32)
    check_gemm(case, x, y)
    _C._set_isa("avx512")
    y_float = _gemm(case, x, 32)
    scale = np.abs(x).astype(np.float64) @ np.abs(case.w.astype(np.float64)).T
    assert (np.abs(y.astype(np.float64) - y_float) <= 1e-5 * scale + 1e-30).all()


@pytest.mark.torch
@needs_amx
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_x(rng, dtype):
    """16-bit x needs fewer pieces (bfloat16 one, float16 two): same reference check."""
    torch = pytest.importorskip("torch")
    _C._set_isa("amx")
    case = make_case(rng, 40, 640, 4, 64, False, "float16")
    xt = torch.from_numpy(rng.standard_normal((37, 640)).astype(np.float32)).to(getattr(torch, dtype))
    y = ck.gemm(xt, torch.from_numpy(case.packed), torch.from_numpy(case.scales_np()),
                torch.from_numpy(case.zeros_packed), 64)
    check_gemm(case, xt.float().numpy(), y.float().numpy(), out_dtype=dtype)


@needs_amx
def test_non_finite_x(rng):
    """An infinity or NaN in x reaches the outputs of its row as float32 arithmetic would: inf
    times codes of both signs (and zeros) gives NaN, NaN stays NaN; other rows are unaffected."""
    _C._set_isa("amx")
    case = make_case(rng, 16, 256, 4, 64, False, "float16")
    x = rng.standard_normal((20, 256)).astype(np.float32)
    x[3, 5] = np.inf
    x[7, 100] = np.nan
    y = _gemm(case, x, 64)
    with np.errstate(invalid="ignore"):
        ref = x.astype(np.float64) @ case.w.astype(np.float64).T
    assert np.isnan(y[7]).all()
    np.testing.assert_array_equal(np.isnan(y[3]), np.isnan(ref[3]))
    np.testing.assert_array_equal(np.isinf(y[3]), np.isinf(ref[3]))
    ok = [i for i in range(20) if i not in (3, 7)]
    check_gemm(case, x[ok], y[ok])


@needs_amx
def test_deterministic_across_threads(rng):
    _C._set_isa("amx")
    case = make_case(rng, 300, 1024, 3, 128, False, "float16")
    x = rng.standard_normal((100, 1024)).astype(np.float32)
    base = _gemm(case, x, 128)
    for threads in (1, 2, 3):
        _C._set_num_threads(threads)
        np.testing.assert_array_equal(base, _gemm(case, x, 128))


@needs_amx
@pytest.mark.parametrize("bits,group_size", [(4, 32), (3, -1)])
def test_decoder_prompt_on_tiles(rng, bits, group_size):
    """A native decoder step over a 2 x 21-token prompt runs its fused q/k/v (gemm_same_x) and
    gate/up (gemm_pair_combine) products on the amx path (42 rows); hidden states and the KV
    cache match the float64 reference, then single tokens continue from that cache."""
    from test_decoder import _Model, _close

    _C._set_isa("amx")
    model = _Model(rng, bits=bits, group_size=group_size)
    batch, total = 2, 23
    emb = rng.standard_normal((batch, total, model.hidden)).astype(np.float32)
    kv = np.full(model.dec.kv_shape(total, batch), np.nan, np.float32)
    out = np.empty((batch, model.hidden), np.float32)
    pos = 0
    for m in (21, 1, 1):
        model.dec.step(np.ascontiguousarray(emb[:, pos:pos + m]), pos, kv, out)
        pos += m
        for b in range(batch):
            ref, keys, values = model.forward(emb[b, :pos])
            _close(out[b], ref, f"sequence {b}: hidden after {pos} tokens")
            _close(kv[:, 0, b, :, :pos], keys, f"sequence {b}: keys after {pos} tokens")
            _close(kv[:, 1, b, :, :pos], values, f"sequence {b}: values after {pos} tokens")
