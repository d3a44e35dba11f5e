"""PackedWeight: validated once, then bit-identical to gemm/dequantize on every call; x and out
still checked per call; the arrays kept alive and read afresh."""

from __future__ import annotations

import gc

import numpy as np
import pytest

import cat_kernels as ck
from _cases import make_case
from test_ops import check_gemm


@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "asym"])
@pytest.mark.parametrize("group_size", [32, 64, 128, -1])
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_matches_functions(rng, bits, group_size, symmetric):
    n, k = (45, 384) if group_size != -1 else (45, 333)
    case = make_case(rng, n, k, bits, group_size, symmetric)
    pw = ck.PackedWeight(case.packed, case.scales, case.zeros_packed, group_size, k=k)
    assert (pw.n, pw.k, pw.bits, pw.group_size, pw.device) == (n, k, bits, group_size, "cpu")
    for m in (0, 1, 3, 8, 17, 64):
        x = rng.standard_normal((m, k)).astype(np.float32)
        y = pw.gemm(x)
        assert y.shape == (m, n) and y.dtype == np.float32
        np.testing.assert_array_equal(y, ck.gemm(x, case.packed, case.scales, case.zeros_packed, group_size))
        check_gemm(case, x, y, "float32")
    np.testing.assert_array_equal(pw.dequantize("float32"), case.w)
    assert pw.dequantize().dtype == np.float32  # the scales' dtype by default


def test_reads_current_contents_and_keeps_arrays_alive(rng):
    case = make_case(rng, 33, 256, 3, 64, False)
    scales = case.scales.copy()
    pw = ck.PackedWeight(case.packed.copy(), scales, case.zeros_packed.copy(), 64)
    x = rng.standard_normal((2, 256)).astype(np.float32)
    before = pw.gemm(x)
    scales *= 2.0  # in place: seen by the next call
    np.testing.assert_array_equal(pw.gemm(x), ck.gemm(x, case.packed, scales, case.zeros_packed, 64))
    np.testing.assert_allclose(pw.gemm(x), 2.0 * before, rtol=1e-6, atol=1e-6)
    del scales
    gc.collect()
    np.testing.assert_allclose(pw.gemm(x), 2.0 * before, rtol=1e-6, atol=1e-6)


def test_out_argument(rng):
    case = make_case(rng, 20, 128, 4, 32, True)
    pw = ck.PackedWeight(case.packed, case.scales, None, 32)
    x = rng.standard_normal((5, 128)).astype(np.float32)
    out = np.full((5, 20), np.nan, np.float32)
    assert pw.gemm(x, out=out) is out
    np.testing.assert_array_equal(out, ck.gemm(x, case.packed, case.scales, None, 32))
    with pytest.raises(ValueError, match="out"):
        pw.gemm(x, out=np.empty((5, 21), np.float32))
    with pytest.raises(ValueError, match="out"):
        pw.gemm(x, out=np.empty((5, 20), np.float16))


def test_bad_x(rng):
    case = make_case(rng, 20, 128, 4, 64, False)
    pw = ck.PackedWeight(case.packed, case.scales, case.zeros_packed, 64)
    with pytest.raises(ValueError, match=r"x: expected shape \[M, 128\]"):
        pw.gemm(np.zeros((2, 96), np.float32))
    with pytest.raises(ValueError, match="x: expected a 2-D"):
        pw.gemm(np.zeros((2, 1, 128), np.float32))
    with pytest.raises(TypeError, match="x: expected dtype"):
        pw.gemm(np.zeros((2, 128), np.float64))
    with pytest.raises(ValueError, match="x: must be C-contiguous"):
        pw.gemm(np.zeros((128, 2), np.float32).T)
    with pytest.raises(TypeError, match="x"):
        pw.gemm([[0.0] * 128])
    with pytest.raises(TypeError, match="dtype"):
        pw.dequantize("int8")


def test_bad_weight_is_rejected_up_front(rng):
    case = make_case(rng, 20, 128, 4, 64, False)
    with pytest.raises(ValueError, match="scales"):
        ck.PackedWeight(case.packed, case.scales[:, :1], case.zeros_packed, 64)
    with pytest.raises(ValueError, match="group_size"):
        ck.PackedWeight(case.packed, case.scales, case.zeros_packed, 48)
    with pytest.raises(ValueError, match="k: required"):
        ck.PackedWeight(case.packed, np.ascontiguousarray(case.scales[:, :1]), case.zeros_packed, -1)
    with pytest.raises(ValueError, match="zeros"):
        ck.PackedWeight(case.packed, case.scales, case.packed, 64)


@pytest.mark.torch
def test_torch_tensors(rng):
    torch = pytest.importorskip("torch")
    case = make_case(rng, 37, 320, 3, 64, False, "float16")
    packed, zp = torch.from_numpy(case.packed), torch.from_numpy(case.zeros_packed)
    scales = torch.from_numpy(case.scales_np())
    pw = ck.PackedWeight(packed, scales, zp, 64)
    assert pw.dequantize().dtype == torch.float16
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        for m in (0, 1, 7, 19):
            x = torch.randn(m, 320).to(dtype)
            y = pw.gemm(x)
            assert isinstance(y, torch.Tensor) and y.dtype == dtype and y.shape == (m, 37)
            assert torch.equal(y, ck.gemm(x, packed, scales, zp, 64))
            out = torch.empty(m, 37, dtype=dtype)
            assert pw.gemm(x, out=out) is out and torch.equal(out, y)
    # a view with an offset into a larger buffer: the pointer path must honour the offset
    big = torch.randn(4, 320)
    assert torch.equal(pw.gemm(big[2:]), ck.gemm(big[2:].contiguous(), packed, scales, zp, 64))
    xg = torch.randn(2, 320, requires_grad=True)
    assert torch.equal(pw.gemm(xg), ck.gemm(xg.detach(), packed, scales, zp, 64))
    with pytest.raises(TypeError, match="x: expected dtype"):
        pw.gemm(torch.zeros(2, 320, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"x: expected shape \[M, 320\]"):
        pw.gemm(torch.zeros(2, 319))
    with pytest.raises(ValueError, match="x: must be C-contiguous"):
        pw.gemm(torch.zeros(320, 2).T)
    with pytest.raises(ValueError, match="x: expected a 2-D"):
        pw.gemm(torch.zeros(320))
    with pytest.raises(ValueError, match="x: expected an array on cpu"):
        pw.gemm(torch.zeros(2, 320, device="meta"))
    with pytest.raises(ValueError, match="out: expected shape"):
        pw.gemm(torch.zeros(2, 320), out=torch.empty(3, 37))
    with pytest.raises(TypeError, match="out: expected dtype"):
        pw.gemm(torch.zeros(2, 320), out=torch.empty(2, 37, dtype=torch.float16))
    with pytest.raises(ValueError, match="out: must be C-contiguous"):
        pw.gemm(torch.zeros(2, 320), out=torch.empty(37, 2).T)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("group_size", [32, 96, -1])
@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "asym"])
def test_dequantize_rows_are_rows_of_dequantize(rng, bits, group_size, symmetric):
    # 37 rows (a padded tile), K = 288: 9 blocks, 9 / 3 / 1 groups
    case = make_case(rng, 37, 288, bits, group_size, symmetric, "float16")
    pw = ck.PackedWeight(case.packed, case.scales_np(), case.zeros_packed, group_size, k=288)
    dense = pw.dequantize(np.float32)
    ids = rng.integers(0, 37, size=11)
    ids[0], ids[1] = 0, 36
    np.testing.assert_array_equal(pw.dequantize_rows(ids), dense[ids])
    np.testing.assert_array_equal(pw.dequantize_rows(ids.astype(np.int32)), dense[ids])
    assert pw.dequantize_rows(np.zeros(0, np.int64)).shape == (0, 288)
    with pytest.raises(IndexError, match="37 out of range"):
        pw.dequantize_rows(np.array([3, 37]))
    with pytest.raises(IndexError, match="-1 out of range"):
        pw.dequantize_rows(np.array([-1]))
    with pytest.raises(TypeError, match="ids"):
        pw.dequantize_rows(np.array([[1, 2]]))
    with pytest.raises(TypeError, match="ids"):
        pw.dequantize_rows(np.array([1.0]))
