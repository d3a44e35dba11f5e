"""Every argument check: bad input raises ValueError/TypeError naming the argument, never
crashes."""

from __future__ import annotations

import numpy as np
import pytest

import cat_kernels as ck
from _cases import make_case


@pytest.fixture
def case(rng):
    return make_case(rng, 40, 256, 4, 64, False)


def test_pack_bits():
    codes = np.zeros((16, 32), np.uint8)
    for bad in (1, 5, 16, 0, -4):
        with pytest.raises(ValueError, match=r"bits: expected one of 2, 3, 4, 8"):
            ck.pack(codes, bad)
    with pytest.raises(TypeError, match="bits"):
        ck.pack(codes, 4.0)
    with pytest.raises(TypeError, match="bits"):
        ck.pack(codes, True)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_pack_value_range(bits):
    codes = np.zeros((20, 40), np.int32)
    codes[7, 33] = 1 << bits
    with pytest.raises(ValueError, match=rf"codes\[7, 33\] = {1 << bits} is out of range for bits={bits}"):
        ck.pack(codes, bits)
    codes[7, 33] = 0
    codes[3, 2] = -1
    with pytest.raises(ValueError, match=r"codes\[3, 2\] = -1"):
        ck.pack(codes, bits)
    if bits < 8:
        with pytest.raises(ValueError, match="out of range"):
            ck.pack(np.full((2, 2), 255, np.uint8), bits)


def test_pack_zeros_checks():
    z = np.zeros((20, 9), np.uint8)
    with pytest.raises(ValueError, match=r"bits: expected one of 2, 3, 4, 8"):
        ck.pack_zeros(z, 5)
    z[4, 8] = 8
    with pytest.raises(ValueError, match=r"zeros\[4, 8\] = 8 is out of range for bits=3"):
        ck.pack_zeros(z, 3)
    with pytest.raises(ValueError, match=r"zeros: expected a 2-D array"):
        ck.pack_zeros(np.zeros((9,), np.uint8), 3)
    with pytest.raises(TypeError, match=r"zeros: expected dtype uint8 or int32"):
        ck.pack_zeros(np.zeros((2, 9), np.float32), 3)
    p = ck.pack_zeros(np.zeros((20, 9), np.uint8), 3)
    with pytest.raises(ValueError, match=r"packed_zeros: expected shape \(2, 2, 16\)"):
        ck.unpack_zeros(p, 20, 11, 3)  # 33 bits need two words
    with pytest.raises(ValueError, match=r"bits: expected one of"):
        ck.unpack_zeros(p, 20, 9, 7)
    with pytest.raises(ValueError, match=r"n, n_groups: must be positive"):
        ck.unpack_zeros(p, 0, 9, 3)


def test_pack_dtype_shape_contiguity():
    with pytest.raises(TypeError, match="codes: expected dtype uint8 or int32, got int64"):
        ck.pack(np.zeros((16, 32), np.int64), 4)
    with pytest.raises(TypeError, match="codes: expected dtype uint8 or int32, got float32"):
        ck.pack(np.zeros((16, 32), np.float32), 4)
    with pytest.raises(ValueError, match=r"codes: expected a 2-D array"):
        ck.pack(np.zeros((16,), np.uint8), 4)
    with pytest.raises(ValueError, match="codes: must be C-contiguous"):
        ck.pack(np.zeros((32, 16), np.uint8).T, 4)
    with pytest.raises(TypeError, match="codes: expected an array"):
        ck.pack([[1, 2]], 4)
    with pytest.raises(TypeError, match="codes: expected an array"):
        ck.pack(None, 4)


def test_unpack_checks(case):
    with pytest.raises(ValueError, match=r"packed: expected shape \(3, 7, 4, 16\) for N=40, K=223"):
        ck.unpack(case.packed, 40, 255 - 32)
    with pytest.raises(ValueError, match=r"packed: expected shape"):
        ck.unpack(case.packed, 60, 256)
    with pytest.raises(ValueError, match="n, k: must be positive"):
        ck.unpack(case.packed, 0, 256)
    with pytest.raises(ValueError, match=r"packed: shape\[2\] is the bit width"):
        ck.unpack(np.zeros((3, 8, 5, 16), np.int32), 40, 256)
    with pytest.raises(TypeError, match="packed: expected dtype int32"):
        ck.unpack(case.packed.astype(np.int64), 40, 256)
    with pytest.raises(ValueError, match="packed: expected a 4-D array"):
        ck.unpack(case.packed.reshape(3, 8, 64), 40, 256)
    with pytest.raises(ValueError, match="packed: must be C-contiguous"):
        ck.unpack(np.asfortranarray(case.packed), 40, 256)


def test_group_size_lists_valid_sizes(case, rng):
    x = rng.standard_normal((2, 256)).astype(np.float32)
    for bad in (48, 100, 512, 0, -2, 16):
        with pytest.raises(ValueError) as ei:
            ck.gemm(x, case.packed, case.scales, case.zeros_packed, bad)
        msg = str(ei.value)
        assert msg.startswith("group_size:") and "multiple of 32 that divides K" in msg
        assert "Valid values for K=256: -1, 32, 64, 128, 256" in msg
    with pytest.raises(ValueError, match="Valid values for K=1000: -1$"):
        ck.gemm(np.zeros((1, 1000), np.float32), case.packed, case.scales, None, 40)
    with pytest.raises(ValueError, match="Valid values for K=96: -1, 32, 96"):
        ck.dequantize(case.packed, case.scales, None, 64, k=96)
    with pytest.raises(TypeError, match="group_size"):
        ck.gemm(x, case.packed, case.scales, case.zeros_packed, 64.0)


def test_gemm_shapes(case, rng):
    x = rng.standard_normal((2, 256)).astype(np.float32)
    p, s, z = case.packed, case.scales, case.zeros_packed
    with pytest.raises(ValueError, match=r"scales: expected shape \[N, K/group_size\] = \[40, 2\]"):
        ck.gemm(x, p, s, z, 128)
    with pytest.raises(ValueError, match=r"packed: expected shape \(3, 10, 4, 16\)"):
        ck.gemm(rng.standard_normal((2, 320)).astype(np.float32), p,
                np.ones((40, 5), np.float32), None, 64)
    with pytest.raises(ValueError, match=r"packed: expected shape"):
        ck.gemm(x, p[:2].copy(), s, z, 64)
    with pytest.raises(ValueError, match=r"zeros: expected shape \(3, 1, 16\)"):
        ck.gemm(x, p, s, z[:, :, :3].copy(), 64)
    with pytest.raises(ValueError, match=r"zeros: expected a 3-D array .* from pack_zeros"):
        ck.gemm(x, p, s, ck.pack(np.zeros((40, 4), np.int32), 4), 64)  # format v1 zeros: the weight layout
    with pytest.raises(ValueError, match=r"zeros: expected shape"):
        ck.gemm(x, p, s, ck.pack_zeros(np.zeros((40, 9), np.int32), 4), 64)  # 9 groups, not 4
    with pytest.raises(ValueError, match="x: expected a 2-D array"):
        ck.gemm(x[0], p, s, z, 64)
    with pytest.raises(ValueError, match="scales: expected a 2-D array"):
        ck.gemm(x, p, s[:, 0].copy(), z, 64)
    with pytest.raises(ValueError, match=r"out: expected shape \(2, 40\)"):
        ck.gemm(x, p, s, z, 64, out=np.empty((2, 41), np.float32))


def test_gemm_dtypes(case, rng):
    x = rng.standard_normal((2, 256)).astype(np.float32)
    p, s, z = case.packed, case.scales, case.zeros_packed
    with pytest.raises(TypeError, match="x: expected dtype float32 or float16 or bfloat16, got float64"):
        ck.gemm(x.astype(np.float64), p, s, z, 64)
    with pytest.raises(TypeError, match="scales: expected dtype .* got int32"):
        ck.gemm(x, p, s.astype(np.int32), z, 64)
    with pytest.raises(TypeError, match="packed: expected dtype int32, got uint32"):
        ck.gemm(x, p.view(np.uint32), s, z, 64)
    with pytest.raises(TypeError, match="zeros: expected dtype int32"):
        ck.gemm(x, p, s, z.astype(np.int64), 64)
    with pytest.raises(TypeError, match=r"out: expected dtype float32 \(the dtype of x\), got float16"):
        ck.gemm(x, p, s, z, 64, out=np.empty((2, 40), np.float16))
    with pytest.raises(TypeError, match="dtype: expected float32, float16 or bfloat16"):
        ck.dequantize(p, s, z, 64, dtype="int8")
    with pytest.raises(TypeError, match="numpy has no bfloat16"):
        ck.dequantize(p, s, z, 64, dtype="bfloat16")


def test_gemm_contiguity(case, rng):
    x = rng.standard_normal((256, 2)).astype(np.float32).T
    with pytest.raises(ValueError, match="x: must be C-contiguous"):
        ck.gemm(x, case.packed, case.scales, case.zeros_packed, 64)
    s = np.asfortranarray(case.scales)
    with pytest.raises(ValueError, match="scales: must be C-contiguous"):
        ck.gemm(np.ascontiguousarray(x), case.packed, s, case.zeros_packed, 64)
    with pytest.raises(ValueError, match="out: must be C-contiguous"):
        ck.gemm(np.ascontiguousarray(x), case.packed, case.scales, case.zeros_packed, 64,
                out=np.empty((40, 2), np.float32).T)


def test_dequantize_checks(case):
    with pytest.raises(ValueError, match="k: required when group_size=-1"):
        ck.dequantize(case.packed, case.scales[:, :1].copy(), None, -1)
    with pytest.raises(ValueError, match=r"scales: expected shape \[N, K/group_size\]"):
        ck.dequantize(case.packed, case.scales, case.zeros_packed, 64, k=512)
    with pytest.raises(ValueError, match=r"scales: expected shape"):
        ck.dequantize(case.packed, case.scales, None, -1, k=256)


def test_private_module_rechecks(case):
    """_C re-validates structure, so even direct (private) use cannot crash the process."""
    from cat_kernels import _C

    out = np.empty((2, 40), np.float32)
    with pytest.raises(ValueError):
        _C._gemm(np.zeros((2, 128), np.float32), case.packed, case.scales, None, 64, out)
    with pytest.raises(ValueError):
        _C._dequantize(case.packed, case.scales, None, 64, 256, np.empty((40, 255), np.float32))
    with pytest.raises(ValueError):
        _C._pack(np.zeros((16, 32), np.uint8), 4, np.empty((1, 1, 3, 16), np.int32))
    with pytest.raises(ValueError):  # the zero layout is [1, ceil(32*4/32), 16] = [1, 4, 16]
        _C._pack(np.zeros((16, 32), np.uint8), 4, np.empty((1, 3, 16), np.int32), 0, True)
    with pytest.raises(ValueError):  # zero layout: bits must be given and valid
        _C._unpack(np.zeros((1, 4, 16), np.int32), 16, 32, 5, np.empty((16, 32), np.uint8), 0, True)


@pytest.mark.torch
def test_device_mismatch_torch_cpu_vs_numpy_ok(case):
    """Arrays from different frameworks on the same device mix fine (DLPack, no copies)."""
    torch = pytest.importorskip("torch")
    x = torch.randn(2, 256)
    y = ck.gemm(x, case.packed, torch.from_numpy(case.scales), case.zeros_packed, 64)
    assert isinstance(y, torch.Tensor)


def test_device_mismatch():
    from cat_kernels._arrays import _Info
    from cat_kernels._checks import _check_same_device

    cpu = _Info("float32", (1,), True, 1, 0, "numpy")
    gpu0 = _Info("float32", (1,), True, 2, 0, "torch")
    gpu1 = _Info("float32", (1,), True, 2, 1, "torch")
    with pytest.raises(ValueError, match=r"scales: must be on the same device as x \(cpu\), got cuda:0"):
        _check_same_device({"x": cpu, "scales": gpu0})
    with pytest.raises(ValueError, match=r"packed: must be on the same device as x \(cuda:0\), got cuda:1"):
        _check_same_device({"x": gpu0, "packed": gpu1})


@pytest.mark.torch
def test_cuda_input_without_cuda_build():
    """A CPU-only build reports CUDA arrays clearly (only testable where torch sees a GPU)."""
    torch = pytest.importorskip("torch")
    if ck.build_info()["cuda"] or not torch.cuda.is_available():
        pytest.skip("needs a CPU-only build on a machine with a GPU")
    with pytest.raises(RuntimeError, match="built without CUDA"):
        ck.pack(torch.zeros((16, 32), dtype=torch.uint8, device="cuda"), 4)
