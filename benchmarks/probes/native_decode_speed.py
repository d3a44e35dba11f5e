import sys, statistics, torch
sys.path.insert(0, "benchmarks"); sys.path.insert(0, "benchmarks/probes")
import _models as M
from decode_profile import greedy_steps, quantize_body
from cat_core.native_decode import enable_native_decode
torch.set_num_threads(2)
for bits in (4, 3):
    model, _ = M.load_model("smollm2"); model.eval(); quantize_body(model, bits, 8); enable_native_decode(model)
    greedy_steps(model, 128, [1])
    print(bits, "bit tok/s", statistics.median(1.0 / greedy_steps(model, 128, [1])[0] for _ in range(3)))
