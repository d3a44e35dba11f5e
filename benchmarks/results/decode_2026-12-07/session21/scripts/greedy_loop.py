import sys, time, torch
sys.path[:0] = ["benchmarks", "benchmarks/probes"]
import cat_kernels; print("cat_kernels from", cat_kernels.__file__)
import _models as M
from cat_core.native_decode import enable_native_decode
from cat_core.nn import set_int8_activations
from decode_profile import greedy_steps, quantize_body
torch.set_num_threads(2)
model, _ = M.load_model("smollm2"); model.eval()
quantize_body(model, int(sys.argv[1]) if len(sys.argv) > 1 else 4, 8)
enable_native_decode(model); set_int8_activations(model, True)
greedy_steps(model, 128, [1])
v = sorted(greedy_steps(model, 128, [1])[0] * 1e3 for _ in range(5))
print(f"greedy ms/token best {v[0]:.3f} median {v[2]:.3f}")
