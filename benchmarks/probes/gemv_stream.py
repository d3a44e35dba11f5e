"""Cold-weight GEMV bandwidth: one M=1 product per copy of an N x K weight, rotating through
copies worth 1.5 GB (far more than any cache), 1 and 2 kernel threads; GB/s of packed weights,
scales and zeros read (best of 3 passes). Group 128 where it divides K, else 32.

    python benchmarks/probes/gemv_stream.py N K [BITS]
"""

import sys
import time

import cat_kernels as ck
import numpy as np


def cold_copies(rng: np.random.Generator, n: int, k: int, bits: int, g: int) -> tuple[list, int]:
    """Copies worth 1.5 GB (at least 2) of one random N x K packed weight (float16 scales,
    asymmetric), so that cycling through them streams from DRAM; and the bytes of one copy."""
    codes = rng.integers(0, 1 << bits, (n, k), dtype=np.uint8)
    scales = rng.random((n, k // g), dtype=np.float32).astype(np.float16)
    zeros = ck.pack_zeros(rng.integers(0, 1 << bits, (n, k // g), dtype=np.uint8), bits)
    packed = ck.pack(codes, bits)
    nbytes = packed.nbytes + scales.nbytes + zeros.nbytes
    copies = max(2, int(1.5e9 // nbytes))
    return [ck.PackedWeight(packed.copy(), scales.copy(), zeros.copy(), g, k=k) for _ in range(copies)], nbytes


def main() -> None:
    n, k = int(sys.argv[1]), int(sys.argv[2])
    bits = int(sys.argv[3]) if len(sys.argv) > 3 else 4
    g = 128 if k % 128 == 0 else 32
    rng = np.random.default_rng(0)
    weights, nbytes = cold_copies(rng, n, k, bits, g)
    copies = len(weights)
    x = rng.standard_normal((1, k), dtype=np.float32)
    out = np.empty((1, n), np.float32)
    for threads in (1, 2):
        ck._C._set_num_threads(threads)
        for w in weights:
            w.gemm(x, out=out)
        best = 0.0
        for _ in range(3):
            t = time.perf_counter()
            for w in weights:
                w.gemm(x, out=out)
            best = max(best, nbytes * copies / (time.perf_counter() - t) / 1e9)
        print(f"{n}x{k} {bits}-bit threads {threads}: {best:.1f} GB/s ({copies} copies of {nbytes / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
