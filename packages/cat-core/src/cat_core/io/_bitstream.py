"""Little-endian bit streams of 2/3/4/8-bit codes in int32 words (the GPTQ and AWQ packing)."""

from __future__ import annotations

import torch

# Columns per chunk are chosen so that the int64 bit planes stay around 64 MiB.
_CHUNK_BYTES = 64 << 20


def pack_stream(values: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack ``[L, C]`` codes along L into ``[L * bits / 32, C]`` int32: column c is one
    little-endian bit stream, value i at stream bits ``[bits*i, bits*i + bits)`` (so 4-bit puts
    value i at bits ``4*(i%8)`` of word ``i//8``; 3-bit puts 32 values in 3 words)."""
    length, cols = values.shape
    if (length * bits) % 32:
        raise ValueError(f"cannot pack {length} {bits}-bit values into whole 32-bit words")
    out = torch.empty(length * bits // 32, cols, dtype=torch.int32)
    step = max(1, _CHUNK_BYTES // max(1, length * bits * 8))
    bit_idx = torch.arange(bits, dtype=torch.int64).view(1, bits, 1)
    shifts = torch.arange(32, dtype=torch.int64).view(1, 32, 1)
    for c0 in range(0, cols, step):
        v = values[:, c0:c0 + step].to(torch.int64)
        planes = ((v.unsqueeze(1) >> bit_idx) & 1).reshape(length * bits // 32, 32, -1)
        words = (planes << shifts).sum(1)
        out[:, c0:c0 + step] = torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)
    return out


def unpack_stream(words: torch.Tensor, bits: int, length: int) -> torch.Tensor:
    """Inverse of :func:`pack_stream`: ``[length * bits / 32, C]`` int32 -> ``[length, C]`` uint8."""
    n_words, cols = words.shape
    if n_words * 32 != length * bits:
        raise ValueError(f"{n_words} words do not hold {length} {bits}-bit values")
    out = torch.empty(length, cols, dtype=torch.uint8)
    step = max(1, _CHUNK_BYTES // max(1, length * bits * 8))
    bit_idx = torch.arange(bits, dtype=torch.int64).view(1, bits, 1)
    shifts = torch.arange(32, dtype=torch.int64).view(1, 32, 1)
    for c0 in range(0, cols, step):
        w = words[:, c0:c0 + step].to(torch.int64) & 0xFFFFFFFF
        planes = ((w.unsqueeze(1) >> shifts) & 1).reshape(length, bits, -1)
        out[:, c0:c0 + step] = (planes << bit_idx).sum(1).to(torch.uint8)
    return out
