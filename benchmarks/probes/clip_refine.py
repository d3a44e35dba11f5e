"""Held-out output error of RTN and the clip search with and without clip_refine, for every linear
but q/k of the given blocks (16 x 512 wikitext2-valid tokens: clip on the first half, scored on the
second; "massive" = tokens over 8x the median input norm).

    python benchmarks/probes/clip_refine.py BITS GROUP MODEL BLOCKS   # e.g. 3 128 gemma3 3,12
"""
import sys, torch
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
import _models as M
from cat_core.calib import calibration_samples
from cat_core.config import CalibConfig, QuantConfig
from cat_core.awq._clip_search import search_clip, apply_clip, GramAccumulator
from cat_core.quant import quantize_tensor, dequantize
torch.set_num_threads(1)
bits, gs, key = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
model, tok = M.load_model(key)
samples = calibration_samples(CalibConfig(source=str(M.DEFAULT_DATA_DIR / "wikitext2-valid.txt"), n_samples=16, seqlen=512), tok, model)
blocks = [int(b) for b in sys.argv[4].split(",")]
got = {}
hooks = []
for name, m in model.named_modules():
    if isinstance(m, torch.nn.Linear) and ".layers." in name and not (name.endswith("q_proj") or name.endswith("k_proj")) and int(name.split(".layers.")[1].split(".")[0]) in blocks:
        def mk(n):
            def f(mod, args):
                got.setdefault(n, []).append(args[0].detach().reshape(-1, args[0].shape[-1]).float())
            return f
        hooks.append(m.register_forward_pre_hook(mk(name)))
with torch.no_grad():
    for i in range(0, 16, 2):
        model(input_ids=samples[i:i+2])
for h in hooks: h.remove()
cfg = QuantConfig(bits=bits, group_size=gs)
def gram(x, w=None):
    a = GramAccumulator(x.shape[1], gs)
    a.add(x if w is None else x * w.sqrt()[:, None]); return a.mean()
def errs(w, wq, x, big):
    d = (x @ (wq - w).T) ** 2; o = (x @ w.T) ** 2
    return float(d[big].sum() / o[big].sum()), float(d[~big].sum() / o[~big].sum())
for name, xs in got.items():
    x = torch.cat(xs); half = x.shape[0] // 2
    xc, xe = x[:half], x[half:]
    nrm = xe.norm(dim=1); big = nrm > 8 * nrm.median()
    nc = xc.norm(dim=1).pow(2)
    w = dict(model.named_modules())[name].weight.data.float()
    out = {"rtn": dequantize(quantize_tensor(w, cfg))}
    perm = torch.randperm(half, generator=torch.Generator().manual_seed(0))[:512]
    import dataclasses
    for label, c in (("norefine", dataclasses.replace(cfg, clip_refine=False)), ("refine", cfg)):
        lo, hi, _ = search_clip(w, gram(xc), c); wc = w.clone(); apply_clip(wc, lo, hi)
        out[label] = dequantize(quantize_tensor(wc, cfg))
    print(f"{name} massive tokens {int(big.sum())}/{len(big)} max/med {float(nrm.max()/nrm.median()):.0f}")
    for k, v in out.items():
        eb, et = errs(w, v, xe, big)
        print(f"   {k:7s} massive {eb:.3e} typical {et:.3e}")
