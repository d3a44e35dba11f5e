"""Clip search speed on one 1b-preset MLP linear (2048 x 8192, group 64, 4-bit asymmetric), and
the cost of the elementwise ops it is made of; ``--against REV`` also runs the search of git
revision REV on the same data and checks the bounds and errors are identical.

    python benchmarks/probes/clip_speed.py [--against a1e3c0e]

Prints the search's time, torch.profiler's top ops on 512 of its rows, and microseconds per call
of torch.clamp with broadcast tensor bounds against maximum + minimum on a [128, 32, 64] batch.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import tempfile
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from cat_core.awq._clip_search import search_clip
from cat_core.config import ClipSearch, QuantConfig

REPO = Path(__file__).resolve().parents[2]
_MODULE = "packages/cat-core/src/cat_core/awq/_clip_search.py"


def _gram(x: torch.Tensor, g: int) -> torch.Tensor:
    t, k = x.shape
    xg = x.reshape(t, k // g, g).transpose(0, 1)
    return torch.bmm(xg.transpose(1, 2), xg) / t


def _us(f, n: int = 200) -> float:
    f()
    t = time.perf_counter()
    for _ in range(n):
        f()
    return (time.perf_counter() - t) / n * 1e6


def _old_search(rev: str):
    src = subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:{_MODULE}"], capture_output=True, text=True,
                         check=True).stdout
    path = Path(tempfile.mkdtemp()) / "old_clip_search.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("old_clip_search", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.search_clip


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--against", default=None, help="git revision whose search must give the same results")
    args = p.parse_args()
    torch.manual_seed(0)
    w, x = torch.randn(2048, 8192), torch.randn(512, 8192)
    config = QuantConfig(bits=4, group_size=64)
    gram = _gram(x, 64)
    t = time.perf_counter()
    search_clip(w, gram, config)
    print(f"search_clip 2048 x 8192 g64: {time.perf_counter() - t:.2f} s")
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        search_clip(w[:512], gram, config)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=10))

    wg = torch.randn(128, 32, 64)
    lo, hi = wg.amin(-1, keepdim=True) * 0.8, wg.amax(-1, keepdim=True) * 0.8
    out = torch.empty_like(wg)
    print(f"torch.clamp, tensor bounds: {_us(lambda: torch.clamp(wg, min=lo, max=hi, out=out)):.0f} us; "
          f"maximum + minimum: {_us(lambda: torch.minimum(torch.maximum(wg, lo, out=out), hi, out=out)):.0f} us")

    if args.against:
        old = _old_search(args.against)
        cases = [(37, 384, QuantConfig(bits=4, group_size=64)), (70, 640, QuantConfig(bits=3, group_size=64)),
                 (5, 128, QuantConfig(bits=4, group_size=32, sym=True)),
                 (70, 640, QuantConfig(bits=4, group_size=128, clip=ClipSearch(stride=3))),
                 (2048, 8192, config)]
        for n, k, c in cases:
            wi = torch.randn(n, k) * (1 + torch.rand(k) * 3)
            xi = torch.randn(512, k) * (1 + torch.rand(k) * 5)
            xi[0] *= 30
            gi = _gram(xi, c.group_size)
            t0 = time.perf_counter()
            a = old(wi, gi, c)
            t1 = time.perf_counter()
            b = search_clip(wi, gi, c)
            t2 = time.perf_counter()
            same = all(torch.equal(u, v) for u, v in zip(a, b))
            print(f"{n} x {k} bits {c.bits} g{c.group_size} sym {c.sym} stride {c.clip.stride}: identical {same}; "
                  f"{args.against} {t1 - t0:.2f} s, now {t2 - t1:.2f} s")
            assert same


if __name__ == "__main__":
    main()
