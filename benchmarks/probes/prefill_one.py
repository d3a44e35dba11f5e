"""Batch-1 prefill of 128 random tokens, SmolLM2-135M fp32 or 4-bit RTN g64 (8-bit head), float
activations, last-position logits; ms per prefill over 10 after 3 warm-ups. With a second
argument, a torch profiler table of 5 prefills instead (the kernels' eager calls do not show in it).

    python benchmarks/probes/prefill_one.py fp32|q [profile]
"""
import sys, torch, time
from pathlib import Path
HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]
import _models as M
from decode_profile import quantize_body
from cat_core.decode import cached_forward
torch.set_num_threads(2)
model, _ = M.load_model("smollm2"); model.eval()
if sys.argv[1] != "fp32": quantize_body(model, 4, 8)
ids = torch.randint(3, 1000, (1, 128))
prof = len(sys.argv) > 2
with torch.no_grad():
    for _ in range(3): cached_forward(model, ids, last_only=True)
    if prof:
        from torch.profiler import profile, ProfilerActivity
        with profile(activities=[ProfilerActivity.CPU]) as p:
            for _ in range(5): cached_forward(model, ids, last_only=True)
        print(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
    else:
        t = time.perf_counter()
        for _ in range(10): cached_forward(model, ids, last_only=True)
        print(sys.argv[1], "ms", (time.perf_counter() - t) / 10 * 1e3)
