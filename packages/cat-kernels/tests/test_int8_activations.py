"""gemm with int8 activations (``int8_activations=True``) against a numpy model of its contract:
x rounded to int8 per block of 32 columns (d = max|x| / 127, q = rint(x / d) computed as
x * (1 / d)), then the exact product of the rounded x with the dequantized weight."""

from __future__ import annotations

import numpy as np
import pytest

import cat_kernels as ck
from cat_kernels import _C
from _cases import make_case
from _reference import gemm_ref, gemm_tolerance, round_to_bf16


def quantize_x_ref(x: np.ndarray) -> np.ndarray:
    """x [M, K] float32 -> the int8-rounded x (q * d) as float64, same shape."""
    m, k = x.shape
    kp = -(-k // 32) * 32
    xp = np.zeros((m, kp), np.float32)
    xp[:, :k] = x
    b = xp.reshape(m, kp // 32, 32)
    amax = np.abs(b).max(axis=2)
    d = (amax / np.float32(127)).astype(np.float32)
    inv = np.zeros_like(d)
    np.divide(np.float32(1), d, out=inv, where=d != 0)
    q = np.clip(np.rint(b * inv[:, :, None]), -127, 127)
    return (q.astype(np.float64) * d[:, :, None].astype(np.float64)).reshape(m, kp)[:, :k]


def check_int8(case, x, y):
    xhat = quantize_x_ref(x.astype(np.float32))
    ref = gemm_ref(xhat, case.w)
    tol = gemm_tolerance(xhat, case.scales, case.bits, case.group_size, "float32")
    err = np.abs(y.astype(np.float64) - ref)
    bad = err > tol
    if bad.any():
        i = np.argwhere(bad)[0]
        raise AssertionError(f"{bad.sum()} of {bad.size} elements off; first at {tuple(i)}: got {y[tuple(i)]}, "
                             f"want {ref[tuple(i)]} +- {tol[tuple(i)]}")


def isas():
    return list(_C._available_isas())


@pytest.mark.parametrize("isa", isas())
@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "asym"])
@pytest.mark.parametrize("group_size", [32, 64, 128, -1])
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_against_reference(rng, isa, bits, group_size, symmetric):
    # N = 40: three tiles, the last padded; K = 384 (or 200 with one group per row: a padded block).
    k = 200 if group_size == -1 else 384
    case = make_case(rng, 40, k, bits, group_size, symmetric)
    _C._set_isa(isa)
    for m in (1, 3, 9, 70):  # 70 rows: a chunk of 64 and a remainder, every row block size
        x = (rng.standard_normal((m, k)) * rng.uniform(0.1, 3.0)).astype(np.float32)
        x[:, rng.integers(0, k, size=3)] *= 20.0  # outlier columns, as activations have
        y = ck.gemm(x, case.packed, case.scales, case.zeros_packed, group_size, int8_activations=True)
        check_int8(case, x, y)


@pytest.mark.parametrize("bits", [3, 4])
def test_large_shapes_split_k_and_threads(rng, bits):
    """A tall and a wide weight (split K, several pool items), at 1 and 2 threads: identical
    results whatever the thread count, and within the bound of the reference."""
    for n, k in ((1000, 576), (72, 4096)):
        case = make_case(rng, n, k, bits, 64, False, "float16")
        scales = case.scales_np()
        x = rng.standard_normal((5, k)).astype(np.float32)
        _C._set_num_threads(1)
        y1 = ck.gemm(x, case.packed, scales, case.zeros_packed, 64, int8_activations=True)
        _C._set_num_threads(2)
        y2 = ck.gemm(x, case.packed, scales, case.zeros_packed, 64, int8_activations=True)
        np.testing.assert_array_equal(y1, y2)
        check_int8(case, x, y2)


def test_isas_agree(rng):
    """Integer dot products are exact and the float steps are the same on every path: results
    agree across kernel paths to float32 rounding of the per-block sums."""
    case = make_case(rng, 48, 640, 4, 128, False)
    x = rng.standard_normal((7, 640)).astype(np.float32)
    ys = {}
    for isa in isas():
        _C._set_isa(isa)
        ys[isa] = ck.gemm(x, case.packed, case.scales, case.zeros_packed, 128, int8_activations=True)
    base = next(iter(ys.values()))
    for isa, y in ys.items():
        np.testing.assert_allclose(y, base, rtol=1e-5, atol=1e-5 * np.abs(base).max(), err_msg=isa)


def test_half_inputs_and_packed_weight(rng):
    case = make_case(rng, 33, 256, 4, 64, False)
    x = rng.standard_normal((4, 256)).astype(np.float32)
    pw = ck.PackedWeight(case.packed, case.scales, case.zeros_packed, 64, int8_activations=True)
    assert pw.int8_activations
    y = pw.gemm(x)
    np.testing.assert_array_equal(y, ck.gemm(x, case.packed, case.scales, case.zeros_packed, 64,
                                             int8_activations=True))
    check_int8(case, x, y)
    pw.int8_activations = False
    np.testing.assert_array_equal(pw.gemm(x), ck.gemm(x, case.packed, case.scales, case.zeros_packed, 64))
    x16 = x.astype(np.float16)
    y16 = ck.gemm(x16, case.packed, case.scales, case.zeros_packed, 64, int8_activations=True)
    assert y16.dtype == np.float16
    ref = gemm_ref(quantize_x_ref(x16.astype(np.float32)), case.w)
    np.testing.assert_allclose(y16.astype(np.float64), ref, rtol=2e-3, atol=2e-3 * np.abs(ref).max())


def test_zero_and_nonfinite_blocks(rng):
    case = make_case(rng, 20, 128, 4, 32, False)
    x = rng.standard_normal((3, 128)).astype(np.float32)
    x[0, 32:64] = 0.0  # d = 0: the block contributes nothing
    x[1, 70] = np.nan
    x[2, 5] = np.inf
    y = ck.gemm(x, case.packed, case.scales, case.zeros_packed, 32, int8_activations=True)
    check_int8(case, x[:1], y[:1])
    assert np.isnan(y[1]).all() and np.isnan(y[2]).all()  # never a silently finite result


def test_rounding_changes_results_the_float_path_does_not(rng):
    """The option is live: the int8 result differs from the float path's, by about x's rounding."""
    case = make_case(rng, 64, 512, 4, 128, False)
    x = rng.standard_normal((2, 512)).astype(np.float32)
    yf = ck.gemm(x, case.packed, case.scales, case.zeros_packed, 128)
    yq = ck.gemm(x, case.packed, case.scales, case.zeros_packed, 128, int8_activations=True)
    assert not np.array_equal(yf, yq)
    rel = np.linalg.norm(yq - yf) / np.linalg.norm(yf)
    assert rel < 0.02, rel  # Q8_0-style rounding: well under a percent on Gaussian x


def test_which_widths_take_an_integer_kernel():
    """AVX-512 VNNI: every width; AVX2 (and AVX-512 without VNNI): 2, 4 and 8 bits; scalar: none
    (the float kernels then multiply the rounded x, checked by the tests above on every path)."""
    for isa in isas():
        _C._set_isa(isa)
        got = {b: bool(_C._int8_kernel(b)) for b in (2, 3, 4, 8)}
        if isa == "scalar":
            assert not any(got.values())
        elif isa == "avx2":
            assert got == {2: True, 3: False, 4: True, 8: True}
        else:
            assert got[2] and got[4] and got[8]  # and 3 bits with VNNI
