"""Time of one native decode step alone (SmolLM2-135M, 4-bit RTN g64, 8-bit head; position 64;
best of 5 x 300 steps): what cat_kernels.Decoder costs without Python, the head or the
embedding.

    python benchmarks/probes/native_step_time.py
"""
import time, torch, sys
sys.path.insert(0, "benchmarks"); sys.path.insert(0, "benchmarks/probes")
import _models as M
from decode_profile import quantize_body
from cat_core.native_decode import _Native
model, _ = M.load_model("smollm2"); model.eval(); quantize_body(model, 4, 8)
nat = _Native(model)
kv = torch.zeros(nat.dec.kv_shape(512)); out = torch.empty(576); x = torch.randn(1, 576)
best = 1e9
for r in range(5):
    t = time.perf_counter()
    for i in range(300): nat.dec.step(x, 64, kv, out)
    best = min(best, (time.perf_counter() - t) / 300 * 1e3)
print("step %.3f ms" % best)
