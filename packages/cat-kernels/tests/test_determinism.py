"""Bit-identical results across calls, thread counts and (via subprocesses) the environment
switches; every CPU kernel path available on this machine against the reference."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import cat_kernels as ck
from cat_kernels import _C
from _cases import make_case
from test_ops import check_gemm

ISAS = _C._available_isas()


def _run(case, xs, g):
    return [ck.gemm(x, case.packed, case.scales_np(), case.zeros_packed, g) for x in xs]


@pytest.mark.parametrize("n, k, g", [(40, 4096, 128), (16, 2048, -1), (2000, 256, 32)])
def test_thread_count_and_repeat(rng, n, k, g):
    case = make_case(rng, n, k, 3, g, False, "float16")
    xs = [rng.standard_normal((m, k)).astype(np.float32) for m in (1, 7, 70)]
    base = _run(case, xs, g)
    for threads in (1, 2, 3, 5):
        _C._set_num_threads(threads)
        assert _C._num_threads() == threads
        for _ in range(2):
            for a, b in zip(base, _run(case, xs, g)):
                np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_each_isa(rng, isa, bits):
    _C._set_isa(isa)
    assert ck.build_info()["cpu_isa"] == isa
    for g, k, sym in ((32, 256, True), (-1, 1000, False), (64, 4096, False)):
        case = make_case(rng, 35, k, bits, g, sym, "float16")
        np.testing.assert_array_equal(
            ck.dequantize(case.packed, case.scales_np(), case.zeros_packed, g, k=k, dtype="float32"),
            case.w,
        )
        for m in (1, 2, 3, 5, 8, 13, 17):
            x = rng.standard_normal((m, k)).astype(np.float32)
            check_gemm(case, x, ck.gemm(x, case.packed, case.scales_np(), case.zeros_packed, g))


def test_set_isa_rejects_unknown():
    with pytest.raises(ValueError, match="not a kernel path"):
        _C._set_isa("sse9")


_CHILD = r"""
import json, numpy as np, cat_kernels as ck
rng = np.random.default_rng(1234)
codes = rng.integers(0, 8, (40, 1024)).astype(np.uint8)
p = ck.pack(codes, 3)
s = rng.random((40, 8)).astype(np.float32)
x = rng.standard_normal((5, 1024)).astype(np.float32)
y = ck.gemm(x, p, s, None, 128)
print(json.dumps({"info": ck.build_info(), "y": y.view(np.uint32).tolist()}))
"""


def _child(env_extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAT_KERNELS_")}
    env.update(env_extra)
    r = subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True,
                       timeout=120)
    return r


@pytest.mark.subprocess
def test_env_threads_and_isa():
    results = {}
    for threads in ("1", "3"):
        r = _child({"CAT_KERNELS_NUM_THREADS": threads})
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        assert out["info"]["num_threads"] == int(threads)
        results[threads] = out["y"]
    assert results["1"] == results["3"]
    for isa in ISAS:
        r = _child({"CAT_KERNELS_ISA": isa})
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["info"]["cpu_isa"] == isa


@pytest.mark.subprocess
def test_env_isa_errors():
    r = _child({"CAT_KERNELS_ISA": "bogus"})
    assert r.returncode != 0 and "CAT_KERNELS_ISA='bogus' is not a kernel path" in r.stderr
    if "avx512" not in ISAS:
        r = _child({"CAT_KERNELS_ISA": "avx512"})
        assert r.returncode != 0 and "not supported by this CPU" in r.stderr
