"""The v2 tiled CUDA kernel's arithmetic, checked without a GPU.

The emulator (tests/emulator/) is compiled with the host C++ compiler against the kernel's own
headers (csrc/cuda/tiled_v2_math.h, decode.h) and emulates the whole grid: every CTA, warp, lane
and pipeline stage (cp.async with deferred completion, ldmatrix, mma.m16n8k16 modelled from the
PTX ISA). Its output is compared, for every element, with a float64 evaluation of the numeric
contract

    y[m, n] = sum_g s[n, g] * sum_{k in g} x[m, k] * (q[n, k] - z[n, g])

on fresh random data with odd shapes. `selftest` checks the pieces one by one (decode of every
code of every bit width, fragment maps, swizzle bijection and bank conflicts, copy coverage,
group flushes, split plan). The mutation tests break one index in a copy of the headers and
require the checks (of this kernel and of the GEMV) to fail. numpy only: no torch needed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import cat_kernels as ck
from _emulator import CSRC, bits16, build, run, scale_storage, value16, write_problem
from test_gemv_arith import gemv_mismatch


class Case:
    """Random codes, zero points, scales and x for one problem, packed by cat_kernels."""

    def __init__(self, rng, m, n, k, bits, group, sym, x_dtype, scale_dtype, x_vec_ok=True, aligned16=True):
        self.m, self.n, self.k, self.bits, self.sym = m, n, k, bits, sym
        self.gs = k if group == -1 else group
        self.ng = k // self.gs
        self.bf16, self.x_vec_ok, self.aligned16 = x_dtype == "bfloat16", x_vec_ok, aligned16
        self.codes = rng.integers(0, 1 << bits, (n, k), dtype=np.uint8)
        self.zeros = None if sym else rng.integers(0, 1 << bits, (n, self.ng), dtype=np.uint8)
        s = rng.uniform(0.25, 2.0, (n, self.ng)) * rng.choice([-1.0, 1.0], (n, self.ng)) / (1 << bits)
        self.set_scales(s, scale_dtype)
        self.set_x(rng.standard_normal((m, k)))
        self.packed = ck.pack(self.codes, bits)
        self.packed_zeros = None if sym else ck.pack_zeros(self.zeros, bits)

    def set_scales(self, s: np.ndarray, dtype: str) -> None:
        self.scale_dtype = dtype
        self.scale_raw, self.scales = scale_storage(s.astype(np.float32), dtype)

    def set_x(self, x: np.ndarray) -> None:
        self.x_bits = bits16(x.astype(np.float32), self.bf16)

    @property
    def x(self) -> np.ndarray:
        return value16(self.x_bits, self.bf16)

    def write(self, path: Path) -> None:
        write_problem(path, bits=self.bits, bf16=self.bf16, x_bits=self.x_bits, packed=self.packed,
                      scale_raw=self.scale_raw, scale_dtype=self.scale_dtype,
                      zeros=self.packed_zeros, group_size=self.gs, k=self.k,
                      x_vec_ok=self.x_vec_ok, aligned16=self.aligned16)

    def reference(self) -> tuple[np.ndarray, np.ndarray]:
        """float64 value of the contract, and the sum of |terms| (for the fp32 tolerance)."""
        x, s = self.x, self.scales
        z = np.full((self.n, self.ng), 1 << (self.bits - 1)) if self.sym else self.zeros.astype(np.int64)
        qz = (self.codes.astype(np.int64) - np.repeat(z, self.gs, axis=1)).astype(np.float64)
        ref = np.zeros((self.m, self.n))
        bound = np.zeros((self.m, self.n))
        for g in range(self.ng):
            sl = slice(g * self.gs, (g + 1) * self.gs)
            ref += (x[:, sl] @ qz[:, sl].T) * s[:, g]
            bound += (np.abs(x[:, sl]) @ np.abs(qz[:, sl]).T) * np.abs(s[:, g])
        return ref, bound


def _run(exe: Path, case: Case, tmp: Path):
    inp, out = tmp / "in.bin", tmp / "out.bin"
    case.write(inp)
    r = run(exe, "tiled", inp, out)
    if r.returncode != 0:
        return None, r.stderr.strip()
    raw = np.fromfile(out, np.uint8)
    splits, per_split, mt = raw[:24].view(np.int64)
    vals = raw[24:].view(np.float32)
    mn = case.m * case.n
    return (int(splits), int(per_split), int(mt), vals[:mn].reshape(case.m, case.n),
            vals[mn:].reshape(case.m, case.n)), ""


def _mismatch(case: Case, y_raw: np.ndarray, y: np.ndarray) -> str:
    """'' when every output is within tolerance, else a description of the worst one."""
    ref, bound = case.reference()
    # fp32 accumulation: a few ulps of the sum of |terms| (K <= ~1.2k here).
    tol_raw = 2e-5 * bound + 1e-30
    half_ulp = 2.0 ** -8 if case.bf16 else 2.0 ** -11
    tol = tol_raw + half_ulp * np.abs(ref) + 2.0 ** -24
    err_raw = np.abs(y_raw.astype(np.float64) - ref)
    err = np.abs(y.astype(np.float64) - ref)
    for name, e, t in (("fp32 result", err_raw, tol_raw), ("rounded result", err, tol)):
        bad = e > t
        if bad.any():
            i = np.unravel_index(np.argmax(e / t), e.shape)
            return (f"{name}: {int(bad.sum())} of {bad.size} outputs off, worst at {i}: "
                    f"got {float((y_raw if name[0] == 'f' else y)[i])}, want {ref[i]}, tol {t[i]}")
    return ""


def test_selftest_pieces(emulator):
    r = run(emulator, "tiled-selftest")
    assert r.returncode == 0 and "selftest ok" in r.stdout, r.stderr


# (m, n, k, group): odd N and K, M across the MT buckets (2/4/8 fragments) and above 128 (several
# M tiles), whole-row groups with odd K (scalar x staging), group 96 (two groups per k-step,
# groups cut by split boundaries), uneven last splits.
SHAPES = [
    (9, 50, 96, 32),
    (33, 100, 320, 64),
    (70, 37, 257, -1),
    (130, 64, 256, 128),
    (300, 20, 128, 128),
    (20, 40, 1024, 128),    # 4 splits
    (17, 30, 1100, -1),     # 4 splits of 5, 5, 5, 3 k-steps, a partial last block
    (40, 70, 1152, 96),     # splits cut groups of 96
]


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("x_dtype", ["float16", "bfloat16"], ids=["f16", "bf16"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_emulated_kernel_matches_contract(emulator, rng, tmp_path, bits, x_dtype, shape):
    m, n, k, group = shape
    sym = bool(rng.integers(0, 2))
    scale_dtype = ["float16", "bfloat16", "float32"][int(rng.integers(0, 3))]
    case = Case(rng, m, n, k, bits, group, sym, x_dtype, scale_dtype)
    res, err = _run(emulator, case, tmp_path)
    assert res is not None, err
    splits, per_split, mt, y_raw, y = res
    assert 16 * mt >= min(m, 128)
    assert not _mismatch(case, y_raw, y), _mismatch(case, y_raw, y)


@pytest.mark.parametrize("x_vec_ok,aligned16", [(False, True), (True, False), (False, False)])
def test_emulated_fallback_copies(emulator, rng, tmp_path, x_vec_ok, aligned16):
    """Element-wise x staging (unaligned x) and 4-byte packed copies (unaligned packed)."""
    case = Case(rng, 45, 77, 192, 3, 64, False, "float16", "float16", x_vec_ok, aligned16)
    res, err = _run(emulator, case, tmp_path)
    assert res is not None, err
    assert not _mismatch(case, res[3], res[4]), _mismatch(case, res[3], res[4])


def test_large_weights_stay_finite(emulator, rng, tmp_path):
    """fp16 x with weights far beyond 65504 (s = 2000, |q - z| up to 255): the contract never
    forms W in 16 bits, so the result is finite and exact to fp32 accuracy (until the final
    rounding, which overflows only when y itself does)."""
    case = Case(rng, 12, 33, 64, 8, 32, False, "float16", "float32")
    case.set_scales(np.full_like(case.scales, 2000.0), "float32")
    case.set_x(case.x.astype(np.float32) * np.float32(1e-4))
    res, err = _run(emulator, case, tmp_path)
    assert res is not None, err
    assert np.isfinite(res[3]).all() and np.isfinite(res[4]).all()
    assert not _mismatch(case, res[3], res[4]), _mismatch(case, res[3], res[4])


# One broken index each, in a copy of the kernels' headers (never the source tree): the checks
# must notice. name -> (pattern, replacement); the pattern occurs once in all the headers.
MUTATIONS = {
    "decode_4bit_high_nibble": ("(uint32_t(4 + t) << 8)", "(uint32_t(4 + (t ^ 1)) << 8)"),
    "stage_ring": ("return static_cast<int>(li % stages);", "return static_cast<int>(li % (stages - 1));"),
    "gemv_decode_4bit_bf16_shift": ("{0, 1, 8, 9}", "{0, 1, 8, 8}"),
    "gemv_x_pair": ("((lo & 1) ? 0x32u : 0x10u)", "((lo & 1) ? 0x10u : 0x32u)"),
    "group_flush_at_split_end": ("return b + 1 == b_end || c.last_in_group();", "return c.last_in_group();"),
    "c_fragment_column": ("2 * (lane & 3) + (i & 1)}", "2 * (lane & 3) + (i >> 1)}"),
    "packed_tile_bound": ("p.tile_ok = t < n_tiles;", "p.tile_ok = t <= n_tiles;"),
    "swizzle_bank_spread": ("^ row) & 7) << 3)", "^ (row >> 1)) & 7) << 3)"),
    "gemv_3bit_lane_word": ("const int w0 = (24 * c) >> 5;", "const int w0 = (24 * c + 8) >> 5;"),
    "gemv_mma_operand_row": ("a[1] = hB[2 * s];", "a[1] = hA[2 * s];"),
}
_FAST_MUTATIONS = {
    "decode_4bit_high_nibble", "stage_ring", "gemv_decode_4bit_bf16_shift", "gemv_x_pair",
}


def _mutated_headers(tmp: Path, pattern: str, repl: str) -> Path:
    headers = sorted((CSRC / "cuda").glob("*.h"))
    hits = {h.name: h.read_text().count(pattern) for h in headers}
    assert sum(hits.values()) == 1, f"pattern {pattern!r} not exactly once in the headers: {hits}"
    out = tmp / "csrc" / "cuda"
    out.mkdir(parents=True)
    for h in headers:
        (out / h.name).write_text(h.read_text().replace(pattern, repl))
    return out.parent


def _what_catches(exe: Path, rng, tmp: Path) -> list[str]:
    """The checks that fail on this build: the tiled selftest, two tiled and two GEMV problems."""
    r = run(exe, "tiled-selftest")
    caught = [f"selftest: {r.stderr.strip()}"] if r.returncode != 0 else []
    for m, n, k, group in [(20, 40, 1024, 128), (70, 37, 257, -1)]:
        case = Case(rng, m, n, k, 4, group, False, "float16", "float16")
        res, err = _run(exe, case, tmp)
        if res is None:
            caught.append(f"tiled {(m, n, k)}: {err}")
        elif _mismatch(case, res[3], res[4]):
            caught.append(f"tiled {(m, n, k)}: {_mismatch(case, res[3], res[4])}")
    for bits, bf16, n, k, m, group in [(4, True, 37, 1024, 3, 128), (3, False, 20, 4160, 5, 64)]:
        why = gemv_mismatch(exe, tmp, rng, bits, bf16, n, k, m, group, False)
        if why:
            caught.append(f"gemv {(bits, bf16, n, k, m)}: {why}")
    return caught


@pytest.mark.parametrize(
    "name",
    [n if n in _FAST_MUTATIONS else pytest.param(n, marks=pytest.mark.slow) for n in MUTATIONS],
)
def test_mutation_is_caught(rng, tmp_path, name):
    exe = build(tmp_path, _mutated_headers(tmp_path, *MUTATIONS[name]))
    caught = _what_catches(exe, rng, tmp_path)
    assert caught, f"mutation {name} went unnoticed"
    print(f"mutation {name} caught by: {caught}")


def test_unmutated_headers_pass_every_check(emulator, rng, tmp_path):
    """The mutation tests mean something only if the same checks pass on the real headers."""
    assert _what_catches(emulator, rng, tmp_path) == []
