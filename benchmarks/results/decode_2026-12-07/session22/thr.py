import sys, torch, time
from cat_core.nn import QuantLinear
from cat_core.quant import quantize_tensor
from cat_kernels import _C
g = torch.Generator().manual_seed(0)
n,k,m = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
w = torch.randn(n, k, generator=g) / k ** 0.5
pw = QuantLinear.from_quantized_tensor(quantize_tensor(w, bits=4, group_size=64))._packed_weight()
x = torch.randn(m, k, generator=g)
for isa in ("amx","avx512"):
  for th in (1,2):
    _C._set_isa(isa); _C._set_num_threads(th)
    pw.gemm(x); t=time.perf_counter()
    for _ in range(10): pw.gemm(x)
    print(isa, th, "ms %.2f" % ((time.perf_counter()-t)/10*1e3))
