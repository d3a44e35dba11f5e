import time, torch, sys
sys.path.insert(0, "benchmarks"); sys.path.insert(0, "benchmarks/probes")
import _models as M
from decode_profile import quantize_body
from cat_core.native_decode import _Native
torch.set_num_threads(2)
model, _ = M.load_model("smollm2"); model.eval(); quantize_body(model, 4, 8)
full = model.model.layers
def best_ms(fn, n=300):
    best = 1e9
    for r in range(5):
        t = time.perf_counter()
        for i in range(n): fn()
        best = min(best, (time.perf_counter() - t) / n * 1e3)
    return best
for L in (2, 4, 8, 16, 30):
    model.model.layers = full[:L]; model.config.num_hidden_layers = L
    nat = _Native(model); dec = nat.dec; dec.int8_activations = True
    kv = torch.zeros(dec.kv_shape(512)); out = torch.empty(1, 576); x = torch.randn(1, 1, 576)
    ms = best_ms(lambda: dec.step(x, 64, kv, out))
    print(f"layers {L}: step {ms:.3f} ms, per layer {ms / L * 1e3:.1f} us", flush=True)
