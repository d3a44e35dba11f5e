"""Time of one native decode step alone (SmolLM2-135M, 4-bit RTN g64, 8-bit head; position 64;
best of 5 x 300 steps): what cat_kernels.Decoder costs without Python, the head or the
embedding; float activations, then int8 activations (Decoder.int8_activations), and the 8-bit
head's product alone both ways.

    python benchmarks/probes/native_step_time.py
"""
import time, torch, sys
sys.path.insert(0, "benchmarks"); sys.path.insert(0, "benchmarks/probes")
import _models as M
from decode_profile import quantize_body
from cat_core.native_decode import _Native
model, _ = M.load_model("smollm2"); model.eval(); quantize_body(model, 4, 8)
nat = _Native(model)
kv = torch.zeros(nat.dec.kv_shape(512)); out = torch.empty(1, 576); x = torch.randn(1, 1, 576)
head = model.get_output_embeddings()
pw = head._packed_weight() if hasattr(head, "_packed_weight") else None


def best_ms(fn, n=300):
    best = 1e9
    for r in range(5):
        t = time.perf_counter()
        for i in range(n): fn()
        best = min(best, (time.perf_counter() - t) / n * 1e3)
    return best


h = out.view(1, 576)
for int8 in (False, True):
    nat.dec.int8_activations = int8
    step = best_ms(lambda: nat.dec.step(x, 64, kv, out))
    line = "step %.3f ms" % step
    if pw is not None:
        pw.int8_activations = int8
        line += ", head %.3f ms" % best_ms(lambda: pw.gemm(h))
    print(("int8 x: " if int8 else "float x: ") + line)
