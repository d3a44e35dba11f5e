import sys, torch
sys.path[:0] = ["benchmarks", "benchmarks/probes"]
import _models as M
from decode_profile import quantize_body
from decode_vs_llamacpp import cat_decode
from cat_core.native_decode import enable_native_decode
from cat_core.nn import set_int8_activations
torch.set_num_threads(2)
for bits in (4, 3):
    model, _ = M.load_model("smollm2"); model.eval(); quantize_body(model, bits, 8); enable_native_decode(model)
    set_int8_activations(model, True)
    print(bits, "int8 loop tok/s", [round(cat_decode(model, 128, 3), 1) for _ in range(3)])
