import sys, torch
sys.path.insert(0, "/work/main/benchmarks")
import _models as M
from cat_core.nn import QuantLinear
from cat_core.quant import quantize_tensor
torch.set_num_threads(2)
g = torch.Generator().manual_seed(0)
bits = int(sys.argv[1]) if len(sys.argv) > 1 else 4
out = []
for n, k in ((1536, 576), (576, 1536), (2048, 2048), (8192, 2048)):
    w = torch.randn(n, k, generator=g) / k ** 0.5
    ql = QuantLinear.from_quantized_tensor(quantize_tensor(w, bits=bits, group_size=64))
    pw = ql._packed_weight(); wd = ql.dequantize_weight(torch.float32)
    for m in (8, 32, 128, 512):
        x = torch.randn(m, k, generator=g)
        tk = M.median_ms(lambda: pw.gemm(x)); tf = M.median_ms(lambda: x @ wd.T)
        out.append(f"{n}x{k} M{m} k={tk:.3f} f={tf:.3f} r={tf/tk:.2f}")
print("  ".join(out))
