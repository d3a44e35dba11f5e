"""Per-call cost of one quantized linear at decode size (M=1), three ways.

Decoding runs every linear once per token, so a fixed per-call cost multiplies by the number of
linears (210 in SmolLM2-135M). This separates the kernel from the layers above it:
  nn.Linear            fp32 reference
  ck.gemm numpy        cat-kernels from numpy arrays (Python checks + kernel)
  ck.gemm torch        the same from torch tensors (adds DLPack exports)
  QuantLinear          the torch custom op path a model uses
Usage: python benchmarks/op_overhead.py   (prints a Markdown table; medians of 300 calls)
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

import cat_kernels as ck
from cat_core.nn import QuantLinear
from cat_core.quant import quantize_tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _models import median_ms  # noqa: E402


def _median_us(f, reps: int = 300) -> float:
    return 1e3 * median_ms(f, reps, warmup=30)


def main() -> None:
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, cat-kernels {ck.build_info()}")
    print("| N x K | nn.Linear us | ck.gemm numpy us | ck.gemm torch us | QuantLinear us |")
    print("|---|---|---|---|---|")
    for n, k in [(576, 576), (1536, 576), (576, 1536)]:
        lin = torch.nn.Linear(k, n, bias=False)
        qt = quantize_tensor(lin.weight.data, bits=4, group_size=64)
        ql = QuantLinear.from_quantized_tensor(qt, None)
        x = torch.randn(1, k)
        p, z = ck.pack(qt.codes, 4), ck.pack_zeros(qt.zeros, 4)
        pn, zn, sn, xn = (np.asarray(t) for t in (p, z, qt.scales.numpy(), x.numpy()))
        with torch.no_grad():
            row = [_median_us(lambda: lin(x)),
                   _median_us(lambda: ck.gemm(xn, pn, sn, zn, 64)),
                   _median_us(lambda: ck.gemm(x, p, qt.scales, z, 64)),
                   _median_us(lambda: ql(x))]
        print(f"| {n} x {k} | " + " | ".join(f"{v:.0f}" for v in row) + " |")


if __name__ == "__main__":
    main()
