"""AWQ vs RTN with only blocks [LO, HI) quantized: a quick probe of search settings (minutes, not
the hour of a full quality row). Perplexity on the first 2 windows of 2048 WikiText-2 test tokens;
calibration 32 x 512 of wikitext2-valid.

    python benchmarks/awq_partial_blocks.py BITS LO HI ["{QuantConfig overrides as a Python dict}"]
"""
import copy
import dataclasses
import sys
import time

import torch
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
import _models as M
from cat_core.awq import quantize, rtn_quantize
from cat_core.calib import calibration_samples
from cat_core.config import CalibConfig, QuantConfig
from cat_core.graph import discover
from cat_core.quant import quantize_tensor, dequantize
from cat_core import eval as ev
torch.set_num_threads(2)
bits = int(sys.argv[1]); lo, hi = int(sys.argv[2]), int(sys.argv[3])
extra = __import__("ast").literal_eval(sys.argv[4]) if len(sys.argv) > 4 else {}
model, tok = M.load_model("smollm2")
samples = calibration_samples(CalibConfig(source=str(M.DEFAULT_DATA_DIR / "wikitext2-valid.txt"), n_samples=32, seqlen=512), tok, model)
text = open(M.DEFAULT_DATA_DIR / "wikitext2-raw-test.txt").read().split("\n")
ids = tok("\n\n".join([l for l in text if l.strip()]), return_tensors="pt").input_ids[0]
W = 2
def ppl(m):
    nll, n = 0.0, 0
    with torch.no_grad():
        for w in range(W):
            x = ids[w*2048:(w+1)*2048][None]
            lg = m(input_ids=x).logits[0, :-1].float()
            nll += float(torch.nn.functional.cross_entropy(lg, x[0, 1:], reduction="sum")); n += x.shape[1]-1
    return float(torch.exp(torch.tensor(nll / n)))
print("fp", ppl(model), flush=True)
cfg = QuantConfig(bits=bits, group_size=64, search_dtype="bfloat16", **extra)
r = copy.deepcopy(model)
for name, mod in r.named_modules():
    if isinstance(mod, torch.nn.Linear) and ".layers." in name and lo <= int(name.split(".layers.")[1].split(".")[0]) < hi:
        qt = quantize_tensor(mod.weight.data, cfg, name=name); mod.weight.data.copy_(dequantize(qt, mod.weight.dtype))
print("rtn", ppl(r), flush=True)
a = copy.deepcopy(model)
g = discover(a, sample_input_ids=samples[:1, :64])
g = dataclasses.replace(g, blocks=g.blocks[lo:hi])
t = time.time()
res = quantize(a, tok, cfg, calib=samples, graph=g, progress=False)
print("awq", ppl(a), "%.0fs" % (time.time()-t), len(res.tensors), flush=True)
