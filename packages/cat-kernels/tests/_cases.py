"""Random quantized weights for the tests."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

import cat_kernels as ck
from _reference import dequantize_ref, quantize_rtn


@dataclass
class Case:
    bits: int
    group_size: int
    codes: np.ndarray  # uint8 [N, K]
    scales: np.ndarray  # float32 [N, ng], values representable in scale_dtype
    zeros: Optional[np.ndarray]  # int32 [N, ng] or None
    scale_dtype: str
    packed: np.ndarray
    zeros_packed: Optional[np.ndarray]
    w: np.ndarray  # float32 [N, K] reference dequantization

    @property
    def n(self) -> int:
        return self.codes.shape[0]

    @property
    def k(self) -> int:
        return self.codes.shape[1]

    def scales_np(self) -> np.ndarray:
        assert self.scale_dtype in ("float32", "float16")
        return self.scales.astype(self.scale_dtype)


def make_case(rng, n, k, bits, group_size, symmetric, scale_dtype="float32") -> Case:
    w = rng.standard_normal((n, k)).astype(np.float32) * rng.uniform(0.01, 2.0)
    codes, scales, zeros = quantize_rtn(w, bits, group_size, symmetric, scale_dtype)
    # Scales of either sign: importance-weighted symmetric rounding (cat-core) stores a negative
    # scale wherever a group's largest-magnitude weight is positive.
    scales = np.where(rng.random(scales.shape) < 0.3, -scales, scales).astype(scales.dtype)
    # RTN leaves most codes near the middle; mix in uniformly random codes so that every bit
    # pattern (in particular the top bits of each word) is exercised.
    mask = rng.random(codes.shape) < 0.3
    codes = np.where(mask, rng.integers(0, 1 << bits, size=codes.shape), codes).astype(np.uint8)
    packed = ck.pack(codes, bits)
    zp = None if zeros is None else ck.pack_zeros(zeros, bits)
    return Case(bits, group_size, codes, scales, zeros, scale_dtype, packed, zp,
                dequantize_ref(codes, scales, zeros, bits, group_size))
