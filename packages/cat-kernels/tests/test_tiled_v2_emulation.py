"""The v2 tiled CUDA kernel's arithmetic, checked without a GPU.

`tiled_v2_emu.cpp` is compiled with the host C++ compiler against the kernel's own index header
(csrc/cuda/tiled_v2_math.h) and emulates the whole grid: every CTA, warp, lane and pipeline stage
(cp.async with deferred completion, ldmatrix, mma.m16n8k16 modelled from the PTX ISA). Its
output is compared, for every element, with a float64 evaluation of the numeric contract

    y[m, n] = sum_g s[n, g] * sum_{k in g} x[m, k] * (q[n, k] - z[n, g])

on fresh random data with odd shapes. `selftest` checks the pieces one by one (decode of every
code of every bit width, fragment maps, swizzle bijection and bank conflicts, copy coverage,
group flushes, split plan). The mutation tests break one index in a copy of the header and
require the checks to fail.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

import cat_kernels as ck

HERE = Path(__file__).resolve().parent
CSRC = HERE.parent / "csrc"
EMU_SRC = HERE / "tiled_v2_emu.cpp"
HEADER = CSRC / "cuda" / "tiled_v2_math.h"

_DTYPE_CODE = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}


def _cxx() -> str:
    for c in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if c and shutil.which(c):
            return shutil.which(c)
    pytest.fail("no host C++ compiler (c++, g++ or clang++) to build the v2 kernel emulation")


def _build(out: Path, csrc: Path) -> Path:
    exe = out / "tiled_v2_emu"
    r = subprocess.run(
        [_cxx(), "-std=c++17", "-O1", f"-I{csrc}", str(EMU_SRC), "-o", str(exe)],
        capture_output=True, text=True,
    )
    assert r.returncode == 0, f"building the emulation failed:\n{r.stderr[-4000:]}"
    return exe


@pytest.fixture(scope="module")
def emu(tmp_path_factory) -> Path:
    return _build(tmp_path_factory.mktemp("tiled_v2"), CSRC)


def _raw_u32(t: torch.Tensor) -> np.ndarray:
    if t.dtype == torch.float32:
        return t.contiguous().view(torch.int32).numpy().view(np.uint32).copy()
    return t.contiguous().view(torch.int16).numpy().view(np.uint16).astype(np.uint32)


class Case:
    """Random codes, zero points, scales and x for one problem, packed by cat_kernels."""

    def __init__(self, rng, m, n, k, bits, group, sym, x_dtype, scale_dtype, x_vec_ok=True, aligned16=True):
        self.m, self.n, self.k, self.bits, self.sym = m, n, k, bits, sym
        self.gs = k if group == -1 else group
        self.ng = k // self.gs
        self.x_dtype, self.x_vec_ok, self.aligned16 = x_dtype, x_vec_ok, aligned16
        self.codes = rng.integers(0, 1 << bits, (n, k), dtype=np.uint8)
        self.zeros = None if sym else rng.integers(0, 1 << bits, (n, self.ng), dtype=np.uint8)
        s = rng.uniform(0.25, 2.0, (n, self.ng)) * rng.choice([-1.0, 1.0], (n, self.ng)) / (1 << bits)
        self.scales = torch.from_numpy(s.astype(np.float32)).to(scale_dtype)
        self.x = torch.from_numpy(rng.standard_normal((m, k)).astype(np.float32)).to(x_dtype)
        self.packed = ck.pack(torch.from_numpy(self.codes), bits)
        self.packed_zeros = None if sym else ck.pack_zeros(torch.from_numpy(self.zeros), bits)

    def write(self, path: Path) -> None:
        h = np.zeros(16, np.int64)
        h[:11] = [self.bits, self.x_dtype == torch.bfloat16, self.m, self.n, self.k, self.gs, self.ng,
                  not self.sym, _DTYPE_CODE[self.scales.dtype], self.x_vec_ok, self.aligned16]
        with open(path, "wb") as f:
            h.tofile(f)
            self.x.view(torch.int16).numpy().view(np.uint16).tofile(f)
            self.packed.numpy().astype(np.int32).tofile(f)
            _raw_u32(self.scales).tofile(f)
            if not self.sym:
                self.packed_zeros.numpy().astype(np.int32).tofile(f)

    def reference(self) -> tuple[np.ndarray, np.ndarray]:
        """float64 value of the contract, and the sum of |terms| (for the fp32 tolerance)."""
        x = self.x.float().numpy().astype(np.float64)
        s = self.scales.float().numpy().astype(np.float64)
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
    r = subprocess.run([str(exe), str(inp), str(out)], capture_output=True, text=True)
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
    half_ulp = 2.0 ** -8 if case.x_dtype == torch.bfloat16 else 2.0 ** -11
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


def test_selftest_pieces(emu):
    r = subprocess.run([str(emu), "selftest"], capture_output=True, text=True)
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
@pytest.mark.parametrize("x_dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_emulated_kernel_matches_contract(emu, rng, tmp_path, bits, x_dtype, shape):
    m, n, k, group = shape
    sym = bool(rng.integers(0, 2))
    scale_dtype = [torch.float16, torch.bfloat16, torch.float32][int(rng.integers(0, 3))]
    case = Case(rng, m, n, k, bits, group, sym, x_dtype, scale_dtype)
    res, err = _run(emu, case, tmp_path)
    assert res is not None, err
    splits, per_split, mt, y_raw, y = res
    assert 16 * mt >= min(m, 128)
    assert not _mismatch(case, y_raw, y), _mismatch(case, y_raw, y)


@pytest.mark.parametrize("x_vec_ok,aligned16", [(False, True), (True, False), (False, False)])
def test_emulated_fallback_copies(emu, rng, tmp_path, x_vec_ok, aligned16):
    """Element-wise x staging (unaligned x) and 4-byte packed copies (unaligned packed)."""
    case = Case(rng, 45, 77, 192, 3, 64, False, torch.float16, torch.float16, x_vec_ok, aligned16)
    res, err = _run(emu, case, tmp_path)
    assert res is not None, err
    assert not _mismatch(case, res[3], res[4]), _mismatch(case, res[3], res[4])


def test_large_weights_stay_finite(emu, rng, tmp_path):
    """fp16 x with weights far beyond 65504 (s = 2000, |q - z| up to 255): the contract never
    forms W in 16 bits, so the result is finite and exact to fp32 accuracy (until the final
    rounding, which overflows only when y itself does)."""
    case = Case(rng, 12, 33, 64, 8, 32, False, torch.float16, torch.float32)
    case.scales = torch.full_like(case.scales, 2000.0)
    case.x = (case.x.float() * 1e-4).to(torch.float16)
    res, err = _run(emu, case, tmp_path)
    assert res is not None, err
    assert np.isfinite(res[3]).all() and np.isfinite(res[4]).all()
    assert not _mismatch(case, res[3], res[4]), _mismatch(case, res[3], res[4])


# One broken index each; the checks must notice. (pattern, replacement) apply to a copy of the
# header, never to the source tree.
MUTATIONS = {
    "decode_4bit_high_nibble": ("(uint32_t(4 + t) << 8)", "(uint32_t(4 + (t ^ 1)) << 8)"),
    "stage_ring": ("return static_cast<int>(li % stages);", "return static_cast<int>(li % (stages - 1));"),
    "group_flush_at_split_end": ("return b + 1 == b_end || c.last_in_group();", "return c.last_in_group();"),
    "c_fragment_column": ("2 * (lane & 3) + (i & 1)}", "2 * (lane & 3) + (i >> 1)}"),
    "packed_tile_bound": ("p.tile_ok = t < n_tiles;", "p.tile_ok = t <= n_tiles;"),
    "swizzle_bank_spread": ("^ row) & 7) << 3)", "^ (row >> 1)) & 7) << 3)"),
}
_FAST_MUTATIONS = {"decode_4bit_high_nibble", "stage_ring"}


@pytest.mark.parametrize(
    "name",
    [n if n in _FAST_MUTATIONS else pytest.param(n, marks=pytest.mark.slow) for n in MUTATIONS],
)
def test_mutation_is_caught(rng, tmp_path, name):
    pattern, repl = MUTATIONS[name]
    text = HEADER.read_text()
    assert text.count(pattern) == 1, f"mutation {name}: pattern not found once in {HEADER.name}"
    (tmp_path / "csrc" / "cuda").mkdir(parents=True)
    (tmp_path / "csrc" / "cuda" / HEADER.name).write_text(text.replace(pattern, repl))
    exe = _build(tmp_path, tmp_path / "csrc")
    r = subprocess.run([str(exe), "selftest"], capture_output=True, text=True)
    caught = [f"selftest: {r.stderr.strip()}"] if r.returncode != 0 else []
    for m, n, k, group in [(20, 40, 1024, 128), (70, 37, 257, -1)]:
        case = Case(rng, m, n, k, 4, group, False, torch.float16, torch.float16)
        res, err = _run(exe, case, tmp_path)
        if res is None:
            caught.append(f"emulation {(m, n, k)}: {err}")
        elif _mismatch(case, res[3], res[4]):
            caught.append(f"emulation {(m, n, k)}: {_mismatch(case, res[3], res[4])}")
    assert caught, f"mutation {name} went unnoticed"
    print(f"mutation {name} caught by: {caught}")
