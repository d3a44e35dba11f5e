"""Float against int8 activations (``int8_activations=True``) for one weight shape, in one run:
M=1 hot (one weight, cache-resident) and cold (copies worth 1.5 GB, streamed from DRAM), and a
prefill-sized M; 2 kernel threads, best of 5 passes. Group 64 where it divides K, else 32.

    python benchmarks/probes/int8_gemv.py N K [BITS] [PREFILL_M]
"""

import sys
import time

import cat_kernels as ck
import numpy as np
from gemv_stream import cold_copies  # this folder is on sys.path when a script of it runs


def best_seconds(fn, reps: int = 5) -> float:
    fn()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    n, k = int(sys.argv[1]), int(sys.argv[2])
    bits = int(sys.argv[3]) if len(sys.argv) > 3 else 4
    pm = int(sys.argv[4]) if len(sys.argv) > 4 else 128
    g = 64 if k % 64 == 0 else 32
    rng = np.random.default_rng(0)
    weights, nbytes = cold_copies(rng, n, k, bits, g)
    copies = len(weights)
    x1 = rng.standard_normal((1, k), dtype=np.float32)
    xp = rng.standard_normal((pm, k), dtype=np.float32)
    out1 = np.empty((1, n), np.float32)
    outp = np.empty((pm, n), np.float32)
    dense = rng.standard_normal((n, k), dtype=np.float32)
    ck._C._set_num_threads(2)
    print(f"{n}x{k} {bits}-bit g{g}, isa {ck._C._isa()}, 2 threads; {nbytes / 1e6:.2f} MB packed")
    t_np = best_seconds(lambda: np.matmul(xp, dense.T))
    print(f"  numpy fp32 matmul M={pm}: {t_np * 1e3:.3f} ms")
    rows = {}
    for mode in (False, True):
        for w in weights:
            w.int8_activations = mode
        w0 = weights[0]
        hot = best_seconds(lambda: [w0.gemm(x1, out=out1) for _ in range(200)]) / 200
        cold = best_seconds(lambda: [w.gemm(x1, out=out1) for w in weights], reps=3) / copies
        pre = best_seconds(lambda: w0.gemm(xp, out=outp))
        rows[mode] = (hot, cold, pre)
        name = "int8 x " if mode else "float x"
        print(f"  {name}: M=1 hot {hot * 1e6:8.1f} us ({n * k / hot / 1e9:5.1f} G weights/s), "
              f"cold {cold * 1e6:8.1f} us ({nbytes / cold / 1e9:5.1f} GB/s), "
              f"M={pm} {pre * 1e3:7.3f} ms ({t_np / pre:4.2f}x numpy fp32)")
    f, q = rows[False], rows[True]
    print(f"  int8 speed-up: hot {f[0] / q[0]:.2f}x, cold {f[1] / q[1]:.2f}x, M={pm} {f[2] / q[2]:.2f}x")


if __name__ == "__main__":
    main()
