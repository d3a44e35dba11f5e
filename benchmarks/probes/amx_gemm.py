"""The kernels' amx path (AMX-BF16 tiles, float x of 16+ rows) against their avx512 path and
torch's float32 matmul of the dequantized weight, by shape and M (4-bit g64 unless a width is
given; ms, median of 5 via _models.median_ms; the two paths alternate within one process):

    python benchmarks/probes/amx_gemm.py [BITS]

Needs a CPU with AMX (``amx`` in ``cat_kernels.build_info()["cpu_isas"]``).
"""
import sys, torch
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import _models as M
from cat_core.nn import QuantLinear
from cat_core.quant import quantize_tensor
from cat_kernels import _C
torch.set_num_threads(2)
g = torch.Generator().manual_seed(0)
bits = int(sys.argv[1]) if len(sys.argv) > 1 else 4
print("| shape | M | avx512 ms | amx ms | fp32 matmul ms | amx vs fp32 | amx vs avx512 |")
for n, k in ((1536, 576), (576, 1536), (2048, 2048), (8192, 2048), (2048, 8192)):
    w = torch.randn(n, k, generator=g) / k ** 0.5
    ql = QuantLinear.from_quantized_tensor(quantize_tensor(w, bits=bits, group_size=64))
    pw = ql._packed_weight(); wd = ql.dequantize_weight(torch.float32)
    for m in (8, 16, 32, 128, 512):
        x = torch.randn(m, k, generator=g)
        _C._set_isa("avx512"); tk = M.median_ms(lambda: pw.gemm(x))
        _C._set_isa("amx"); ta = M.median_ms(lambda: pw.gemm(x))
        tf = M.median_ms(lambda: x @ wd.T)
        print(f"| {n}x{k} | {m} | {tk:.3f} | {ta:.3f} | {tf:.3f} | {tf/ta:.2f}x | {tk/ta:.2f}x |", flush=True)
