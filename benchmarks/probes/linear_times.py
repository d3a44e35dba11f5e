"""Time of every QuantLinear call inside real decode steps of the embedded SmolLM2, by shape.

    python benchmarks/probes/linear_times.py

4-bit RTN g64 body, head 8-bit (decode_profile.quantize_body), 16 greedy steps after a warm-up
run: ms a step, then per weight shape the calls a step, us a call and ms a step spent in
``QuantLinear.forward`` (the kernel and its Python around it).
"""

from __future__ import annotations

import collections
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import _models as M  # noqa: E402
from decode_profile import greedy_steps, quantize_body  # noqa: E402  (this folder)


def main() -> None:
    from cat_core.nn import QuantLinear

    model = quantize_body(M.load_model("smollm2")[0], 4, 8)
    spent: collections.Counter = collections.Counter()
    calls: collections.Counter = collections.Counter()
    forward = QuantLinear.forward

    def timed(self, x):
        t = time.perf_counter()
        y = forward(self, x)
        spent[(self.out_features, self.in_features)] += time.perf_counter() - t
        calls[(self.out_features, self.in_features)] += 1
        return y

    QuantLinear.forward = timed
    greedy_steps(model, 16)
    spent.clear(), calls.clear()
    step, _ = greedy_steps(model, 16)  # the prompt's forward is counted too: 17 forwards
    print(f"{M.cpu_isa()}: {1e3 * step:.1f} ms a step (timers included)")
    for shape in spent:
        print(f"{shape[0]}x{shape[1]}: {calls[shape] / 17:.0f} calls a step, {1e6 * spent[shape] / calls[shape]:.1f} us a call")
    print(f"all linears: {1e3 * sum(spent.values()) / 17:.2f} ms a forward")


if __name__ == "__main__":
    main()
