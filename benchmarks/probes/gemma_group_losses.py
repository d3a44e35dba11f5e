"""AWQ scale-search report (alpha, RTN loss, best loss per group) for the first N blocks of Gemma-3 at
3-bit g128, calibration 16 x 512 wikitext2-valid, bf16 search.

    python benchmarks/probes/gemma_group_losses.py N
"""
import sys, torch, dataclasses
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
import _models as M
from cat_core.awq import quantize
from cat_core.calib import calibration_samples
from cat_core.config import CalibConfig, QuantConfig
from cat_core.graph import discover
torch.set_num_threads(1)
model, tok = M.load_model("gemma3")
samples = calibration_samples(CalibConfig(source=str(M.DEFAULT_DATA_DIR / "wikitext2-valid.txt"), n_samples=16, seqlen=512), tok, model)
g = discover(model, sample_input_ids=samples[:1, :64])
g = dataclasses.replace(g, blocks=g.blocks[:int(sys.argv[1])])
res = quantize(model, tok, QuantConfig(bits=3, group_size=128, search_dtype="bfloat16"), calib=samples, graph=g, progress=False)
for r in res.report:
    print(r.block, r.group[:60], r.alpha, "%.4g %.4g %.3f" % (r.rtn_loss, r.best_loss, r.best_loss / r.rtn_loss))
