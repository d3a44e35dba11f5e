"""torch interop: CPU tensors in, tensors out (same framework, no copies), bfloat16."""

from __future__ import annotations

import numpy as np
import pytest

import cat_kernels as ck
from _cases import make_case
from _reference import round_to_bf16
from test_ops import check_gemm

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch


def bf16_tensor(a: np.ndarray) -> "torch.Tensor":
    """float32 values that are exactly representable in bfloat16 -> a bf16 tensor."""
    return torch.from_numpy(np.ascontiguousarray(a, np.float32)).to(torch.bfloat16)


@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "asym"])
@pytest.mark.parametrize("group_size", [32, 64, 128, -1])
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_bf16_scales(rng, bits, group_size, symmetric):
    case = make_case(rng, 40, 256, bits, group_size, symmetric, "bfloat16")
    s = bf16_tensor(case.scales)
    zp = None if case.zeros is None else torch.from_numpy(case.zeros_packed)
    packed = torch.from_numpy(case.packed)
    w = ck.dequantize(packed, s, zp, group_size, k=256)
    assert isinstance(w, torch.Tensor) and w.dtype == torch.bfloat16 and w.shape == (40, 256)
    np.testing.assert_array_equal(w.float().numpy(), round_to_bf16(case.w))
    w32 = ck.dequantize(packed, s, zp, group_size, k=256, dtype=torch.float32)
    np.testing.assert_array_equal(w32.numpy(), case.w)
    for m in (1, 3, 8, 17, 64):
        x = bf16_tensor(round_to_bf16(rng.standard_normal((m, 256)).astype(np.float32)))
        y = ck.gemm(x, packed, s, zp, group_size)
        assert isinstance(y, torch.Tensor) and y.dtype == torch.bfloat16 and y.shape == (m, 40)
        check_gemm(case, x.float().numpy(), y.float().numpy(), "bfloat16")
    xf = torch.randn(4, 256)
    check_gemm(case, xf.numpy(), ck.gemm(xf, packed, s, zp, group_size).numpy())


def test_torch_pack_unpack_roundtrip(rng):
    codes = torch.from_numpy(rng.integers(0, 16, (33, 70)).astype(np.uint8))
    p = ck.pack(codes, 4)
    assert isinstance(p, torch.Tensor) and p.dtype == torch.int32 and p.shape == (3, 3, 4, 16)
    back = ck.unpack(p, 33, 70)
    assert isinstance(back, torch.Tensor) and torch.equal(back, codes)
    np.testing.assert_array_equal(p.numpy(), ck.pack(codes.numpy(), 4))


def test_no_copies_and_out(rng):
    case = make_case(rng, 32, 128, 4, 64, False)
    x = torch.randn(3, 128)
    out = torch.empty(3, 32)
    y = ck.gemm(x, torch.from_numpy(case.packed), torch.from_numpy(case.scales),
                torch.from_numpy(case.zeros_packed), 64, out=out)
    assert y is out
    check_gemm(case, x.numpy(), out.numpy())


def test_requires_grad_and_views(rng):
    case = make_case(rng, 32, 128, 4, 64, True)
    x = torch.randn(3, 128, requires_grad=True)
    y = ck.gemm(x, case.packed, case.scales, None, 64)
    assert isinstance(y, torch.Tensor)
    with pytest.raises(ValueError, match="x: must be C-contiguous"):
        ck.gemm(torch.randn(128, 3).t(), case.packed, case.scales, None, 64)
    # A contiguous slice with a storage offset is fine.
    big = torch.randn(10, 128)
    check_gemm(case, big[4:7].numpy(), ck.gemm(big[4:7], case.packed, case.scales, None, 64).numpy())


def test_half_and_bf16_outputs_match_torch_rounding(rng):
    """Our float32 -> bf16 rounding (nearest even) equals torch's."""
    vals = (rng.standard_normal(16 * 64).astype(np.float32) * 10.0 ** rng.integers(-20, 20, 16 * 64)).astype(np.float32)
    s = torch.from_numpy(vals.reshape(16, 64))
    codes = torch.from_numpy(ck.pack(np.ones((16, 64 * 32), np.uint8), 8))
    zeros = torch.from_numpy(ck.pack_zeros(np.zeros((16, 64), np.int32), 8))
    w = ck.dequantize(codes, s, zeros, 32, dtype=torch.bfloat16)
    assert torch.equal(w, s.repeat_interleave(32, dim=1).to(torch.bfloat16))
