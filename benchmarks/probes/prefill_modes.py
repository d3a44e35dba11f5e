"""Batch-1 prefill of SmolLM2-135M (fp32 vs 4-bit RTN g64 with float and with int8 activations,
8-bit head), 128 and 512 random tokens, last-position logits, median of 5 after a warm-up, two
alternating rounds; 2 threads. Run it under different libgomp waits to see how OpenMP's
spinning workers share the cores with the kernels' pool:

    python benchmarks/probes/prefill_modes.py
    GOMP_SPINCOUNT=10000 python benchmarks/probes/prefill_modes.py
"""

import os
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]
import _models as M  # noqa: E402
from cat_core.nn import set_int8_activations  # noqa: E402
from decode_profile import quantize_body  # noqa: E402
from decode_vs_llamacpp import cat_prefill  # noqa: E402

torch.set_num_threads(2)
print(f"GOMP_SPINCOUNT={os.environ.get('GOMP_SPINCOUNT', '(default)')}")
ref, _ = M.load_model("smollm2")
ref.eval()
model, _ = M.load_model("smollm2")
model.eval()
quantize_body(model, 4, 8)
for n in (128, 512):
    for _ in range(2):
        row = [f"fp32 {cat_prefill(ref, n, 5):.0f}"]
        for on in (False, True):
            set_int8_activations(model, on)
            row.append(f"{'int8' if on else 'float'} {cat_prefill(model, n, 5):.0f}")
        print(f"{n} tokens: " + ", ".join(row) + " tok/s", flush=True)
