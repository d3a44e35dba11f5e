"""pack() checked bit by bit against an unpacker written only from docs/format.md."""

from __future__ import annotations

import numpy as np
import pytest

import cat_kernels as ck

BITS = [2, 3, 4, 8]


def doc_unpack(packed: np.ndarray, n: int, k: int) -> np.ndarray:
    """Independent reading of docs/format.md: packed[t, b, w, r] = word w of block b of row
    16t + r; value v of a block is column 32b + v."""
    tiles, blocks, bits, lanes = packed.shape
    assert lanes == 16 and tiles == -(-n // 16) and blocks == -(-k // 32)
    words = packed.astype(np.int64) & 0xFFFFFFFF  # int32 -> the uint32 bit pattern
    out = np.zeros((tiles * 16, blocks * 32), dtype=np.int64)
    if bits == 3:
        # One 96-bit little-endian stream per block and row, S = word0 | word1 << 32 | word2 << 64
        # (Python ints: 96 bits do not fit in int64); value v is at stream bits [3v, 3v + 3).
        w = words.astype(object)
        stream = w[:, :, 0, :] | (w[:, :, 1, :] << 32) | (w[:, :, 2, :] << 64)  # [t, b, r]
    for v in range(32):
        if bits == 3:
            q = ((stream >> (3 * v)) & 7).astype(np.int64)
        else:
            f = 32 // bits
            q = (words[:, :, v // f, :] >> (bits * (v % f))) & ((1 << bits) - 1)
        # q[t, b, r] -> out[16t + r, 32b + v]
        out[:, v::32] = q.transpose(0, 2, 1).reshape(tiles * 16, blocks)
    return out


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("shape", [(16, 32), (1, 1), (17, 33), (40, 1000), (64, 96)])
@pytest.mark.parametrize("code_dtype", [np.uint8, np.int32])
def test_pack_matches_document(rng, bits, shape, code_dtype):
    n, k = shape
    codes = rng.integers(0, 1 << bits, size=shape).astype(code_dtype)
    packed = ck.pack(codes, bits)
    assert isinstance(packed, np.ndarray)
    assert packed.dtype == np.int32
    assert packed.shape == (-(-n // 16), -(-k // 32), bits, 16)
    full = doc_unpack(packed, n, k)
    np.testing.assert_array_equal(full[:n, :k], codes.astype(np.int64))
    # Padding is part of the contract: padded codes are 0.
    assert not full[n:, :].any() and not full[:, k:].any()
    # And unpack is the exact inverse.
    back = ck.unpack(packed, n, k)
    assert back.dtype == np.uint8 and back.shape == (n, k)
    np.testing.assert_array_equal(back, codes)


def test_known_words():
    """A few words computed by hand from the document."""
    codes = np.zeros((16, 32), np.uint8)
    codes[0, 0], codes[0, 1], codes[0, 8] = 0xF, 0x1, 0x3
    p = ck.pack(codes, 4)
    assert p[0, 0, 0, 0] == 0x1F  # value 0 in bits 0-3, value 1 in bits 4-7
    assert p[0, 0, 1, 0] == 0x3  # value 8 is the lowest nibble of word 1
    codes = np.zeros((16, 32), np.uint8)
    codes[3, 31] = 0xFF
    p = ck.pack(codes, 8)
    assert p[0, 0, 7, 3] == np.int32(-(1 << 24))  # 0xFF000000 read as int32
    codes = np.zeros((16, 32), np.uint8)
    codes[5, 0] = 0b101  # stream bits 0..2
    codes[5, 1] = 0b011  # stream bits 3..5
    codes[5, 10] = 0b110  # stream bits 30..32: bits 30-31 of word 0 and bit 0 of word 1
    codes[5, 11] = 0b111  # stream bits 33..35 = bits 1..3 of word 1
    codes[5, 21] = 0b011  # stream bits 63..65: bit 31 of word 1 and bits 0-1 of word 2
    codes[5, 31] = 0b100  # stream bits 93..95 = bits 29..31 of word 2
    p = ck.pack(codes, 3)
    assert p[0, 0, 0, 5] == (0b101 | (0b011 << 3) | (0b10 << 30)) - (1 << 32)  # bit 31 set: negative
    assert p[0, 0, 1, 5] == (0b1 | (0b111 << 1) | (1 << 31)) - (1 << 32)
    assert p[0, 0, 2, 5] == (0b01 | (1 << 31)) - (1 << 32)
    assert not p[0, 0, :, [r for r in range(16) if r != 5]].any()
    back = ck.unpack(p, 16, 32)
    np.testing.assert_array_equal(back, codes)


def doc_unpack_zeros(packed: np.ndarray, n: int, n_groups: int, bits: int) -> np.ndarray:
    """Independent reading of docs/format.md "Zero points": zeros[t, w, r] = word w of row
    16t + r's stream S = sum_w word_w << 32w; zero point g is at stream bits [bits g, bits g + bits).
    Returns the whole padded stream decoded, [16 * tiles, 32 * words / bits] (rounded down)."""
    tiles, n_words, lanes = packed.shape
    assert lanes == 16 and tiles == -(-n // 16) and n_words == -(-(n_groups * bits) // 32)
    words = (packed.astype(np.int64) & 0xFFFFFFFF).astype(object)
    rows = []
    for t in range(tiles):
        for r in range(16):
            s = sum(int(words[t, w, r]) << (32 * w) for w in range(n_words))
            rows.append([(s >> (bits * g)) & ((1 << bits) - 1) for g in range(32 * n_words // bits)])
    return np.array(rows, dtype=np.int64)


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("shape", [(1, 1), (17, 9), (20, 40), (40, 33), (3, 64)])
def test_zero_points_match_document(rng, bits, shape):
    n, ng = shape
    z = rng.integers(0, 1 << bits, size=shape).astype(np.int32)
    p = ck.pack_zeros(z, bits)
    assert p.dtype == np.int32 and p.shape == (-(-n // 16), -(-(ng * bits) // 32), 16)
    full = doc_unpack_zeros(p, n, ng, bits)
    np.testing.assert_array_equal(full[:n, :ng], z)
    assert not full[n:, :].any() and not full[:, ng:].any()  # padding is 0
    back = ck.unpack_zeros(p, n, ng, bits)
    assert back.dtype == np.uint8 and back.shape == (n, ng)
    np.testing.assert_array_equal(back, z)


def test_zero_points_known_words():
    """Dense: 9 groups of 3-bit zeros take one word per row (27 bits), 11 groups two words, the
    11th (stream bits 30..32) straddling them."""
    z = np.zeros((16, 9), np.uint8)
    z[2, 0], z[2, 8] = 0b101, 0b111
    p = ck.pack_zeros(z, 3)
    assert p.shape == (1, 1, 16)
    assert p[0, 0, 2] == 0b101 | (0b111 << 24)
    z = np.zeros((16, 11), np.uint8)
    z[0, 10] = 0b110
    p = ck.pack_zeros(z, 3)
    assert p.shape == (1, 2, 16)
    assert p[0, 0, 0] == (0b10 << 30) - (1 << 32) and p[0, 1, 0] == 0b1
    z = np.zeros((16, 3), np.uint8)
    z[15, :] = [1, 2, 3]
    p = ck.pack_zeros(z, 4)  # 12 bits: one word
    assert p.shape == (1, 1, 16) and p[0, 0, 15] == 0x321


def test_weight_and_zero_streams_agree(rng):
    """Both layouts are the same row stream: for a multiple of 32 values, the weight layout read
    as [tiles, blocks * bits, 16] is exactly the zero layout."""
    for bits in BITS:
        q = rng.integers(0, 1 << bits, size=(19, 64)).astype(np.uint8)
        np.testing.assert_array_equal(ck.pack(q, bits).reshape(2, -1, 16), ck.pack_zeros(q, bits))
