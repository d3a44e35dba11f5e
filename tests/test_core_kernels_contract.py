"""The contract between cat-core and cat-kernels.

cat-core's quantizer produces integer codes, scales and zero points and a fake-quantized weight;
cat-kernels packs the codes and reconstructs the weight inside its GEMM. The two must agree bit
for bit on the reconstruction, or a model evaluated fake-quantized (during the AWQ search) would
not be the model that runs. These tests push real cat-core output through the real kernels.
"""

from __future__ import annotations

import pytest
import torch

import cat_kernels as ck
from cat_core.config import QuantConfig
from cat_core.quant import fake_quantize, quantize_tensor


def _pack_all(qt):
    packed = ck.pack(qt.codes.contiguous(), qt.bits)
    zeros = None if qt.zeros is None else ck.pack_zeros(qt.zeros.contiguous(), qt.bits)
    return packed, zeros


CASES = [
    # (bits, group_size, sym, scale dtype, N, K): shapes deliberately off the tile and block sizes
    (4, 128, False, torch.float16, 77, 384),
    (3, 64, False, torch.float16, 45, 576),
    (3, 128, True, torch.bfloat16, 33, 256),
    (2, 32, False, torch.float32, 19, 160),
    (8, -1, False, torch.float16, 21, 203),
    (3, -1, True, torch.float16, 50, 99),
]


@pytest.mark.parametrize(("bits", "group_size", "sym", "sdtype", "n", "k"), CASES)
def test_kernel_dequantize_equals_core_fake_quantize(bits, group_size, sym, sdtype, n, k) -> None:
    gen = torch.Generator().manual_seed(torch.seed() % 2**31)
    w = torch.randn(n, k, generator=gen) * 0.05
    w[:, :3] *= 20  # outlier columns, as real weights have
    cfg = QuantConfig(bits=bits, group_size=group_size, sym=sym, scale_dtype=sdtype)
    qt = quantize_tensor(w, cfg)
    packed, zeros = _pack_all(qt)

    # Packing is lossless: the kernels see exactly cat-core's codes.
    assert torch.equal(torch.from_dlpack(ck.unpack(packed, n, k)), qt.codes)

    w_kernel = torch.from_dlpack(ck.dequantize(packed, qt.scales, zeros, group_size, k=k,
                                               dtype=torch.float32))
    w_fake = fake_quantize(w, cfg)
    assert torch.equal(w_kernel, w_fake), (w_kernel - w_fake).abs().max()


@pytest.mark.parametrize(("bits", "group_size", "sym", "sdtype", "n", "k"), CASES)
@pytest.mark.parametrize("m", [1, 5, 33])
def test_kernel_gemm_matches_fake_quantized_linear(bits, group_size, sym, sdtype, n, k, m) -> None:
    w = torch.randn(n, k) * 0.05
    x = torch.randn(m, k)
    cfg = QuantConfig(bits=bits, group_size=group_size, sym=sym, scale_dtype=sdtype)
    qt = quantize_tensor(w, cfg)
    packed, zeros = _pack_all(qt)

    y = torch.from_dlpack(ck.gemm(x, packed, qt.scales, zeros, group_size))
    ref = x.double() @ fake_quantize(w, cfg).double().T
    # fp32 accumulation over K terms: error grows like sqrt(K) * eps * |x||w|.
    tol = 1e-5 * (k**0.5) * float(ref.abs().max())
    assert y.shape == (m, n) and y.dtype == torch.float32
    torch.testing.assert_close(y.double(), ref, rtol=0, atol=tol)
