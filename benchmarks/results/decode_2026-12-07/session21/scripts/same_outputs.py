import sys, torch, numpy as np
sys.path[:0] = ["benchmarks", "benchmarks/probes"]
import cat_kernels; print(cat_kernels.__file__)
import _models as M
from decode_profile import quantize_body
from cat_core.native_decode import _Native
torch.set_num_threads(2)
model, _ = M.load_model("smollm2"); model.eval(); quantize_body(model, 4, 8)
nat = _Native(model); dec = nat.dec
res = []
for int8 in (False, True):
    dec.int8_activations = int8
    torch.manual_seed(0)
    kv = torch.zeros(dec.kv_shape(64)); out = torch.empty(1, 576)
    for pos in range(20):
        dec.step(torch.randn(1, 1, 576), pos, kv, out)
        res.append(out.clone())
    res.append(kv.clone())
torch.save(res, sys.argv[1])
