"""int8 gemm at M=128 on SmolLM2-like and neighbouring shapes (4-bit, group 64), 1 and 2 kernel
threads, best of 9: whether the second thread pays. Q8=0 in the environment: float activations.

    python benchmarks/probes/int8_gemm_threads.py
"""

import os
import time

import cat_kernels as ck
import numpy as np


def best(f, n: int = 9) -> float:
    f()
    b = 1e9
    for _ in range(n):
        t = time.perf_counter()
        f()
        b = min(b, time.perf_counter() - t)
    return b


rng = np.random.default_rng(0)
int8 = os.environ.get("Q8", "1") == "1"
for n, k in ((576, 1536), (1152, 1536), (576, 1024), (576, 2048), (512, 1536), (1536, 576), (576, 576)):
    g = 64
    pw = ck.PackedWeight(ck.pack(rng.integers(0, 16, (n, k), dtype=np.uint8), 4),
                         rng.random((n, k // g), dtype=np.float32).astype(np.float16),
                         ck.pack_zeros(rng.integers(0, 16, (n, k // g), dtype=np.uint8), 4), g, k=k,
                         int8_activations=int8)
    x = rng.standard_normal((128, k), dtype=np.float32)
    out = np.empty((128, n), np.float32)
    r = []
    for th in (1, 2):
        ck._C._set_num_threads(th)
        r.append(best(lambda: pw.gemm(x, out=out)))  # noqa: B023 (called at once)
    print(f"{n}x{k} M=128 {'int8' if int8 else 'float'}: 1 thread {r[0] * 1e3:.3f} ms, "
          f"2 threads {r[1] * 1e3:.3f} ms ({r[0] / r[1]:.2f}x)", flush=True)
