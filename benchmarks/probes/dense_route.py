"""Why dequantize + matmul loses on this CPU, and where the kernel stops winning at large M.

    python benchmarks/probes/dense_route.py

Times (median of 5, ms): the dequantization of a whole weight into a fresh tensor and into a
reused one (page faults of a fresh 16-67 MB tensor vs the arithmetic alone); then, for float32
and bfloat16 activations and M up to 2048, the fused kernel, dequantize (fresh) + matmul, and the
unquantized matmul in the same dtype.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import _models as M  # noqa: E402


def main() -> None:
    from cat_core.nn import QuantLinear
    from cat_core.quant import quantize_tensor

    print(f"{M.cpu_isa()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    g = torch.Generator().manual_seed(0)
    for n, k in ((2048, 2048), (8192, 2048), (1536, 576)):
        w = torch.randn(n, k, generator=g) / k ** 0.5
        ql = QuantLinear.from_quantized_tensor(quantize_tensor(w, bits=4, group_size=128 if k % 128 == 0 else 64))
        pw = ql._packed_weight()
        out = torch.empty(n, k)
        fresh = M.median_ms(lambda: pw.dequantize(torch.float32))
        reused = M.median_ms(lambda: pw._w.dequantize(out, 0))
        print(f"\n{n}x{k} 4-bit: dequantize fresh {fresh:.2f} ms, into a reused tensor {reused:.2f} ms "
              f"({n * k * 4 / 1e6:.0f} MB float32)")
        print("| dtype | M | kernel | dequant+matmul | unquantized matmul | kernel vs unquantized |")
        print("|---|---:|---:|---:|---:|---:|")
        for dtype in (torch.float32, torch.bfloat16):
            wd = ql.dequantize_weight(dtype)
            for m in (64, 128, 512, 1024, 2048):
                x = torch.randn(m, k, generator=g).to(dtype)
                tk = M.median_ms(lambda: pw.gemm(x))
                td = M.median_ms(lambda: x @ pw.dequantize(dtype).T)
                tf = M.median_ms(lambda: x @ wd.T)
                print(f"| {str(dtype)[6:]} | {m} | {tk:.2f} | {td:.2f} | {tf:.2f} | {tf / tk:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
