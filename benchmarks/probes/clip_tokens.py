"""Per-linear held-out output error of RTN, the clip search and a weighted least-squares scale/zero
refinement, with the clip searched on NCLIP sampled tokens (first half of 8 x 512 wikitext2-valid
tokens) and scored on the other half (which holds first-of-sequence tokens).

    python benchmarks/probes/clip_tokens.py BITS GROUP MODEL NCLIP    # e.g. 4 64 smollm2 512
"""
import sys, torch, time
from _inputs import linear_inputs
from cat_core.config import QuantConfig
from cat_core.awq._clip_search import GramAccumulator, search_clip, apply_clip
from cat_core.quant import quantize_tensor, dequantize
torch.set_num_threads(2)
bits = int(sys.argv[1]); gs = int(sys.argv[2]); key = sys.argv[3]
blocks = [1, 8, 16] if key == "gemma3" else [2, 10, 20, 28]
model, got = linear_inputs(key, 8, blocks)
cfg = QuantConfig(bits=bits, group_size=gs)

def err(w, wq, x):
    return float(((x @ (wq - w).T) ** 2).mean() / (x @ w.T).pow(2).mean())

def ls_refine(w, x, lo, hi, cfg, iters=4):
    # start from the clip result; WLS on (a, b) per row-group given codes, integer zero
    n, k = w.shape; g = cfg.group_size; ng = k // g; qmax = cfg.qmax
    xg = x.reshape(-1, ng, g).transpose(0, 1)
    H = torch.bmm(xg.transpose(1, 2), xg) / xg.shape[1]  # [ng,g,g]
    wg = w.reshape(n, ng, g)
    wc = torch.maximum(torch.minimum(wg, hi), lo)
    mn, mx = wc.amin(-1, keepdim=True), wc.amax(-1, keepdim=True)
    s = ((mx - mn) / qmax).clamp_min(1e-5).half().float()
    z = torch.round(-mn / s).clamp(0, qmax)
    def codes(s, z): return (torch.round(wg / s) + z).clamp(0, qmax)
    def e(s, z, q):
        d = ((q - z) * s - wg).transpose(0, 1)  # [ng, n, g]
        return (torch.bmm(d, H) * d).sum(-1).transpose(0, 1)
    q = codes(s, z); best = e(s, z, q); bs, bz = s.clone(), z.clone()
    for it in range(iters):
        # minimize (w - a q - b)^T H (w - a q - b) over a, b
        qt = q.transpose(0, 1); wt = wg.transpose(0, 1); one = torch.ones_like(qt)
        Hq = torch.bmm(qt, H); H1 = torch.bmm(one, H)
        A11 = (Hq * qt).sum(-1); A12 = (Hq * one).sum(-1); A22 = (H1 * one).sum(-1)
        b1 = (Hq * wt).sum(-1); b2 = (H1 * wt).sum(-1)
        det = A11 * A22 - A12 * A12
        a = (b1 * A22 - b2 * A12) / det; b = (A11 * b2 - A12 * b1) / det
        a = a.transpose(0, 1).unsqueeze(-1); b = b.transpose(0, 1).unsqueeze(-1)
        ok = torch.isfinite(a) & (a > 1e-5)
        s_new = torch.where(ok, a, s).half().float()
        z_new = torch.where(ok, torch.round(-b / s_new).clamp(0, qmax), z)
        q = codes(s_new, z_new)
        cur = e(s_new, z_new, q)
        better = cur < best
        best = torch.where(better, cur, best)
        bs = torch.where(better.unsqueeze(-1), s_new, bs); bz = torch.where(better.unsqueeze(-1), z_new, bz)
        s, z = s_new, z_new
    q = codes(bs, bz)
    return ((q - bz) * bs).reshape(n, k)

NCLIP = int(sys.argv[4]) if len(sys.argv) > 4 else 512
tot = {"rtn": 0, "clip": 0, "ls": 0}
for name, x in got.items():
    half = x.shape[0] // 2
    perm = torch.randperm(half, generator=torch.Generator().manual_seed(0))
    xc, xe = x[:half][perm[:NCLIP]], x[half:]
    big = x[half:].norm(dim=1); print("  max/median token norm (eval)", float(big.max()/big.median()), "first-token rows", [int(i) for i in torch.topk(big, 3).indices])
    w = dict(model.named_modules())[name].weight.data.float()
    r = dequantize(quantize_tensor(w, cfg))
    acc = GramAccumulator(xc.shape[1], cfg.group_size)
    acc.add(xc)
    lo, hi, _ = search_clip(w, acc.mean(), cfg)
    wc = w.clone(); apply_clip(wc, lo, hi); c = dequantize(quantize_tensor(wc, cfg))
    l = ls_refine(w, xc, lo, hi, cfg)
    er, ec, el = err(w, r, xe), err(w, c, xe), err(w, l, xe)
    tot["rtn"] += er; tot["clip"] += ec; tot["ls"] += el
    print(f"{name:40s} rtn {er:.3e} clip {ec:.3e} ls {el:.3e}  ls/clip {el/ec:.3f}")
print(tot)
