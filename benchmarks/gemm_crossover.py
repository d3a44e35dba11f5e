"""Where the fused kernel stops paying: rows M of x at which dequantize + matmul wins.

    python benchmarks/gemm_crossover.py [--out benchmarks/results/gemm_crossover_DATE.md]

For the linear shapes of the embedded SmolLM2 and of the 1b preset (Llama-3.2-1B widths), 4 and
3 bits, float32 activations, times per M (median of --reps calls after a warm-up, quiet machine
assumed, torch's threads): the fused split-K kernel (``PackedWeight.gemm``), the dequantize-once
+ ``torch.matmul`` route QuantLinear takes above ``cpu_gemm_max_m(dtype)``, and the float32 ``x @ W.T`` of
the unquantized layer. Prints a Markdown table and, per shape and bit width, the largest M at
which the kernel is still the faster route.
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
from pathlib import Path

import torch

import _models as M  # this folder

SHAPES = {  # (name, N, K, group)
    "smollm2": [("qkv-like 576x576", 576, 576, 64), ("up 1536x576", 1536, 576, 64), ("down 576x1536", 576, 1536, 64)],
    "1b": [("q 2048x2048", 2048, 2048, 128), ("kv 512x2048", 512, 2048, 128), ("up 8192x2048", 8192, 2048, 128),
           ("down 2048x8192", 2048, 8192, 128)],
}
MS = (1, 8, 16, 32, 48, 64, 96, 128, 192, 256, 512)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--models", nargs="+", default=list(SHAPES))
    p.add_argument("--bits", type=int, nargs="+", default=[4, 3])
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    from cat_core.nn import QuantLinear
    from cat_core.quant import quantize_tensor

    lines = [f"Machine: {platform.machine()} {M.cpu_isa()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
             f"{dt.datetime.now().isoformat(timespec='seconds')}; ms per call, median of {args.reps}.", "",
             "| shape | bits | M | kernel | dequant+matmul | fp32 matmul | kernel vs fp32 |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    summary = []
    g = torch.Generator().manual_seed(0)
    for model in args.models:
        for name, n, k, group in SHAPES[model]:
            w = torch.randn(n, k, generator=g) / k ** 0.5
            for bits in args.bits:
                ql = QuantLinear.from_quantized_tensor(quantize_tensor(w, bits=bits, group_size=group))
                pw = ql._packed_weight()
                wd = ql.dequantize_weight()
                last = 0
                for m in MS:
                    x = torch.randn(m, k, generator=g)
                    tk = M.median_ms(lambda: pw.gemm(x), args.reps)
                    td = M.median_ms(lambda: x @ pw.dequantize(torch.float32).T, args.reps)
                    tf = M.median_ms(lambda: x @ wd.T, args.reps)
                    if tk <= td:
                        last = m
                    lines.append(f"| {model} {name} | {bits} | {m} | {tk:.3f} | {td:.3f} | {tf:.3f} | {tf / tk:.2f}x |")
                    print(lines[-1], flush=True)
                summary.append(f"- {model} {name}, {bits}-bit: kernel faster up to M={last} (of {MS})")
    text = "\n".join(lines + ["", *summary]) + "\n"
    print("\n".join(summary))
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
