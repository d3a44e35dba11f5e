"""The CUDA GEMV's arithmetic, checked on the CPU: no GPU needed.

csrc/cuda/gemv_arith.h and decode.h hold everything the v2 GEMV kernel decides about its data
(split plan, each warp's chunk of K, the words each lane loads, the bit decode of every width,
the pairing of codes with x, the mma operand registers, the output mapping, groups, scales and
zero points) as __host__ __device__ code. The emulator (tests/emulator/) compiles those headers
with the host C++ compiler and runs the kernel's data flow lane by lane, modelling only the
hardware (16-bit float values, the exactness of the fma2 decode, and mma.m16n8k16 per PTX's
fragment layout).
Its result is compared with a float64 numpy reference written from docs/format.md, with a
tolerance far below one code's effect, so a wrong shift, mask, pairing, lane or plan fails.
The legacy GEMV's plan (and its 48 KB shared-memory cap) lives in the same header.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import cat_kernels as ck
from _emulator import bits16, run, value16, write_problem


class EmulatorError(AssertionError):
    pass


def _emulate(exe: Path, tmp: Path, bits, bf16, n, k, m, g, packed, scales32, zeros, xb) -> np.ndarray:
    inp, out = tmp / "in.bin", tmp / "out.bin"
    s32 = np.ascontiguousarray(scales32, dtype=np.float32)
    write_problem(inp, bits=bits, bf16=bf16, x_bits=xb, packed=packed,
                  scale_raw=s32.view(np.uint32), scale_dtype="float32", zeros=zeros, group_size=g, k=k)
    r = run(exe, "gemv", inp, out)
    if r.returncode != 0:
        raise EmulatorError(f"emulator failed ({r.returncode}): {r.stderr.strip()}")
    return np.fromfile(out, dtype=np.float64).reshape(m, n)


def gemv_mismatch(exe, tmp, rng, bits, bf16, n, k, m, group_size, sym) -> str:
    """'' when the emulated GEMV of a fresh random problem matches the reference, else why not."""
    try:
        _case(exe, tmp, rng, bits, bf16, n, k, m, group_size, sym)
    except AssertionError as e:
        return str(e)
    return ""


def _case(exe, tmp, rng, bits, bf16, n, k, m, group_size, sym, scale_dtype="float16"):
    g = k if group_size == -1 else group_size
    ng = k // g
    codes = rng.integers(0, 2**bits, size=(n, k), dtype=np.uint8)
    s = rng.uniform(0.5, 2.0, size=(n, ng)) * rng.choice([-1.0, 1.0], size=(n, ng)) * 2.0**-bits
    s32 = s.astype(np.float32)
    if scale_dtype == "float16":
        s32 = s32.astype(np.float16).astype(np.float32)
    z = None if sym else rng.integers(0, 2**bits, size=(n, ng), dtype=np.uint8)
    packed = np.asarray(ck.pack(codes, bits))
    zeros = None if sym else np.asarray(ck.pack_zeros(z, bits))
    x32 = rng.standard_normal((m, k)).astype(np.float32)
    xb = bits16(x32, bf16)
    y = _emulate(exe, tmp, bits, bf16, n, k, m, g, packed, s32, zeros, xb)
    # float64 reference from format.md: W = (q - z) * s, y = x @ W.T
    zz = np.full((n, ng), 2 ** (bits - 1)) if sym else z.astype(np.int64)
    w = (codes.astype(np.int64) - np.repeat(zz, g, axis=1)).astype(np.float64) * np.repeat(s32.astype(np.float64), g, axis=1)
    x = value16(xb, bf16)
    ref = x @ w.T
    mag = np.abs(x) @ np.abs(w).T
    # The emulation sums in double: allow 1e-12 of the magnitude. One wrong code moves an
    # output by |x_k| |s| >= ~1e-3 of the magnitude here, nine orders above.
    tol = 1e-12 * mag + 1e-300
    err = np.abs(y - ref)
    bad = ~(err <= tol)
    if bad.any():
        i = tuple(np.argwhere(bad)[0])
        raise AssertionError(
            f"bits={bits} bf16={bf16} n={n} k={k} m={m} g={group_size} sym={sym}: {int(bad.sum())} of "
            f"{bad.size} outputs wrong; first {i}: got {y[i]!r}, reference {ref[i]!r}"
        )
    return x, packed, s32, zeros, y


BITS = [2, 3, 4, 8]
GROUPS = [32, 64, 128, -1]


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("bf16", [False, True], ids=["f16", "bf16"])
@pytest.mark.parametrize("group_size", GROUPS)
def test_emulated_gemv_matches_reference(emulator, tmp_path, rng, bits, bf16, group_size):
    # odd N (a padded tile), an odd number of blocks where the group allows it, M over the whole
    # GEMV range (the v2 kernel takes K % 32 == 0; other K go to the legacy GEMV)
    k = 1056 if group_size == -1 else 8 * group_size + (group_size if group_size < 128 else 0)
    for m, n, sym in [(1, 37, False), (3, 50, True), (8, 19, False)]:
        _case(emulator, tmp_path, rng, bits, bf16, n, k, m, group_size, sym)


@pytest.mark.parametrize("bits", BITS)
def test_emulated_gemv_split_k_uneven(emulator, tmp_path, rng, bits):
    """Few tiles and a long K: several CTAs per tile (split-K) with uneven chunks, a whole-row
    group over an odd number of blocks, and an odd group count."""
    for n, k, g, m in [(20, 4160, 64, 5), (16, 2976, -1, 2), (33, 5088, 96, 8)]:
        p = _plan(emulator, n, k, g)
        assert p["splits"] > 1, f"case {n}x{k} meant to split K, plan {p}"
        _case(emulator, tmp_path, rng, bits, bits % 2 == 1, n, k, m, g, sym=bits == 2)


def test_emulated_gemv_same_row_same_result_for_any_m(emulator, tmp_path, rng):
    """The plan ignores M and rows of x never mix: row 0's result is bit-identical at M = 1..8."""
    n, k, bits, g = 45, 1024, 4, 128
    codes = rng.integers(0, 16, size=(n, k), dtype=np.uint8)
    packed = np.asarray(ck.pack(codes, bits))
    s32 = rng.uniform(0.01, 0.02, size=(n, k // g)).astype(np.float32)
    x = bits16(rng.standard_normal((8, k)).astype(np.float32), False)
    ys = [_emulate(emulator, tmp_path, bits, False, n, k, m, g, packed, s32, None, x[:m])[0] for m in range(1, 9)]
    for m, y in enumerate(ys[1:], start=2):
        assert np.array_equal(y, ys[0]), f"row 0 differs between M=1 and M={m}"


def test_emulated_gemv_matches_cpu_gemm(emulator, tmp_path, rng):
    """The CPU kernel computes the same contract value (fp32 accumulation vs exact)."""
    n, k, m, bits, g = 70, 640, 4, 3, 64
    x, packed, s32, zeros, y = _case(emulator, tmp_path, rng, bits, False, n, k, m, g, False, "float32")
    xh = x.astype(np.float16)
    y_cpu = np.asarray(ck.gemm(xh.astype(np.float32), packed, s32, zeros, g)).astype(np.float64)
    mag = np.abs(x) @ np.ones((k, n)) * (2**bits) * np.abs(s32).max()
    assert np.all(np.abs(y_cpu - y) <= 2.0**-16 * mag)


def _plan(exe: Path, n: int, k: int, g: int) -> dict:
    r = run(exe, "gemv-plan", n, k, g if g != -1 else k)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.split("\n")
    unit, warps, splits, units, chunks = map(int, lines[0].split())
    ranges = [tuple(map(int, ln.split())) for ln in lines[1 : 1 + chunks]]
    return dict(unit=unit, warps=warps, splits=splits, units=units, chunks=chunks, ranges=ranges)


@pytest.mark.parametrize(
    "n,k,g",
    [(4096, 4096, 128), (11008, 4096, 128), (4096, 11008, 128), (28672, 8192, 128), (1024, 4096, 32),
     (40, 4160, 64), (16, 2976, 2976), (5, 64, 64), (4096, 14336, 64), (300, 96, 96), (64, 33024, 32),
     (16, 4000, 4000)],
)
def test_v2_plan_is_balanced_and_covers_k(emulator, n, k, g):
    p = _plan(emulator, n, k, g)
    nb = -(-k // 32)
    tiles = -(-n // 16)
    bpg = nb if g >= k else g // 32
    assert p["unit"] in (1, 2, 4) and bpg % p["unit"] == 0
    assert 1 <= p["warps"] <= 8 and 1 <= p["splits"] <= 32 and p["chunks"] == p["warps"] * p["splits"]
    assert p["units"] * p["unit"] == nb, "no virtual blocks"
    ranges = p["ranges"]
    assert ranges[0][0] == 0 and ranges[-1][1] == p["units"] * p["unit"]
    for (a0, a1), (b0, _) in zip(ranges, ranges[1:]):
        assert a1 == b0, "chunks must tile K without gaps or overlap"
    lens = [b - a for a, b in ranges]
    assert all(ln % p["unit"] == 0 for ln in lens)
    assert max(lens) - min(lens) <= p["unit"], f"unbalanced chunks {lens}"
    # enough warps for a big GPU, no chunk shorter than 8 blocks unless K itself is short
    assert tiles * p["chunks"] >= min(2048, tiles * max(1, nb // 8)) or p["splits"] == 32
    if nb >= 8 * p["chunks"]:
        assert min(lens) >= 8 - p["unit"]


def test_legacy_plan_shared_memory_cap(emulator):
    """The legacy GEMV stages x of its K range in 48 KB: at M = 5..8 a split holds at most 40
    blocks (4096 x 11008 at M = 8 hits the cap), and the splits still cover K."""
    for m in range(1, 301):
        for n, k in [(4096, 11008), (4096, 4096), (40, 1001), (11008, 4096)]:
            r = run(emulator, "legacy-plan", m, n, k)
            assert r.returncode == 0, r.stderr
            splits, per_split, cap = map(int, r.stdout.split())
            bucket = 1 if m <= 1 else 2 if m <= 2 else 4 if m <= 4 else 8
            assert cap == (12288 // (36 * bucket)) // 8 * 8
            assert per_split % 8 == 0 and per_split <= cap
            assert per_split * bucket * 36 * 4 <= 48 * 1024
            nb = -(-k // 32)
            assert splits * per_split >= nb > (splits - 1) * per_split
    r = run(emulator, "legacy-plan", 8, 4096, 11008)
    assert r.stdout.split()[1] == "40"
