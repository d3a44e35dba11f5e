"""Where a decode step of the embedded SmolLM2 goes: torch.profiler over greedy steps.

    python benchmarks/probes/decode_profile.py [--bits 4] [--head-bits 8] [--steps 32]

The model is the fp32 SmolLM2-135M-Instruct with every block linear RTN-quantized (decode speed
does not depend on how the codes were chosen) and its head quantized as cat-generate serves it.
Prints the wall time per step, then the ops by self CPU time (the kernels' calls show up as
QuantLinear forwards' self time: they run outside torch's dispatcher).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import _models as M  # noqa: E402


def quantize_body(model, bits: int, head_bits: int):
    """``model`` (in place) as cat-generate serves it: every block linear RTN-quantized (g64; decode
    speed does not depend on how the codes were chosen) and the head at ``head_bits``."""
    from cat_core.awq import prepare, rtn_quantize
    from cat_core.config import QuantConfig
    from cat_core.nn import quantize_head, replace_linears

    names = {n for n, _ in prepare(model).layers}
    res = rtn_quantize(model, QuantConfig(bits=bits, group_size=64))
    replace_linears(model, {k: v for k, v in res.tensors.items() if k in names})
    quantize_head(model, head_bits)
    return model


def greedy_steps(model, n: int, prompt: list[int] | None = None) -> tuple[float, torch.Tensor]:
    """Seconds per greedy decode step (batch 1, KV cache, last-position logits) over ``n`` steps
    after ``prompt`` (default: a fixed 4-token one), and the last step's logits."""
    from cat_core.decode import cached_forward

    ids = torch.tensor([prompt or [1, 504, 3458, 282]]) % model.config.vocab_size
    with torch.no_grad():
        logits, cache = cached_forward(model, ids, last_only=True)
        t = time.perf_counter()
        for _ in range(n):
            nxt = logits[:, -1].argmax(-1, keepdim=True)
            logits, cache = cached_forward(model, nxt, cache, last_only=True)
        return (time.perf_counter() - t) / n, logits


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--bits", type=int, default=4)
    p.add_argument("--head-bits", type=int, default=8)
    p.add_argument("--steps", type=int, default=32)
    p.add_argument("--fp", action="store_true", help="profile the unquantized model instead")
    args = p.parse_args()
    model, _ = M.load_model("smollm2")
    if not args.fp:
        quantize_body(model, args.bits, args.head_bits)

    def steps(n: int) -> float:
        return greedy_steps(model, n)[0]

    steps(8)
    print(f"{1e3 * min(steps(args.steps) for _ in range(3)):.2f} ms a step (best of 3 x {args.steps} steps)")
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        steps(args.steps)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))


if __name__ == "__main__":
    main()
