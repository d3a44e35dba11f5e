"""The packed GEMV alone at decode shapes: hot (one weight called again and again) and cold
(weights rotated through copies larger than the caches), against this machine's read bandwidth.

    python benchmarks/probes/kernel_bandwidth.py

Prints numpy's single-threaded sum over 256 MB (GB/s), then per shape: QuantLinear and bare
kernel (``PackedWeight.gemm``) us a call on a hot weight, torch's fp32 linear, and the cold
kernel's us a call and GB/s of packed weights + scales + zeros read.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import _models as M  # noqa: E402


def _us_per_call(fs, rounds: int = 5, inner: int = 1) -> float:
    for f in fs:
        f()
    best = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(inner):
            for f in fs:
                f()
        best = min(best, (time.perf_counter() - t) / (inner * len(fs)))
    return 1e6 * best


def main() -> None:
    from cat_core.nn import QuantLinear
    from cat_core.quant import quantize_tensor

    a = np.random.rand(64 << 20).astype(np.float32)
    t = time.perf_counter()
    for _ in range(3):
        a.sum()
    print(f"{M.cpu_isa()}, {torch.get_num_threads()} threads; numpy sum {3 * a.nbytes / (time.perf_counter() - t) / 1e9:.1f} GB/s")
    torch.manual_seed(0)
    for n, k, bits, g, copies in [(576, 576, 4, 64, 200), (192, 576, 4, 64, 400), (1536, 576, 4, 64, 100),
                                  (576, 1536, 4, 64, 100), (49152, 576, 8, 64, 3), (49152, 576, 4, 64, 4),
                                  (11008, 4096, 4, 128, 3), (11008, 4096, 8, 128, 2)]:
        mods = [QuantLinear.from_quantized_tensor(quantize_tensor(torch.randn(n, k), bits=bits, group_size=g))
                for _ in range(copies)]
        x, w = torch.randn(1, k), torch.randn(n, k)
        pws = [m._packed_weight() for m in mods]
        hot_mod = _us_per_call([lambda: mods[0](x)], inner=200)
        hot_kernel = _us_per_call([lambda: pws[0].gemm(x)], inner=200)
        fp = _us_per_call([lambda: torch.nn.functional.linear(x, w)], inner=200)
        cold = _us_per_call([lambda p=p: p.gemm(x) for p in pws])
        m0 = mods[0]
        nbytes = m0.qweight.numel() * 4 + m0.scales.numel() * 2 + (m0.qzeros.numel() * 4 if m0.qzeros is not None else 0)
        print(f"{n}x{k} {bits}-bit g{g}: hot module {hot_mod:.1f} us, hot kernel {hot_kernel:.1f} us, fp32 linear "
              f"{fp:.1f} us; cold kernel {cold:.1f} us = {nbytes / cold / 1e3:.1f} GB/s")


if __name__ == "__main__":
    main()
