"""generate() with a static cache and torch.compile (transformers' CompileConfig, all devices),
against plain generate(), for the embedded SmolLM2 in float32 and with a 4-bit body + 8-bit head.

    python benchmarks/probes/compile_generate.py fp|q4 dyn|static

Prints the first call's time (the compile), ms a token over 64 greedy tokens, and the first ids.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import _models as M  # noqa: E402
from decode_profile import quantize_body  # noqa: E402  (this folder)


def main() -> None:
    from transformers.generation import CompileConfig

    which, mode = sys.argv[1], sys.argv[2]
    model = M.load_model("smollm2")[0]
    if which == "q4":
        quantize_body(model, 4, 8)
    ids = torch.tensor([[1, 504, 3458, 282]])
    kw = {}
    if mode == "static":
        cfg = CompileConfig(fullgraph=False, dynamic=False)
        cfg._compile_all_devices = True  # transformers compiles on CUDA only unless told
        model.generation_config.compile_config = cfg
        kw = {"cache_implementation": "static", "compile_config": cfg}

    def run(n: int):
        t = time.perf_counter()
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=n, do_sample=False, **kw)
        return time.perf_counter() - t, out

    t0, _ = run(8)
    t1, _ = run(8)
    t2, out = run(72)
    print(f"{which} {mode}: first call {t0:.1f} s; {1e3 * (t2 - t1) / 64:.1f} ms a token; ids {out[0, :12].tolist()}")


if __name__ == "__main__":
    main()
