"""cat-quantize with the whole-model load (the in-memory path) where the budget allows it: the
same code as the streamed run, only Streaming.always flipped."""
import sys
import cat_apps._models as M
from cat_apps.quantize import main

_orig = M.Streaming
def _inmem(*a, **k):
    k["always"] = False
    return _orig(*a, **k)
M.Streaming = _inmem
sys.exit(main())
