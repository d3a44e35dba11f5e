"""dequantize and gemm against the numpy reference, over every supported configuration."""

from __future__ import annotations

import numpy as np
import pytest

import cat_kernels as ck
from _cases import make_case
from _reference import gemm_ref, gemm_tolerance, output_rtol

BITS = [2, 3, 4, 8]
GROUPS = [32, 64, 128, -1]
MS = [1, 3, 8, 17, 64]


def check_gemm(case, x, y, out_dtype="float32"):
    """Every element of y against the float64 reference (tolerance: see gemm_tolerance)."""
    xf = x.astype(np.float32)
    ref = gemm_ref(xf, case.w)
    tol = gemm_tolerance(xf, case.scales, case.bits, case.group_size, out_dtype)
    tol = tol + np.abs(ref) * output_rtol(out_dtype)
    err = np.abs(y.astype(np.float64) - ref)
    bad = err > tol
    if bad.any():
        i = np.argwhere(bad)[0]
        raise AssertionError(
            f"{bad.sum()} of {bad.size} elements off; first at {tuple(i)}: got {y[tuple(i)]}, "
            f"want {ref[tuple(i)]} +- {tol[tuple(i)]}"
        )


@pytest.mark.parametrize("scale_dtype", ["float32", "float16"])
@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "asym"])
@pytest.mark.parametrize("group_size", GROUPS)
@pytest.mark.parametrize("bits", BITS)
def test_grid(rng, bits, group_size, symmetric, scale_dtype):
    # N = 40: three tiles, the last one padded; K = 256 holds 8, 4, 2 or 1 groups.
    case = make_case(rng, 40, 256, bits, group_size, symmetric, scale_dtype)
    scales, zp = case.scales_np(), case.zeros_packed
    # dequantize is bit-exact: one float32 product, rounded once to the output dtype.
    for dt in ("float32", "float16"):
        w = ck.dequantize(case.packed, scales, zp, group_size, k=case.k, dtype=dt)
        assert w.dtype == np.dtype(dt) and w.shape == (case.n, case.k)
        np.testing.assert_array_equal(w, case.w.astype(dt))
    w = ck.dequantize(case.packed, scales, zp, group_size, k=case.k)  # default: scales' dtype
    assert w.dtype == scales.dtype
    for m in MS:
        x = rng.standard_normal((m, case.k)).astype(np.float32)
        y = ck.gemm(x, case.packed, scales, zp, group_size)
        assert y.dtype == np.float32 and y.shape == (m, case.n)
        check_gemm(case, x, y)
    x16 = rng.standard_normal((5, case.k)).astype(np.float16)
    y16 = ck.gemm(x16, case.packed, scales, zp, group_size)
    assert y16.dtype == np.float16
    check_gemm(case, x16, y16, "float16")


@pytest.mark.parametrize(
    "n, k, group_size",
    [
        (1, 1000, -1),  # odd K, one group, a single row
        (37, 1000, -1),
        (33, 7, -1),  # K shorter than one block
        (50, 672, 96),  # non-power-of-two group (3 blocks)
        (16, 4096, 128),  # one tile: split-K across many work items
        (24, 4096, -1),  # split-K inside a single group
        (300, 2048, 2048),  # group given explicitly as K
        (20, 32 * 40, 32),  # more than 32 groups: zero points span two packed blocks
    ],
)
@pytest.mark.parametrize("bits", BITS)
def test_shapes(rng, n, k, group_size, bits):
    symmetric = bool(rng.integers(2))
    case = make_case(rng, n, k, bits, group_size, symmetric, "float16")
    scales, zp = case.scales_np(), case.zeros_packed
    np.testing.assert_array_equal(
        ck.dequantize(case.packed, scales, zp, group_size, k=k, dtype="float32"), case.w
    )
    for m in (1, 3, 17, 70):
        x = rng.standard_normal((m, k)).astype(np.float32)
        check_gemm(case, x, ck.gemm(x, case.packed, scales, zp, group_size))


def test_out_argument(rng):
    case = make_case(rng, 32, 128, 4, 64, False)
    x = rng.standard_normal((4, 128)).astype(np.float32)
    out = np.full((4, 32), np.nan, np.float32)
    y = ck.gemm(x, case.packed, case.scales, case.zeros_packed, 64, out=out)
    assert y is out
    check_gemm(case, x, out)


def test_empty_batch(rng):
    case = make_case(rng, 32, 128, 4, 64, True)
    y = ck.gemm(np.zeros((0, 128), np.float32), case.packed, case.scales, None, 64)
    assert y.shape == (0, 32)


def test_dequantize_k_inferred(rng):
    case = make_case(rng, 20, 256, 3, 64, False)
    w = ck.dequantize(case.packed, case.scales, case.zeros_packed, 64)
    np.testing.assert_array_equal(w, case.w)


def test_special_values(rng):
    """NaN/inf in x propagate to the outputs of the rows they touch, nothing else breaks."""
    case = make_case(rng, 16, 64, 4, 32, True)
    x = rng.standard_normal((2, 64)).astype(np.float32)
    x[1, 5] = np.inf
    y = ck.gemm(x, case.packed, case.scales, None, 32)
    assert np.isfinite(y[0]).all()
    assert not np.isfinite(y[1]).all()


def test_half_conversion_rounding(rng):
    """The float32 -> float16 rounding of the outputs matches numpy (nearest even), including
    subnormals, overflow to inf, NaN and values exactly halfway. With q - z = 1 dequantize
    returns the scales themselves, rounded once to the output dtype."""
    vals = np.concatenate([
        rng.standard_normal(2000).astype(np.float32) * 10.0 ** rng.integers(-9, 6, 2000),
        np.array([65504, 65519.99, 65520, 1e6, -1e6, 1e-8, 2.0**-24, 2.0**-25, 3 * 2.0**-25,
                  2.0**-14 - 2.0**-26, 0.0, -0.0, np.inf, -np.inf], np.float32),
        (np.arange(1, 300, dtype=np.float32) * 2.0**-11 + 1).astype(np.float32),
    ]).astype(np.float32)
    vals = np.resize(vals, 16 * (vals.size // 16 + 1)).reshape(16, -1)  # [16 rows, ng groups]
    n, ng = vals.shape
    codes = ck.pack(np.ones((n, ng * 32), np.uint8), 8)
    zeros = ck.pack_zeros(np.zeros((n, ng), np.int32), 8)
    w16 = ck.dequantize(codes, vals, zeros, 32, dtype="float16")
    with np.errstate(over="ignore"):  # 1e6 -> inf is one of the cases
        want = np.repeat(vals, 32, axis=1).astype(np.float16)
    np.testing.assert_array_equal(w16, want)
    w32 = ck.dequantize(codes, vals, zeros, 32, dtype="float32")
    np.testing.assert_array_equal(w32, np.repeat(vals, 32, axis=1))
