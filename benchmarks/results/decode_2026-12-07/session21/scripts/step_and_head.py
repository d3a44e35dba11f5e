import time, torch, sys
sys.path.insert(0, "benchmarks"); sys.path.insert(0, "benchmarks/probes")
import _models as M
import cat_kernels; print("cat_kernels from", cat_kernels.__file__)
from decode_profile import quantize_body
from cat_core.native_decode import _Native
torch.set_num_threads(2)
model, _ = M.load_model("smollm2"); model.eval(); quantize_body(model, 4, 8)
nat = _Native(model); dec = nat.dec; dec.int8_activations = True
kv = torch.zeros(dec.kv_shape(512)); out = torch.empty(1, 576); x = torch.randn(1, 1, 576)
head = model.get_output_embeddings()
def best_ms(fn, n=300):
    best = 1e9
    for r in range(7):
        t = time.perf_counter()
        for i in range(n): fn()
        best = min(best, (time.perf_counter() - t) / n * 1e3)
    return best
h = out.view(1, 1, 576)
with torch.no_grad():
    print(f"step {best_ms(lambda: dec.step(x, 64, kv, out)):.3f} ms  head {best_ms(lambda: head(h)):.3f} ms  step+head {best_ms(lambda: (dec.step(x, 64, kv, out), head(h))):.3f} ms")
