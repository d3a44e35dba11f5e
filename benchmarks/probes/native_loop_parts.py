"""What a native decode token costs by parts (SmolLM2-135M, 4-bit RTN g64, 8-bit head, int8
activations, 2 threads): greedy_steps (the model's forward, as generate() runs it), a bare loop
of embedding lookup + native step + head + argmax, and the native step alone, each 128 tokens,
three times.

    python benchmarks/probes/native_loop_parts.py
"""

import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]
import _models as M  # noqa: E402
from cat_core.native_decode import enable_native_decode  # noqa: E402
from cat_core.nn import set_int8_activations  # noqa: E402
from decode_profile import greedy_steps, quantize_body  # noqa: E402

torch.set_num_threads(2)
model, _ = M.load_model("smollm2")
model.eval()
quantize_body(model, 4, 8)
enable_native_decode(model)
set_int8_activations(model, True)
greedy_steps(model, 128, [1])
print("greedy_steps ms/token", [round(greedy_steps(model, 128, [1])[0] * 1e3, 3) for _ in range(3)])
dec = model.__dict__["_cat_native_decode"].native.dec
dec.int8_activations = True
emb, head = model.get_input_embeddings(), model.get_output_embeddings()
kv = torch.zeros(dec.kv_shape(512))
out = torch.empty(1, 576)


def loop(n: int = 128, with_head: bool = True) -> float:
    tok = torch.tensor([[1]])
    t = time.perf_counter()
    for pos in range(n):
        x = emb(tok).reshape(1, 1, 576) if with_head else torch.zeros(1, 1, 576)
        dec.step(x, pos, kv, out)
        if with_head:
            tok = head(out.view(1, 1, 576))[:, -1].argmax(-1, keepdim=True)
    return (time.perf_counter() - t) / n * 1e3


with torch.no_grad():
    loop()
    print("embedding + step + head + argmax ms/token", [round(loop(), 3) for _ in range(3)])
    print("step alone ms/token", [round(loop(with_head=False), 3) for _ in range(3)])
