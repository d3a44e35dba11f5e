"""The kernels' thread pool under the ways it is driven: jobs of every size back to back (the
join and close of each job race with the next one), several Python threads calling at once
(the GIL is released: callers queue for the pool), thread counts that do not divide the items,
and an int8 product beside a float one. Every result must equal the single-thread result bit
for bit: items are claimed dynamically, so any item run twice, skipped, or read before it was
written shows up here."""

from __future__ import annotations

import threading

import cat_kernels as ck
import numpy as np
import pytest
from _cases import make_case
from cat_kernels import _C

# (n, k, group size): 1 to ~200 tiles, with and without split K, odd sizes.
SHAPES = [(16, 64, 32), (40, 4096, 128), (333, 576, 64), (1000, 96, 32), (3100, 200, -1)]


def _weights(rng):
    out = []
    for i, (n, k, g) in enumerate(SHAPES):
        case = make_case(rng, n, k, (4, 3, 8, 4, 2)[i], g, i % 2 == 0, "float16")
        w = ck.PackedWeight(case.packed, case.scales_np(), case.zeros_packed, g, k=k)
        w.int8_activations = i % 2 == 1
        out.append(w)
    return out


def _products(weights, xs):
    return [w.gemm(x) for w in weights for x in xs[w.k]]


@pytest.mark.parametrize("threads", [2, 3, 4])
def test_back_to_back_jobs_and_concurrent_callers(rng, threads):
    weights = _weights(rng)
    xs = {k: [rng.standard_normal((m, k)).astype(np.float32) for m in (1, 3, 70)] for _, k, _ in SHAPES}
    _C._set_num_threads(1)
    want = _products(weights, xs)

    _C._set_num_threads(threads)
    for _ in range(20):  # hundreds of jobs of 1 to ~800 items, back to back
        got = _products(weights, xs)
        for a, b in zip(want, got, strict=True):
            np.testing.assert_array_equal(a, b)

    errors: list[str] = []

    def caller(seed: int) -> None:
        order = np.random.default_rng(seed).permutation(len(want))
        flat = [(w, x) for w in weights for x in xs[w.k]]
        for _ in range(5):
            for i in order:
                w, x = flat[i]
                if not np.array_equal(w.gemm(x), want[i]):
                    errors.append(f"caller {seed}: product {i} differs")

    callers = [threading.Thread(target=caller, args=(s,)) for s in range(4)]
    for t in callers:
        t.start()
    for t in callers:
        t.join()
    assert not errors, errors[:5]
