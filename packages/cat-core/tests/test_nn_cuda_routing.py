"""QuantLinear's choice between the fused kernel and dequantize + matmul on CUDA (issue 15),
checked on the CPU: the routing functions are called directly with a CUDA device object (no
tensor is created there) and the GPU generation lookup is replaced."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("cat_kernels")
# _routing: the module whose lookups (GPU generation, weight fit) the tests replace
from cat_core.nn import QuantLinear, _routing, cpu_gemm_max_m, cuda_gemm_max_m  # noqa: E402
from cat_core.quant import QuantizedTensor  # noqa: E402

CUDA0 = torch.device("cuda", 0)


def _layer(scale: float, bits: int = 8, sym: bool = False, zero: int | None = None) -> QuantLinear:
    n, k, gs = 20, 64, 32
    g = torch.Generator().manual_seed(bits)
    codes = torch.randint(0, 1 << bits, (n, k), generator=g, dtype=torch.uint8)
    scales = torch.full((n, k // gs), scale, dtype=torch.float32)
    zeros = None
    if not sym:
        zeros = torch.full((n, k // gs), (1 << (bits - 1)) if zero is None else zero, dtype=torch.uint8)
    return QuantLinear.from_quantized_tensor(QuantizedTensor(codes, scales, zeros, bits, gs))


@pytest.fixture(autouse=True)
def _hopper(monkeypatch):
    monkeypatch.setattr(_routing, "_cc_major", lambda index: 9)
    monkeypatch.delenv("CAT_CUDA_GEMM_MAX_M", raising=False)


def test_small_m_takes_the_kernel():
    mod = _layer(1e-3)
    for m in (1, 9, 64, 128):
        assert mod._fused(m, CUDA0, torch.float16)


def test_large_m_goes_dense_when_weights_fit():
    mod = _layer(1e-3)  # |w| <= 255e-3
    for dt in (torch.float16, torch.bfloat16, torch.float32):
        assert not mod._fused(129, CUDA0, dt)
        assert not mod._fused(4096, CUDA0, dt)


def test_large_m_stays_on_kernel_when_fp16_would_overflow():
    # zero point 0: q - z reaches 255, 255 * 300 = 76500 > 65504
    mod = _layer(300.0, zero=0)
    assert mod._fused(500, CUDA0, torch.float16)
    assert not mod._fused(500, CUDA0, torch.bfloat16)
    assert not mod._fused(500, CUDA0, torch.float32)
    # 255 * 256 = 65280 fits
    assert not _layer(256.0, zero=0)._fused(500, CUDA0, torch.float16)


def test_bound_uses_the_zero_points():
    # z = 128: |q - z| <= 128, 128 * 500 = 64000 fits fp16; z = 0 would not
    assert not _layer(500.0, zero=128)._fused(500, CUDA0, torch.float16)
    assert _layer(500.0, zero=0)._fused(500, CUDA0, torch.float16)
    # symmetric 8-bit: z = 128 implicitly
    assert not _layer(500.0, sym=True)._fused(500, CUDA0, torch.float16)
    assert _layer(600.0, sym=True)._fused(500, CUDA0, torch.float16)


def test_fit_is_cached_and_follows_buffer_replacement(monkeypatch):
    mod = _layer(300.0, zero=0)
    calls = []
    real = _routing._dense_weight_fits

    def counting(*a):
        calls.append(a[3])
        return real(*a)

    monkeypatch.setattr(_routing, "_dense_weight_fits", counting)
    for _ in range(3):
        assert mod._fused(500, CUDA0, torch.float16)
    assert calls == [torch.float16]
    mod.scales = torch.full_like(mod.scales, 1e-3)  # replaced buffer: recomputed
    assert not mod._fused(500, CUDA0, torch.float16)
    assert calls == [torch.float16, torch.float16]


def test_threshold_table_and_env_override(monkeypatch):
    mod = _layer(1e-3)
    assert cuda_gemm_max_m(9) == 128 and cuda_gemm_max_m(42) == 128
    monkeypatch.setenv("CAT_CUDA_GEMM_MAX_M", "16")
    assert cuda_gemm_max_m(9) == 16
    assert mod._fused(16, CUDA0, torch.bfloat16) and not mod._fused(17, CUDA0, torch.bfloat16)
    monkeypatch.setenv("CAT_CUDA_GEMM_MAX_M", "lots")
    with pytest.raises(ValueError, match="CAT_CUDA_GEMM_MAX_M"):
        cuda_gemm_max_m(9)


def test_cpu_routing_by_dtype(monkeypatch):
    mod = _layer(1e-3)
    cpu = torch.device("cpu")
    for dt in (torch.float32, torch.bfloat16, torch.float16):
        m = cpu_gemm_max_m(dt)
        assert mod._fused(m, cpu, dt) and not mod._fused(m + 1, cpu, dt)
    # float32 keeps longer prompts on the kernel than the 16-bit dtypes (measured crossovers)
    assert cpu_gemm_max_m(torch.float32) > cpu_gemm_max_m(torch.bfloat16)
    # the CUDA threshold and fit never reach the CPU path
    monkeypatch.setenv("CAT_CUDA_GEMM_MAX_M", "100000")
    assert not mod._fused(cpu_gemm_max_m(torch.float16) + 1, cpu, torch.float16)
    monkeypatch.setenv("CAT_CPU_GEMM_MAX_M", "7")
    assert mod._fused(7, cpu, torch.float32) and not mod._fused(8, cpu, torch.float32)
    monkeypatch.setenv("CAT_CPU_GEMM_MAX_M", "-1")
    with pytest.raises(ValueError, match="CAT_CPU_GEMM_MAX_M"):
        cpu_gemm_max_m(torch.float32)
    monkeypatch.delenv("CAT_CPU_GEMM_MAX_M")
    with pytest.raises(ValueError, match="dtype"):
        cpu_gemm_max_m(torch.float64)


def test_cpu_forward_matches_both_routes():
    """The CPU forward (fused up to cpu_gemm_max_m, dense above) still gives the same rows."""
    mod = _layer(1e-2, bits=4)
    x = torch.randn(cpu_gemm_max_m(torch.float32) + 7, 64, generator=torch.Generator().manual_seed(1))
    y_big = mod(x)
    y_small = torch.cat([mod(x[i : i + 8]) for i in range(0, x.shape[0], 8)])
    w = mod.dequantize_weight(torch.float32)
    ref = x.double() @ w.double().T
    for y in (y_big, y_small):
        torch.testing.assert_close(y.double(), ref, rtol=1e-5, atol=1e-5)
