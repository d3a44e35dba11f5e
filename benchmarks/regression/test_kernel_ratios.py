"""The kernel suite as a regression check: cat-kernels gemm against torch's float32 matmul of
the same shape (the dense layer it replaces), at the kernels issue's shapes, group 128."""

from __future__ import annotations

import sys
from pathlib import Path

import cat_kernels as ck
import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _ratios import interleaved, paired  # noqa: E402

SHAPES = [(4096, 4096), (11008, 4096), (4096, 11008)]
GROUP = 128
ROUNDS = {1: 40, 8: 15, 32: 8}

_cache: dict = {}


def _weight(n: int, k: int, bits: int) -> ck.PackedWeight:
    key = (n, k, bits)
    if key not in _cache:
        _cache.clear()  # one weight set alive at a time
        rng = np.random.default_rng(0)
        packed = ck.pack(rng.integers(0, 1 << bits, (n, k), dtype=np.uint8), bits)
        scales = (rng.random((n, k // GROUP), dtype=np.float32) * 0.01).astype(np.float16)
        zeros = ck.pack_zeros(rng.integers(0, 1 << bits, (n, k // GROUP), dtype=np.uint8), bits)
        _cache[key] = ck.PackedWeight(torch.from_numpy(packed), torch.from_numpy(scales),
                                      torch.from_numpy(zeros), GROUP)
    return _cache[key]


@pytest.mark.parametrize("m", sorted(ROUNDS))
@pytest.mark.parametrize("bits", [3, 4])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_gemm_vs_fp32(benchmark, check_ratio, shape, bits, m):
    n, k = shape
    pw = _weight(n, k, bits)
    g = torch.Generator().manual_seed(m)
    x = torch.randn(m, k, generator=g)
    w = torch.randn(n, k, generator=g)
    out, dense_out = torch.empty(m, n), torch.empty(m, n)
    benchmark.group = f"{n}x{k} M={m}"
    subject, baseline = lambda: pw.gemm(x, out=out), lambda: torch.matmul(x, w.T, out=dense_out)
    ratio = interleaved(benchmark, subject, baseline, rounds=ROUNDS[m], warmup=2)
    check_ratio(f"gemm {n}x{k} {bits}-bit M={m}", ratio,
                remeasure=lambda: paired(subject, baseline, rounds=ROUNDS[m], warmup=2))
