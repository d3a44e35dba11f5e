"""CUDA gemm from HBM: cat_kernels vs cuBLAS float16 (torch.matmul) in the same run.

    pytest packages/cat-kernels/benchmarks/test_bench_cuda.py -s      (skipped without a GPU)

What it measures, and how (issue 15):
- HBM, not L2: every case cycles through R copies of its weights, R chosen so the copies
  together exceed twice the L2 cache, so no call finds its weights in L2.
- No Python in the timed region: the R calls (PackedWeight.gemm, the per-call path of a model
  layer) are captured once in a CUDA graph; the graph is replayed between two CUDA events.
- An output check per case against x @ dequantize(W).T (float32), and the cuBLAS float16 product
  of the same shape (dense weights, rotated the same way) timed in the same process.
- Bandwidth against the device's own: a device-to-device copy of 1 GiB measured first; GB/s of
  a gemm counts the bytes it must read (codes, scales, zero points, x, y).

M = 1, 2, 4, 8, 16, 32, 64, 128, 256 over the issue's shapes (group 128, float16 x); bf16 x at
M = 1; the legacy kernels beside v2 at M <= 8 (CAT_BENCH_LEGACY=0 drops them). The table is
printed at the end and written as JSON to $CAT_BENCH_JSON (default benchmarks/.results/cuda.json).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="torch is not installed")
import cat_kernels as ck  # noqa: E402

if not torch.cuda.is_available():
    pytest.skip("torch.cuda.is_available() is False: no usable CUDA device", allow_module_level=True)
if not ck.cuda_available():
    pytest.skip("cat_kernels.cuda_available() is False (CPU-only build or no device)", allow_module_level=True)

pytestmark = pytest.mark.cuda

SHAPES = [(4096, 4096), (11008, 4096), (4096, 11008), (28672, 8192)]  # (N, K)
MS = [1, 2, 4, 8, 16, 32, 64, 128, 256]
BITS = [4, 3]
GROUP = 128
REPLAYS = int(os.environ.get("CAT_BENCH_REPLAYS", "20"))
LEGACY = os.environ.get("CAT_BENCH_LEGACY", "1") != "0"
_ROWS: list[dict] = []
_COPY_GBS: dict = {}


def _l2_bytes() -> int:
    props = torch.cuda.get_device_properties(0)
    return int(getattr(props, "L2_cache_size", 0) or 64 << 20)


def copy_bandwidth() -> float:
    """GB/s of a device-to-device copy of 1 GiB (read + write), median of 5."""
    if "gbs" not in _COPY_GBS:
        n = 1 << 30
        a = torch.empty(n, dtype=torch.uint8, device="cuda")
        b = torch.empty_like(a)
        times = []
        for _ in range(6):
            e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            e0.record()
            b.copy_(a)
            e1.record()
            e1.synchronize()
            times.append(e0.elapsed_time(e1) / 1e3)
        t = sorted(times[1:])[2]
        _COPY_GBS["gbs"] = 2 * n / t / 1e9
        del a, b
    return _COPY_GBS["gbs"]


def _graph_time(calls) -> float:
    """Seconds per call: the calls captured in one CUDA graph, replayed REPLAYS times."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for f in calls:  # warm-up outside the capture (allocations, lazy init)
            f()
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for f in calls:
            f()
    g.replay()
    torch.cuda.synchronize()
    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    e0.record()
    for _ in range(REPLAYS):
        g.replay()
    e1.record()
    e1.synchronize()
    return e0.elapsed_time(e1) / 1e3 / (REPLAYS * len(calls))


def _weights(n, k, bits, seed):
    gen = torch.Generator(device="cpu").manual_seed(seed)
    codes = torch.randint(0, 2**bits, (n, k), dtype=torch.uint8, generator=gen).cuda()
    packed = ck.pack(codes, bits)
    scales = (torch.rand(n, k // GROUP, generator=gen) * 0.01 + 0.001).half().cuda()
    zc = torch.randint(0, 2**bits, (n, k // GROUP), dtype=torch.uint8, generator=gen).cuda()
    zeros = ck.pack_zeros(zc, bits)
    return packed, scales, zeros


def _copies(one_bytes: int) -> int:
    return max(1, math.ceil(2 * _l2_bytes() / one_bytes))


@pytest.mark.parametrize("n,k", SHAPES, ids=[f"{n}x{k}" for n, k in SHAPES])
def test_bench_gemm_hbm(n, k):
    copy_gbs = copy_bandwidth()
    # cuBLAS float16, dense weights rotated past L2
    wbytes16 = n * k * 2
    dense = [torch.randn(n, k, dtype=torch.float16, device="cuda") * 0.02 for _ in range(_copies(wbytes16))]
    base = {}
    for m in MS:
        x = torch.randn(m, k, dtype=torch.float16, device="cuda")
        t = _graph_time([lambda w=w: torch.matmul(x, w.t()) for w in dense])
        base[m] = t
        _ROWS.append(dict(n=n, k=k, m=m, kind="cublas fp16", impl="-", t=t,
                          gbs=(wbytes16 + 2 * m * (n + k)) / t / 1e9, copy_gbs=copy_gbs, ratio=1.0))
    del dense
    torch.cuda.empty_cache()
    for bits in BITS:
        one = n * k * bits // 8 + n * (k // GROUP) * 2 + (n + 15) // 16 * 16 * (-(-(k // GROUP) * bits // 32)) * 4
        ws = [_weights(n, k, bits, seed=7 * n + k + bits + r) for r in range(_copies(one))]
        pws = [ck.PackedWeight(*w, GROUP) for w in ws]
        for m in MS:
            for dt in ([torch.float16, torch.bfloat16] if m == 1 else [torch.float16]):
                impls = ["v2", "legacy"] if (LEGACY and m <= 8 and dt == torch.float16) else ["v2"]
                for impl in impls:
                    ck.set_cuda_impl(impl)
                    try:
                        x = (torch.randn(m, k, device="cuda") * 0.5).to(dt)
                        # output check (outside the timed region): one copy against float32 math
                        y = pws[0].gemm(x)
                        w32 = ck.dequantize(*ws[0], GROUP, dtype="float32")
                        ref = x.float() @ w32.t()
                        err = (y.float() - ref).abs().max().item()
                        scale = ref.abs().max().item() + 1e-6
                        assert err <= 2e-2 * scale, f"{impl} {bits}-bit M={m} {n}x{k}: max error {err} vs |y| {scale}"
                        del w32, ref, y
                        t = _graph_time([lambda p=p: p.gemm(x) for p in pws])
                    finally:
                        ck.set_cuda_impl(None)
                    gbs = (one + 2 * m * (n + k)) / t / 1e9
                    _ROWS.append(dict(n=n, k=k, m=m, kind=f"cat {bits}-bit {str(dt)[6:]}", impl=impl, t=t,
                                      gbs=gbs, copy_gbs=copy_gbs, ratio=base[m] / t))
        del ws, pws
        torch.cuda.empty_cache()


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    if not _ROWS:
        return
    name = torch.cuda.get_device_name()
    lines = ["", f"CUDA gemm from HBM on {name} (group {GROUP}; weights rotated past 2x L2 = "
             f"{2 * _l2_bytes() >> 20} MiB; CUDA graph of PackedWeight.gemm calls, {REPLAYS} replays)",
             f"device copy bandwidth: {_COPY_GBS.get('gbs', float('nan')):.0f} GB/s",
             f"{'N x K':>12} {'M':>4} {'kernel':>18} {'impl':>6} {'us':>9} {'GB/s':>6} {'% copy':>6} {'vs cuBLAS':>9}"]
    for r in _ROWS:
        lines.append(f"{r['n']:>5}x{r['k']:<6} {r['m']:>4} {r['kind']:>18} {r['impl']:>6} {r['t'] * 1e6:>9.1f} "
                     f"{r['gbs']:>6.0f} {100 * r['gbs'] / r['copy_gbs']:>5.0f}% {r['ratio']:>8.2f}x")
    lines.append("(vs cuBLAS > 1: cat_kernels is faster; % copy: share of the measured copy bandwidth)")
    print("\n".join(lines))
    out = Path(os.environ.get("CAT_BENCH_JSON", Path(__file__).parent / ".results" / "cuda.json"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"device": name, "copy_gbs": _COPY_GBS.get("gbs"), "l2_bytes": _l2_bytes(),
                               "rows": _ROWS}, indent=1))
