import sys, numpy as np, cat_kernels as ck
from cat_kernels import _C
sys.path.insert(0, "/work/main/packages/cat-kernels/tests")
from _cases import make_case
rng = np.random.default_rng(7); out = []
for bits in (2, 3, 4, 8):
    for sym in (True, False):
        case = make_case(rng, 50, 576, bits, 64, sym, "float16")
        for m in (1, 5, 40):
            x = rng.standard_normal((m, 576)).astype(np.float32)
            for isa in _C._available_isas():
                _C._set_isa(isa)
                for i8 in (False, True):
                    out.append(ck.gemm(x, case.packed, case.scales_np(), case.zeros_packed, 64, int8_activations=i8))
np.save(sys.argv[1], np.concatenate([o.ravel() for o in out]))
