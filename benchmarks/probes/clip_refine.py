"""Held-out output error of RTN and the clip search with and without clip_refine, for every linear
but q/k of the given blocks (16 x 512 wikitext2-valid tokens: clip on the first half, scored on the
second; "massive" = tokens over 8x the median input norm).

    python benchmarks/probes/clip_refine.py BITS GROUP MODEL BLOCKS   # e.g. 3 128 gemma3 3,12
"""
import dataclasses
import sys

import torch
from _inputs import linear_inputs
from cat_core.config import QuantConfig
from cat_core.awq._clip_search import search_clip, apply_clip, GramAccumulator
from cat_core.quant import quantize_tensor, dequantize
torch.set_num_threads(1)
bits, gs, key = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
blocks = [int(b) for b in sys.argv[4].split(",")]
model, got = linear_inputs(key, 16, blocks, lambda name: not name.endswith(("q_proj", "k_proj")))
cfg = QuantConfig(bits=bits, group_size=gs)
def gram(x):
    a = GramAccumulator(x.shape[1], gs)
    a.add(x)
    return a.mean()
def errs(w, wq, x, big):
    d = (x @ (wq - w).T) ** 2; o = (x @ w.T) ** 2
    return float(d[big].sum() / o[big].sum()), float(d[~big].sum() / o[~big].sum())
for name, x in got.items():
    half = x.shape[0] // 2
    xc, xe = x[:half], x[half:]
    nrm = xe.norm(dim=1); big = nrm > 8 * nrm.median()
    w = dict(model.named_modules())[name].weight.data.float()
    out = {"rtn": dequantize(quantize_tensor(w, cfg))}
    H = gram(xc)  # one Gram for both settings
    for label, c in (("norefine", dataclasses.replace(cfg, clip_refine=False)), ("refine", cfg)):
        lo, hi, _ = search_clip(w, H, c)
        wc = w.clone()
        apply_clip(wc, lo, hi)
        out[label] = dequantize(quantize_tensor(wc, cfg))
    print(f"{name} massive tokens {int(big.sum())}/{len(big)} max/med {float(nrm.max()/nrm.median()):.0f}")
    for k, v in out.items():
        eb, et = errs(w, v, xe, big)
        print(f"   {k:7s} massive {eb:.3e} typical {et:.3e}")
