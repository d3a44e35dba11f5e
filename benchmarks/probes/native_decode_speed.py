"""Greedy decode tokens/s of the native step (SmolLM2-135M, RTN g64 at 4 and 3 bits, 8-bit head,
128 tokens after one start token, 2 threads; median of 3 runs after a warm-up), with float and
with int8 activations.

    python benchmarks/probes/native_decode_speed.py
"""
import statistics
import sys

import torch

sys.path.insert(0, "benchmarks"); sys.path.insert(0, "benchmarks/probes")
import _models as M  # noqa: E402
from decode_profile import greedy_steps, quantize_body  # noqa: E402

from cat_core.native_decode import enable_native_decode  # noqa: E402
from cat_core.nn import set_int8_activations  # noqa: E402

torch.set_num_threads(2)
for bits in (4, 3):
    model, _ = M.load_model("smollm2"); model.eval(); quantize_body(model, bits, 8); enable_native_decode(model)
    for int8 in (False, True):
        set_int8_activations(model, int8)
        greedy_steps(model, 128, [1])
        runs = [1.0 / greedy_steps(model, 128, [1])[0] for _ in range(3)]
        print(f"{bits}-bit {'int8' if int8 else 'float'} activations: tok/s median {statistics.median(runs):.1f} "
              f"(runs {', '.join(f'{r:.1f}' for r in runs)})", flush=True)
