"""gemm throughput against a dense float32 matmul of the same shape (torch if installed, else
numpy), measured in the same run. Run explicitly:

    pytest packages/cat-kernels/benchmarks --benchmark-json=bench.json

Timings on shared machines are noisy; the table printed at the end reports medians.

SMALL_SHAPES are decode shapes of SmolLM2-135M (hidden 576, MLP 1536; group 64) at M=1, where
fixed per-call costs matter. CAT_BENCH_THREADS=N runs both sides with N threads (default: each
library's own default); a single thread is the least noisy comparison on a shared machine.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

import cat_kernels as ck

try:
    import torch
except ImportError:  # pragma: no cover
    torch = None

SHAPES = [(4096, 4096), (11008, 4096), (4096, 11008)]
BITS = [3, 4]
MS = [1, 8, 32]
GROUP = 128
SMALL_SHAPES = [(576, 576), (1536, 576), (576, 1536)]
SMALL_GROUP = 64

_threads = os.environ.get("CAT_BENCH_THREADS")
if _threads:
    from cat_kernels import _C

    _C._set_num_threads(int(_threads))
    if torch is not None:
        torch.set_num_threads(int(_threads))

_weights: dict = {}


def _quantized(n, k, bits, group=GROUP):
    key = (n, k, bits, group)
    if key not in _weights:
        rng = np.random.default_rng(0)
        packed = ck.pack(rng.integers(0, 1 << bits, (n, k), dtype=np.uint8), bits)
        scales = (rng.random((n, k // group), dtype=np.float32) * 0.01).astype(np.float16)
        zeros = ck.pack_zeros(rng.integers(0, 1 << bits, (n, k // group)).astype(np.int32), bits)
        _weights.clear()  # keep one weight set alive at a time (memory)
        _weights[key] = (packed, scales, zeros)
    return _weights[key]


def _rounds(m):
    return 30 if m == 1 else 10


def _bench_gemm(benchmark, bench_results, n, k, bits, m, group, rounds, iterations=1):
    packed, scales, zeros = _quantized(n, k, bits, group)
    x = np.random.default_rng(1).standard_normal((m, k)).astype(np.float32)
    out = np.empty((m, n), np.float32)
    benchmark.group = f"{n}x{k} M={m}"
    benchmark.extra_info.update(n=n, k=k, bits=bits, m=m, group_size=group)
    benchmark.pedantic(ck.gemm, args=(x, packed, scales, zeros, group), kwargs={"out": out},
                       rounds=rounds, iterations=iterations, warmup_rounds=2)
    bench_results.setdefault((n, k, bits, m), {})["ck"] = benchmark.stats.stats.median


@pytest.mark.parametrize("m", MS)
@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_gemm(benchmark, bench_results, shape, bits, m):
    _bench_gemm(benchmark, bench_results, *shape, bits, m, GROUP, _rounds(m))


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("shape", SMALL_SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_gemm_small(benchmark, bench_results, shape, bits):
    _bench_gemm(benchmark, bench_results, *shape, bits, 1, SMALL_GROUP, 50, iterations=20)


def _bench_dense(benchmark, bench_results, n, k, m, rounds, iterations=1):
    rng = np.random.default_rng(2)
    benchmark.group = f"{n}x{k} M={m}"
    if torch is not None:
        w = torch.from_numpy(rng.standard_normal((n, k), dtype=np.float32))
        x = torch.from_numpy(rng.standard_normal((m, k), dtype=np.float32))
        out = torch.empty(m, n)
        fn, impl = (lambda: torch.matmul(x, w.T, out=out)), "torch"
    else:
        w = rng.standard_normal((n, k), dtype=np.float32)
        x = rng.standard_normal((m, k), dtype=np.float32)
        out = np.empty((m, n), np.float32)
        fn, impl = (lambda: np.matmul(x, w.T, out=out)), "numpy"
    benchmark.extra_info.update(n=n, k=k, m=m, impl=impl)
    benchmark.pedantic(fn, rounds=rounds, iterations=iterations, warmup_rounds=2)
    for bits in BITS:
        r = bench_results.setdefault((n, k, bits, m), {})
        r["dense"] = benchmark.stats.stats.median
        r["dense_impl"] = impl


@pytest.mark.parametrize("m", MS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_dense(benchmark, bench_results, shape, m):
    _bench_dense(benchmark, bench_results, *shape, m, _rounds(m))


@pytest.mark.parametrize("shape", SMALL_SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_dense_small(benchmark, bench_results, shape):
    _bench_dense(benchmark, bench_results, *shape, 1, 50, iterations=20)
