"""CUDA gemm throughput vs torch float16 matmul (pytest-benchmark; skipped without a GPU).

    pytest packages/cat-kernels/benchmarks/test_bench_cuda.py --benchmark-only -s

Every case times cat_kernels.gemm (packed 3/4-bit weights, group 128, float16 x) and torch's
dense float16 `x @ W.T` on the same shapes in the same run. Timing is CUDA-synchronized: each
round launches `INNER` calls back to back and synchronizes once, so launch overhead is included
the way a decode loop sees it, and host/GPU overlap cannot hide the kernel time. At the end the
session prints a table: time per call, effective weight bandwidth, and the ratio to torch.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch", reason="torch is not installed")
import cat_kernels as ck  # noqa: E402  (a broken build must fail loudly, not skip)

if not torch.cuda.is_available():
    pytest.skip("torch.cuda.is_available() is False: no usable CUDA device", allow_module_level=True)
if not ck.cuda_available():
    pytest.skip("cat_kernels.cuda_available() is False (CPU-only build or no device)", allow_module_level=True)

pytestmark = pytest.mark.cuda

INNER = 20
SHAPES = [(4096, 4096), (11008, 4096), (4096, 11008)]  # (N, K): attention, MLP up, MLP down
MS = [1, 8, 32, 1024]
BITS = [3, 4]
GROUP = 128
_RESULTS: dict = {}


def _timed(benchmark, fn):
    fn()
    torch.cuda.synchronize()

    def run():
        for _ in range(INNER):
            fn()
        torch.cuda.synchronize()

    benchmark.pedantic(run, rounds=10, warmup_rounds=2, iterations=1)
    return benchmark.stats.stats.median / INNER


def _weights(n, k, bits):
    g = torch.Generator(device="cpu").manual_seed(n * 7 + k + bits)
    codes = torch.randint(0, 2**bits, (n, k), dtype=torch.uint8, generator=g)
    packed = ck.pack(codes.cuda(), bits)
    scales = (torch.rand(n, k // GROUP, generator=g) * 0.01 + 0.001).half().cuda()
    zcodes = torch.randint(0, 2**bits, (n, k // GROUP), dtype=torch.uint8, generator=g)
    zeros = ck.pack_zeros(zcodes.cuda(), bits)
    return packed, scales, zeros


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("n,k", SHAPES, ids=[f"{n}x{k}" for n, k in SHAPES])
@pytest.mark.parametrize("m", MS)
def test_bench_gemm(benchmark, m, n, k, bits):
    packed, scales, zeros = _weights(n, k, bits)
    x = torch.randn(m, k, dtype=torch.float16, device="cuda")
    benchmark.group = f"M={m} {n}x{k}"
    benchmark.name = f"cat {bits}-bit"
    t = _timed(benchmark, lambda: ck.gemm(x, packed, scales, zeros, GROUP))
    _RESULTS[(m, n, k, f"cat{bits}")] = t


@pytest.mark.parametrize("n,k", SHAPES, ids=[f"{n}x{k}" for n, k in SHAPES])
@pytest.mark.parametrize("m", MS)
def test_bench_torch_fp16(benchmark, m, n, k):
    w = torch.randn(n, k, dtype=torch.float16, device="cuda")
    x = torch.randn(m, k, dtype=torch.float16, device="cuda")
    benchmark.group = f"M={m} {n}x{k}"
    benchmark.name = "torch fp16"
    t = _timed(benchmark, lambda: torch.matmul(x, w.t()))
    _RESULTS[(m, n, k, "torch")] = t


@pytest.fixture(scope="module", autouse=True)
def _print_table():
    yield
    if not _RESULTS:
        return
    lines = [
        "",
        f"cat_kernels.gemm vs torch fp16 matmul on {torch.cuda.get_device_name()} "
        f"(group {GROUP}, float16 x, median of 10 rounds x {INNER} calls)",
        f"{'M':>5} {'N x K':>12} {'torch us':>9} "
        + " ".join(f"{f'{b}-bit us':>9} {'GB/s':>6} {'vs torch':>8}" for b in BITS),
    ]
    for m in MS:
        for n, k in SHAPES:
            tt = _RESULTS.get((m, n, k, "torch"))
            row = f"{m:>5} {f'{n}x{k}':>12} {tt * 1e6 if tt else float('nan'):>9.1f} "
            for b in BITS:
                tc = _RESULTS.get((m, n, k, f"cat{b}"))
                if tc is None:
                    row += f"{'-':>9} {'-':>6} {'-':>8} "
                    continue
                weight_bytes = n * k * b / 8 + n * (k // GROUP) * (2 + b / 8)
                gbs = weight_bytes / tc / 1e9
                ratio = f"{tt / tc:.2f}x" if tt else "-"
                row += f"{tc * 1e6:>9.1f} {gbs:>6.0f} {ratio:>8} "
            lines.append(row.rstrip())
    lines.append("(vs torch > 1: cat_kernels is faster)")
    print("\n".join(lines))
