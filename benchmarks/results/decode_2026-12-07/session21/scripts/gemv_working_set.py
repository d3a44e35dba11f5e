# GB/s of int8-x M=1 gemv vs working set (copies of one weight cycled), 2 threads
import sys, time
import numpy as np
import cat_kernels as ck
n, k, bits, g = int(sys.argv[1]), int(sys.argv[2]), 4, 64
rng = np.random.default_rng(0)
codes = rng.integers(0, 16, (n, k), dtype=np.uint8)
scales = rng.random((n, k // g), dtype=np.float32).astype(np.float16)
zeros = ck.pack_zeros(rng.integers(0, 16, (n, k // g), dtype=np.uint8), bits)
packed = ck.pack(codes, bits)
nbytes = packed.nbytes + scales.nbytes + zeros.nbytes
x = rng.standard_normal((1, k), dtype=np.float32); out = np.empty((1, n), np.float32)
ck._C._set_num_threads(int(sys.argv[3]) if len(sys.argv) > 3 else 2)
res = []
for mb in (1, 4, 16, 48, 80, 128, 512):
    c = max(1, int(mb * 1e6 // nbytes))
    ws = [ck.PackedWeight(packed.copy(), scales.copy(), zeros.copy(), g, k=k) for _ in range(c)]
    for w in ws: w.int8_activations = True
    reps = max(1, int(200e6 // (c * nbytes)))
    for w in ws: w.gemm(x, out=out)
    best = 0
    for _ in range(5):
        t = time.perf_counter()
        for r in range(reps):
            for w in ws: w.gemm(x, out=out)
        best = max(best, reps * c * nbytes / (time.perf_counter() - t) / 1e9)
    res.append(f"{c * nbytes / 1e6:.0f}MB:{best:.1f}")
    del ws
print(f"{n}x{k}", " ".join(res), flush=True)
