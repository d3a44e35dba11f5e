"""Prefill tok/s of SmolLM2-135M 4-bit (RTN g64, head 8-bit) at batch 1 by prompt length, for the
three ways a QuantLinear can multiply M rows: the fused kernel, dequantize into a buffer reused
across calls + torch matmul (``reuse``, patched in here: not in the product), and dequantize into
a fresh tensor + matmul (``fresh``, the product's dense route). The route is forced with
CAT_CPU_GEMM_MAX_M:

    CAT_CPU_GEMM_MAX_M=100000 python benchmarks/probes/prefill_routes.py kernel
    CAT_CPU_GEMM_MAX_M=0 python benchmarks/probes/prefill_routes.py reuse
    CAT_CPU_GEMM_MAX_M=0 python benchmarks/probes/prefill_routes.py fresh
"""
import sys, os, time, statistics, threading, torch
sys.path.insert(0, "benchmarks"); sys.path.insert(0, "benchmarks/probes")
import _models as M
from decode_profile import quantize_body
from cat_core.decode import cached_forward
from cat_core.nn import _linear
torch.set_num_threads(2)
_local = threading.local()
def patched_forward(self, x):
    lead = x.shape[:-1]; x2 = x.reshape(-1, self.in_features)
    pw = self._packed_weight()
    if self._fused(x2.shape[0], x2.device, x2.dtype):
        y = pw.gemm(x2.contiguous())
    else:
        n, k = self.out_features, self.in_features
        buf = getattr(_local, "buf", None)
        if buf is None or buf.numel() < n * k:
            buf = _local.buf = torch.empty(n * k, dtype=torch.float32)
        w = buf[: n * k].view(n, k)
        pw._w.dequantize(w, 0)
        y = x2 @ w.T
    if self.bias is not None: y = y + self.bias
    return y.reshape(*lead, self.out_features)
mode = sys.argv[1]
if mode == "reuse": _linear.QuantLinear.forward = patched_forward
model, _ = M.load_model(sys.argv[2] if len(sys.argv) > 2 else "smollm2"); model.eval(); quantize_body(model, 4, 8)
for M_ in (16, 32, 64, 128, 512):
    ids = torch.randint(3, 1000, (1, M_))
    with torch.no_grad():
        for _ in range(2): cached_forward(model, ids, last_only=True)
        ts = []
        for _ in range(5):
            t = time.perf_counter(); cached_forward(model, ids, last_only=True); ts.append(time.perf_counter() - t)
    print(mode, os.environ.get("CAT_CPU_GEMM_MAX_M"), "M", M_, "tok/s %.0f" % (M_ / statistics.median(ts)))
