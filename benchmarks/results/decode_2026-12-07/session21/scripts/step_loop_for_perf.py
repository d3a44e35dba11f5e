import time, torch, sys
sys.path.insert(0, "benchmarks"); sys.path.insert(0, "benchmarks/probes")
import _models as M
from decode_profile import quantize_body
from cat_core.native_decode import _Native
torch.set_num_threads(2)
model, _ = M.load_model("smollm2"); model.eval(); quantize_body(model, 4, 8)
nat = _Native(model); dec = nat.dec; dec.int8_activations = True
kv = torch.zeros(dec.kv_shape(512)); out = torch.empty(1, 576); x = torch.randn(1, 1, 576)
for i in range(50): dec.step(x, 64, kv, out)
t = time.perf_counter()
for i in range(2000): dec.step(x, 64, kv, out)
print((time.perf_counter() - t) / 2000 * 1e3, "ms")
