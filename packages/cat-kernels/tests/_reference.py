"""Plain numpy reference: RTN quantization, dequantization and the matmul the kernels compute.
Written from docs/format.md; shares no code with the package."""

from __future__ import annotations

import numpy as np

EPS32 = float(np.finfo(np.float32).eps)


def round_to_bf16(a: np.ndarray) -> np.ndarray:
    """float32 -> the float32 value of its bfloat16 rounding (nearest even)."""
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000
    return u.astype(np.uint32).view(np.float32)


def round_to(a: np.ndarray, dtype: str) -> np.ndarray:
    """float32 values rounded to `dtype` storage, returned as float32."""
    a = np.asarray(a, dtype=np.float32)
    if dtype == "float32":
        return a
    if dtype == "float16":
        return a.astype(np.float16).astype(np.float32)
    if dtype == "bfloat16":
        return round_to_bf16(a)
    raise ValueError(dtype)


def quantize_rtn(w: np.ndarray, bits: int, group_size: int, symmetric: bool, scale_dtype: str):
    """Round-to-nearest quantization of w [N, K] (float32).

    Returns (codes uint8 [N, K], scales float32 [N, n_groups] already rounded to scale_dtype,
    zeros int32 [N, n_groups] or None)."""
    n, k = w.shape
    g = k if group_size == -1 else group_size
    ng = k // g
    wg = w.reshape(n, ng, g).astype(np.float64)
    qmax = (1 << bits) - 1
    if symmetric:
        z = 1 << (bits - 1)
        s = np.abs(wg).max(axis=2) / max(z - 1, 1)
        s = np.where(s == 0, 1.0, s)
        s = round_to(s, scale_dtype).astype(np.float64)
        q = np.clip(np.rint(wg / s[..., None]) + z, 0, qmax)
        zeros = None
    else:
        lo = np.minimum(wg.min(axis=2), 0.0)
        hi = np.maximum(wg.max(axis=2), 0.0)
        s = (hi - lo) / qmax
        s = np.where(s == 0, 1.0, s)
        s = round_to(s, scale_dtype).astype(np.float64)
        zeros = np.clip(np.rint(-lo / s), 0, qmax)
        q = np.clip(np.rint(wg / s[..., None]) + zeros[..., None], 0, qmax)
        zeros = zeros.astype(np.int32)
    codes = q.reshape(n, k).astype(np.uint8)
    return codes, s.astype(np.float32), zeros


def dequantize_ref(codes, scales, zeros, bits: int, group_size: int) -> np.ndarray:
    """float32(q - z) * float32(s), exactly as docs/format.md prescribes."""
    n, k = codes.shape
    g = k if group_size == -1 else group_size
    z = np.full(scales.shape, 1 << (bits - 1), np.int64) if zeros is None else zeros.astype(np.int64)
    zf = np.repeat(z, g, axis=1)
    sf = np.repeat(scales.astype(np.float32), g, axis=1)
    return (codes.astype(np.int64) - zf).astype(np.float32) * sf


def gemm_ref(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """x [M, K] @ w [N, K].T in float64 (the exact answer up to float64 rounding)."""
    return x.astype(np.float64) @ w.astype(np.float64).T


def gemm_tolerance(x, scales, bits: int, group_size: int, out_dtype: str) -> np.ndarray:
    """Per-element absolute tolerance for gemm against gemm_ref.

    The kernel sums float32 terms whose magnitude is bounded by |x| * |s| * 2**(bits+1) (it
    accumulates x * (1 + q / 2**bits) and rescales by 2**bits, then subtracts the zero-point
    term), in chains of at most 512 terms per segment plus one add per segment. Rounding errors
    of such sums behave like a random walk: ~sqrt(n) * eps/2 relative to the sum of magnitudes,
    i.e. ~1e-6 here. We allow 2**-17 (7.6e-6) of that magnitude sum: several sigma above the
    random-walk estimate, yet far below the effect of any decoding bug (one wrong code shifts an
    output by |x_k| * |s|, i.e. ~1/K of the magnitude sum, and a wrong bit pattern shifts many).
    fp16/bf16 outputs add half an ulp of the result (2**-11 / 2**-8 relative)."""
    k = x.shape[1]
    g = k if group_size == -1 else group_size
    sf = np.repeat(np.abs(scales.astype(np.float64)), g, axis=1)
    mag = np.abs(x.astype(np.float64)) @ (sf * 2.0 ** (bits + 1)).T
    return mag * 2.0**-17


def output_rtol(out_dtype: str) -> float:
    return {"float32": 0.0, "float16": 2.0**-11, "bfloat16": 2.0**-8}[out_dtype]
