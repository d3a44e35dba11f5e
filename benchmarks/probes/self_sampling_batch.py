"""Seconds per decode step of SmolLM2 (fp32, 1 thread, KV cache) at a given batch: the cost model
behind self-calibration batching (cat_core.calib._self_batch).

    python benchmarks/probes/self_sampling_batch.py BATCH
"""
import sys, time, torch, cProfile, pstats
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
import _models as M
torch.set_num_threads(1)
model, tok = M.load_model("smollm2")
B = int(sys.argv[1])
def run(steps):
    past = None; step_in = torch.full((B, 1), 1)
    with torch.no_grad():
        for _ in range(steps):
            out = model(input_ids=step_in, past_key_values=past, use_cache=True)
            past = out.past_key_values
            step_in = out.logits[:, -1, :].argmax(-1, keepdim=True)
run(4)
t = time.time(); run(32); print("per step", (time.time() - t) / 32)
cProfile.run("run(16)", "/tmp/exp/prof")
pstats.Stats("/tmp/exp/prof").sort_stats("tottime").print_stats(12)
