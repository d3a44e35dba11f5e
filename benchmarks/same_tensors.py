"""Compare two checkpoint folders tensor by tensor, bit for bit: python benchmarks/same_tensors.py A B."""
import sys, json, glob, os
from safetensors import safe_open
import torch
def tensors(d):
    out = {}
    for f in sorted(glob.glob(os.path.join(d, "*.safetensors"))):
        with safe_open(f, "pt") as h:
            for k in h.keys():
                out[k] = (f, k)
    return out
a, b = tensors(sys.argv[1]), tensors(sys.argv[2])
print("tensors", len(a), len(b), "only in a:", sorted(set(a) - set(b))[:5], "only in b:", sorted(set(b) - set(a))[:5])
diff = 0
for k in sorted(set(a) & set(b)):
    with safe_open(a[k][0], "pt") as h: x = h.get_tensor(k)
    with safe_open(b[k][0], "pt") as h: y = h.get_tensor(k)
    if x.dtype != y.dtype or x.shape != y.shape or not torch.equal(x.view(torch.uint8) if x.dtype.is_floating_point else x, y.view(torch.uint8) if y.dtype.is_floating_point else y):
        diff += 1
        if diff <= 10: print("DIFFERS", k, x.dtype, y.dtype, tuple(x.shape), tuple(y.shape))
print("identical" if diff == 0 and set(a) == set(b) else f"{diff} differ", "of", len(set(a) & set(b)))
