"""Where a native decode token goes (SmolLM2-135M, 4-bit RTN g64, 8-bit head, 128 greedy tokens
after one start token, 2 threads): cProfile of the decode loop, sorted by own time. The native
step is `_step_torch` (the C++ call), the head is `_gemm_torch` (128 of its calls; the other 211
are the one-token prompt's linears), the rest is Python and torch glue.

    python benchmarks/probes/native_decode_profile.py [--int8]   # --int8: int8 activations
"""

import cProfile
import pstats
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
import _models as M  # noqa: E402
from cat_core.native_decode import enable_native_decode  # noqa: E402
from decode_profile import greedy_steps, quantize_body  # noqa: E402

torch.set_num_threads(2)
model, _ = M.load_model("smollm2")
model.eval()
quantize_body(model, 4, 8)
enable_native_decode(model)
if "--int8" in sys.argv:
    from cat_core.nn import set_int8_activations

    set_int8_activations(model, True)
greedy_steps(model, 128, [1])
pr = cProfile.Profile()
pr.enable()
seconds, _ = greedy_steps(model, 128, [1])
pr.disable()
print(f"profiled: {seconds * 1e3:.2f} ms a token")
pstats.Stats(pr).sort_stats("tottime").print_stats(12)
seconds, _ = greedy_steps(model, 128, [1])
print(f"unprofiled: {seconds * 1e3:.2f} ms a token")
