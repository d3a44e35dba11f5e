"""How far cat_kernels.Decoder's float32 results stray from the float64 reference of
packages/cat-kernels/tests/test_decoder.py: the largest |got - ref| / (1 + |ref|) over the final
hidden states and the cached keys/values, for 60 seeds x the test's 4 cases (what its bound, 1e-4,
is set against).

    python benchmarks/probes/decoder_rounding.py
"""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "packages" / "cat-kernels" / "tests"))
import test_decoder as T  # noqa: E402

worst = [0.0]


def _record(got, ref, what):
    worst[0] = max(worst[0], float((np.abs(got.astype(np.float64) - ref) / (1 + np.abs(ref))).max()))


T._close = _record
for seed in range(60):
    for case in [(4, 32, False, False), (3, -1, True, False), (4, -1, True, True), (8, 32, False, True)]:
        T.test_steps_match_the_reference(np.random.default_rng(seed), *case)
print(f"worst |got - ref| / (1 + |ref|) over 60 seeds x 4 cases: {worst[0]:.3g}")
