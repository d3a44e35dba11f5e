// The arithmetic of the v2 tiled kernel (gemm_tiled_v2.cu), shared with a host-compiled test
// (tests/test_tiled_v2_emulation.py builds tests/tiled_v2_emu.cpp against this file and runs
// one CTA's whole k-loop on the host, every warp, lane and pipeline stage).
//
// Everything that decides an index lives here: which thread copies which bytes into which
// shared-memory slot, the x-tile swizzle, which lane supplies which ldmatrix row address, which
// (row, column) of W each lane decodes into which mma B register, the decode of 2/3/4/8-bit
// codes into exact 16-bit (q - z) pairs, the group boundaries, the stage ring and the split
// plan. Plain C++17 with no CUDA header: under nvcc the functions are __host__ __device__ and
// use the hardware intrinsics; on the host they use bit-exact emulations of them.
//
// mma.sync.m16n8k16 fragments (PTX ISA, "Matrix Fragments for mma.m16n8k16 with floating point
// type"; g = lane / 4, t = lane % 4):
//   A (16 x 16, row): reg r holds (row g + 8 (r & 1), cols 2t + 8 (r >> 1) + {0, 1})
//   B (16 x 8, col):  reg r holds (k 2t + 8 r + {0, 1}, n g)
//   C (16 x 8, f32):  c[i] is (row g + 8 (i >> 1), col 2t + (i & 1))
// ldmatrix.x4: lanes 8 i .. 8 i + 7 give the row addresses of 8x8 matrix i, which lands in
// register i (lane l receiving row l / 4, elements 2 (l % 4) + {0, 1} of every matrix).
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define CAT_V2_HD __host__ __device__ __forceinline__
#else
#define CAT_V2_HD inline
#endif

namespace cat {
namespace tiled_v2 {

// ------------------------------------------------------------------ tile geometry

constexpr int kBN = 64;             // W rows (outputs) per CTA: 4 warps x one 16-row packed tile
constexpr int kBK = 64;             // columns per k-step (pipeline stage) = 2 blocks of 32
constexpr int kBlocksPerStep = 2;
constexpr int kWarps = 4;
constexpr int kThreads = 32 * kWarps;
constexpr int kMetaBytes = 2 * kBlocksPerStep * kBN * 4;  // per stage: scales (f32) + zero pairs

// M fragments (of 16 rows) per CTA: every warp multiplies its decoded W fragments with all of
// them, so a weight is decoded once per CTA tile of 16 MT rows of x (once in all for M <= 128).
CAT_V2_HD constexpr int mt_for(int64_t m) { return m <= 32 ? 2 : m <= 64 ? 4 : 8; }
// Stages: 4 while the x tile is small; 3 at MT = 8 (an x tile of 16 KB per stage).
CAT_V2_HD constexpr int stages_for(int mt) { return mt >= 8 ? 3 : 4; }

CAT_V2_HD constexpr int x_stage_bytes(int mt) { return 16 * mt * kBK * 2; }
CAT_V2_HD constexpr int packed_stage_words(int bits) { return kWarps * kBlocksPerStep * bits * 16; }
CAT_V2_HD constexpr int stage_bytes(int mt, int bits) {
  return x_stage_bytes(mt) + packed_stage_words(bits) * 4 + kMetaBytes;
}
CAT_V2_HD constexpr int smem_bytes(int mt, int bits) { return stages_for(mt) * stage_bytes(mt, bits); }
// Byte offsets inside one stage: [x tile][packed words][scales f32 [2][64]][zero pairs u32 [2][64]]
CAT_V2_HD constexpr int packed_off(int mt) { return x_stage_bytes(mt); }
CAT_V2_HD constexpr int scale_off(int mt, int bits) { return packed_off(mt) + packed_stage_words(bits) * 4; }
CAT_V2_HD constexpr int zero_off(int mt, int bits) { return scale_off(mt, bits) + kBlocksPerStep * kBN * 4; }

// Stage ring: local k-step li (0 = the split's first) lives in slot li % stages.
CAT_V2_HD int slot_of(int64_t li, int stages) { return static_cast<int>(li % stages); }

// ------------------------------------------------------------------ x tile

// x tile [16 MT][64] 16-bit, rows of 128 bytes = 8 chunks of 16 bytes; chunk c of row r is stored
// at chunk position c ^ (r % 8), so the 8 rows one ldmatrix phase reads hit 8 different bank
// groups (no padding needed).
CAT_V2_HD int x_swizzle(int row, int col) {
  return row * kBK + ((((col >> 3) ^ row) & 7) << 3) + (col & 7);
}
// 16-byte chunk `c` of a stage's x tile (cp.async loop: c = tid + i * kThreads): (row, col).
struct XChunk {
  int row, col;
};
CAT_V2_HD XChunk x_chunk(int c) { return {c >> 3, (c & 7) * 8}; }
CAT_V2_HD constexpr int x_chunks(int mt) { return 16 * mt * 8; }
// Source of thread tid's chunk i (c = tid + i * kThreads) at k-step column k0: element offset
// x_src0(tid, m0, k) + i * x_src_stride(k) + k0 into x [M, K] (kThreads is a multiple of 8 rows'
// chunks, so every i has the same column and rows kThreads / 8 apart).
CAT_V2_HD int64_t x_src0(int tid, int64_t m0, int64_t k) {
  const XChunk q = x_chunk(tid);
  return (m0 + q.row) * k + q.col;
}
CAT_V2_HD int64_t x_src_stride(int64_t k) { return int64_t(kThreads / 8) * k; }

// ldmatrix.x4 row address for lane `lane`, M fragment `mf`, 16-column slice `ks` (0..3) of the
// stage: matrices 0..3 = (rows 0-7, cols 0-7), (rows 8-15, cols 0-7), (rows 0-7, cols 8-15),
// (rows 8-15, cols 8-15), i.e. A registers 0..3 in the mma's order.
struct XAddr {
  int row, col;
};
CAT_V2_HD XAddr ldsm_a(int lane, int mf, int ks) {
  return {mf * 16 + (lane & 15), ks * 16 + ((lane >> 4) << 3)};
}

// ------------------------------------------------------------------ packed codes

// A stage holds, for the CTA's 4 packed tiles (warp w <-> tile n0 / 16 + w) and its 2 blocks,
// the words in the global order [tile][block][word][row]: per tile 2 * bits * 16 contiguous
// words in global memory too (format.md), so the copy is an identity of 16-byte chunks.
CAT_V2_HD int packed_word(int warp, int bl, int word, int row, int bits) {
  return ((warp * kBlocksPerStep + bl) * bits + word) * 16 + row;
}
// Copy unit `u` of `bytes` (16 when packed is 16-byte aligned, else 4) of a stage: which tile
// and block it belongs to, its word offset in shared memory, its source word at k-step 0 (add
// `step * packed_step_words(bits)` for k-step `step`) and whether its tile exists; the unit is
// copied when also `step * 2 + bl < n_blocks`.
struct PackedCopy {
  int warp, bl;
  int smem_word;
  int64_t gmem_word0;
  bool tile_ok;
};
CAT_V2_HD constexpr int packed_units(int bits, int bytes) { return packed_stage_words(bits) * 4 / bytes; }
CAT_V2_HD constexpr int64_t packed_step_words(int bits) { return int64_t(kBlocksPerStep) * bits * 16; }
CAT_V2_HD PackedCopy packed_copy(int u, int bytes, int bits, int64_t tile0, int64_t n_tiles, int64_t n_blocks) {
  const int words = bytes / 4;
  const int per_tile = kBlocksPerStep * bits * 16;  // words
  const int sw = u * words;
  PackedCopy p;
  p.warp = sw / per_tile;
  p.bl = (sw % per_tile) / (bits * 16);
  p.smem_word = sw;
  const int64_t t = tile0 + p.warp;
  p.gmem_word0 = t * n_blocks * bits * 16 + sw % per_tile;
  p.tile_ok = t < n_tiles;
  return p;
}

// ------------------------------------------------------------------ intrinsics (exact on host)

CAT_V2_HD uint32_t prmt(uint32_t a, uint32_t b, uint32_t sel) {
#if defined(__CUDA_ARCH__)
  return __byte_perm(a, b, sel);
#else
  const uint64_t v = (uint64_t(b) << 32) | a;
  uint32_t r = 0;
  for (int i = 0; i < 4; ++i) r |= uint32_t((v >> (8 * ((sel >> (4 * i)) & 7))) & 0xFF) << (8 * i);
  return r;
#endif
}
// (hi:lo) >> (sh & 31)
CAT_V2_HD uint32_t funnel_r(uint32_t lo, uint32_t hi, int sh) {
#if defined(__CUDA_ARCH__)
  return __funnelshift_r(lo, hi, sh);
#else
  return static_cast<uint32_t>(((uint64_t(hi) << 32) | lo) >> (sh & 31));
#endif
}
CAT_V2_HD float as_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, 4);
  return f;
#endif
}
CAT_V2_HD uint32_t as_uint(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
#endif
}

#if !defined(__CUDA_ARCH__)
// Host models of the 16-bit formats, used by the emulation only: exact widening, and
// round-to-nearest-even narrowing (finite values).
inline float h16_to_float(uint16_t h, bool bf16) {
  if (bf16) return as_float(uint32_t(h) << 16);
  const uint32_t s = (h >> 15) & 1, e = (h >> 10) & 31, m = h & 1023;
  float v;
  if (e == 0) v = m * (1.0f / 16777216.0f);  // subnormal: m * 2^-24
  else if (e == 31) v = m ? as_float(0x7FC00000u) : as_float(0x7F800000u);
  else v = as_float(((e + 112) << 23) | (m << 13));
  return s ? -v : v;
}
inline uint16_t float_to_h16(float f, bool bf16) {
  const uint32_t u = as_uint(f);
  if (bf16) return static_cast<uint16_t>((u + 0x7FFFu + ((u >> 16) & 1)) >> 16);
  const uint32_t s = (u >> 16) & 0x8000;
  float a = f < 0 ? -f : f;
  if (a >= 65520.0f) return static_cast<uint16_t>(s | 0x7C00);
  if (a < 6.103515625e-05f) {  // subnormal: multiples of 2^-24, nearest even
    const float q = a * 16777216.0f;
    uint32_t r = static_cast<uint32_t>(q);
    const float rem = q - r;
    if (rem > 0.5f || (rem == 0.5f && (r & 1))) ++r;
    return static_cast<uint16_t>(s | r);
  }
  const uint32_t au = as_uint(a);
  uint32_t e = (au >> 23) - 112, m = au & 0x7FFFFF;
  uint32_t hm = m >> 13;
  const uint32_t rest = m & 0x1FFF;
  if (rest > 0x1000 || (rest == 0x1000 && (hm & 1))) ++hm;
  if (hm == 1024) {
    hm = 0;
    ++e;
  }
  return static_cast<uint16_t>(s | (e << 10) | hm);
}
#endif

// Lane-wise a - b on two packed 16-bit values (fp16 or bf16). Only ever used on exact integers
// of magnitude <= 2048, where the result is exact in both formats.
template <bool BF16>
CAT_V2_HD uint32_t sub2(uint32_t a, uint32_t b) {
#if defined(__CUDA_ARCH__)
  if constexpr (BF16) {
    __nv_bfloat162 x, y;
    std::memcpy(&x, &a, 4);
    std::memcpy(&y, &b, 4);
    const __nv_bfloat162 r = __hsub2(x, y);
    uint32_t u;
    std::memcpy(&u, &r, 4);
    return u;
  } else {
    __half2 x, y;
    std::memcpy(&x, &a, 4);
    std::memcpy(&y, &b, 4);
    const __half2 r = __hsub2(x, y);
    uint32_t u;
    std::memcpy(&u, &r, 4);
    return u;
  }
#else
  const float lo = h16_to_float(a & 0xFFFF, BF16) - h16_to_float(b & 0xFFFF, BF16);
  const float hi = h16_to_float(a >> 16, BF16) - h16_to_float(b >> 16, BF16);
  return uint32_t(float_to_h16(lo, BF16)) | (uint32_t(float_to_h16(hi, BF16)) << 16);
#endif
}
// Two floats (exact small integers here) packed as bf16x2, low half first.
CAT_V2_HD uint32_t pack_bf16x2(float lo, float hi) {
#if defined(__CUDA_ARCH__)
  const __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
  uint32_t u;
  std::memcpy(&u, &h, 4);
  return u;
#else
  return uint32_t(float_to_h16(lo, true)) | (uint32_t(float_to_h16(hi, true)) << 16);
#endif
}

// ------------------------------------------------------------------ decode

// Codes become 16-bit floats without any int->float conversion: a code q < 2^bits placed in the
// mantissa of `magic` is the float magic_value + q, exactly (fp16 0x6400 = 1024, 10 mantissa
// bits; bf16 0x4300 = 128, 7 mantissa bits, so bits <= 4 only), and subtracting the pair
// (magic_value + z) leaves q - z exactly. 8-bit codes with bf16 go through fp32
// (0x4B000000 | q = 2^23 + q) and one exact bf16x2 conversion.
template <int BITS, bool BF16>
CAT_V2_HD constexpr bool via_f32() { return BF16 && BITS == 8; }
template <bool BF16>
CAT_V2_HD constexpr uint32_t magic16() { return BF16 ? 0x4300u : 0x6400u; }

// The per-(row, block) zero operand: the 16-bit pair (magic + z, magic + z), or for the fp32
// route the float bits of 2^23 + z.
template <int BITS, bool BF16>
CAT_V2_HD uint32_t zero_operand(uint32_t z) {
  if constexpr (via_f32<BITS, BF16>()) return as_uint(8388608.0f + static_cast<float>(z));
  const uint32_t h = magic16<BF16>() + z;
  return h | (h << 16);
}

// Lane (g = lane / 4, t = lane % 4) decodes, for B register r of 16-column slice h of a block
// (pair j = 2 h + r), the two codes at block values v = 8 j + 2 t + {0, 1} of its row; `blk`
// points at word 0 row 0 of the tile's block in shared memory ([bits][16] words).
CAT_V2_HD int pair_value(int j, int t) { return 8 * j + 2 * t; }

template <int BITS, bool BF16>
CAT_V2_HD uint32_t decode_pair(const uint32_t* blk, int row, int j, int t, uint32_t zop) {
  constexpr uint32_t mask = ((1u << BITS) - 1u) * 0x00010001u;
  constexpr uint32_t magic = magic16<BF16>() * 0x00010001u;
  if constexpr (BITS == 4) {
    // values 8 j .. 8 j + 7 are word j; the pair is byte t: low nibble first.
    const uint32_t w = blk[j * 16 + row];
    const uint32_t sel = uint32_t(t) | (uint32_t(t) << 4) | (uint32_t(4 + t) << 8) | (uint32_t(4 + t) << 12);
    return sub2<BF16>((prmt(w, w >> 4, sel) & mask) | magic, zop);
  } else if constexpr (BITS == 2) {
    // word j / 2 holds values 16 (j / 2) .. +15; the pair is nibble t + 4 (j % 2): byte
    // t / 2 + 2 (j % 2), upper half when t is odd.
    const uint32_t w = blk[(j >> 1) * 16 + row] >> (4 * (t & 1));
    const uint32_t b = uint32_t((t >> 1) + 2 * (j & 1));
    const uint32_t sel = b | (b << 4) | ((4 + b) << 8) | ((4 + b) << 12);
    return sub2<BF16>((prmt(w, w >> 2, sel) & mask) | magic, zop);
  } else if constexpr (BITS == 3) {
    // 96-bit stream per block: the pair is stream bits [6 t + 24 j, +6), which may straddle two
    // words (t = 1, j = 1 and t = 2, j = 2); the funnel shift reads either case.
    const int p = 6 * t + 24 * j, wi = p >> 5;
    const uint32_t lo = blk[wi * 16 + row];
    const uint32_t hi = blk[(wi < 2 ? wi + 1 : 2) * 16 + row];
    const uint32_t x = funnel_r(lo, hi, p & 31);
    return sub2<BF16>((prmt(x, x >> 3, 0x4400u) & mask) | magic, zop);
  } else {
    static_assert(BITS == 8, "bits must be 2, 3, 4 or 8");
    // word 2 j + t / 2 holds values 8 j + 4 (t / 2) .. +3; the pair is bytes 2 (t % 2) and +1.
    const uint32_t w = blk[(2 * j + (t >> 1)) * 16 + row];
    const uint32_t b = 2 * uint32_t(t & 1);
    if constexpr (via_f32<BITS, BF16>()) {
      const uint32_t m = 0x4B000000u;  // bytes 1, 2 are 0: prmt fills them from m
      const float lo = as_float(prmt(w, m, b | (5u << 4) | (6u << 8) | (7u << 12))) - as_float(zop);
      const float hi = as_float(prmt(w, m, (b + 1) | (5u << 4) | (6u << 8) | (7u << 12))) - as_float(zop);
      return pack_bf16x2(lo, hi);
    } else {
      // fp16: bytes (q_lo, 0x64, q_hi, 0x64) is the pair (1024 + q_lo, 1024 + q_hi) directly.
      return sub2<BF16>(prmt(w, 0x64646464u, b | (4u << 4) | ((b + 1) << 8) | (4u << 12)), zop);
    }
  }
}

// ------------------------------------------------------------------ per-stage metadata

// Thread `tid` loads the scale and zero point of (CTA row tid % 64, block tid / 64) of a stage.
struct MetaSlot {
  int row, bl;
};
CAT_V2_HD MetaSlot meta_slot(int tid) { return {tid & (kBN - 1), tid >> 6}; }
static_assert(kThreads == kBN * kBlocksPerStep, "one metadata slot per thread");

// Where (global row `row`, global block b) finds its scale and zero point: scales [N, n_groups]
// (`scale` element index), zero points one bit stream per row in tiles of 16 (format.md): the
// word(s) holding zero point g and its bit offset. Rows past N and blocks past the split are
// not loaded (scale 0, zero 0: they meet zero-filled codes and are never stored).
struct MetaSrc {
  bool valid;
  int64_t scale;
  int64_t zlo, zhi;  // word indices into `zeros`; zhi < 0: the value is in one word
  int zoff;
};
// Per-row parts (computed once per thread): scale index of group 0, zero word of group 0.
struct MetaRow {
  int64_t scale0, zero0;
};
CAT_V2_HD MetaRow meta_row(int64_t row, int64_t n_groups, int bits) {
  const int64_t zw = (n_groups * bits + 31) / 32;
  return {row * n_groups, (row / 16) * zw * 16 + row % 16};
}
// Source of (row, block b in group g); valid only for rows < n and blocks < b_end.
CAT_V2_HD MetaSrc meta_src(const MetaRow& r, bool row_ok, int64_t b, int64_t g, int64_t b_end, int bits) {
  MetaSrc m{false, 0, 0, -1, 0};
  if (!row_ok || b >= b_end) return m;
  m.valid = true;
  m.scale = r.scale0 + g;
  const int64_t pos = int64_t(bits) * g, wi = pos >> 5;
  m.zoff = static_cast<int>(pos & 31);
  m.zlo = r.zero0 + wi * 16;
  if (m.zoff + bits > 32) m.zhi = r.zero0 + (wi + 1) * 16;
  return m;
}
CAT_V2_HD uint32_t zero_from_words(uint32_t lo, uint32_t hi, int off, int bits) {
  return funnel_r(lo, hi, off) & ((1u << bits) - 1u);
}
// Scale from its raw storage bits (dtype as cat::DType: 0 f32, 1 f16, 2 bf16).
CAT_V2_HD float scale_from_raw(uint32_t raw, int dtype) {
  if (dtype == 2) return as_float(raw << 16);
  if (dtype == 1) {
#if defined(__CUDA_ARCH__)
    return __half2float(__ushort_as_half(static_cast<unsigned short>(raw)));
#else
    return h16_to_float(static_cast<uint16_t>(raw), false);
#endif
  }
  return as_float(raw);
}

// Group of global block b (group_size resolved: K for a whole-row group, then every block is in
// group 0 because 32 b < K).
CAT_V2_HD int64_t group_of(int64_t b, int64_t group_size) { return (b * 32) / group_size; }
// Blocks per group: group_size / 32, or every block for a whole-row group with K not a multiple
// of 32 (the only case where group_size % 32 != 0).
CAT_V2_HD int64_t blocks_per_group(int64_t group_size, int64_t n_blocks) {
  return group_size % 32 == 0 ? group_size / 32 : n_blocks;
}
// Walks blocks in order without a division per block: the group of the current block and how
// many of its blocks remain (this one included). One division at start.
struct GroupCursor {
  int64_t g, left, bpg;
  CAT_V2_HD void start(int64_t b, int64_t blocks_per_group) {
    bpg = blocks_per_group;
    g = b / bpg;
    left = bpg - b % bpg;
  }
  CAT_V2_HD void next() {
    if (--left == 0) {
      ++g;
      left = bpg;
    }
  }
  CAT_V2_HD bool last_in_group() const { return left == 1; }
};
// The kernel's flush test for block b (cursor on b): the group_ends rule below, incrementally.
CAT_V2_HD bool flush_after(const GroupCursor& c, int64_t b, int64_t b_end) {
  return b + 1 == b_end || c.last_in_group();
}

// After block b the group's partial sums are scaled and folded into the totals when b is the
// last block of its group, of the matrix, or of this split (a split may cut a group in two: each
// part is scaled by the same s, the parts meet in the split-K reduction).
CAT_V2_HD bool group_ends(int64_t b, int64_t group_size, int64_t b_end) {
  return b + 1 == b_end || ((b + 1) * 32) % group_size == 0;
}

// ------------------------------------------------------------------ C fragment and epilogue

struct CPos {
  int row, col;
};
// Accumulator i (0..3) of lane `lane` in M fragment mf, N fragment nf of warp `warp`: its
// (row, col) in the CTA's output tile.
CAT_V2_HD CPos c_pos(int lane, int warp, int mf, int nf, int i) {
  return {mf * 16 + (lane >> 2) + 8 * (i >> 1), warp * 16 + nf * 8 + 2 * (lane & 3) + (i & 1)};
}
// W row (in the CTA tile) whose codes lane `lane` decodes for N fragment nf: n = g.
CAT_V2_HD int b_row(int lane, int nf) { return nf * 8 + (lane >> 2); }

// ------------------------------------------------------------------ split plan (host)

struct Plan {
  int mt = 2;
  int splits = 1;
  int64_t per_split = 0;  // k-steps (64 columns) per split
};
inline int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }
// Enough CTAs for ~2 per SM on a 132-SM part, at least `stages` k-steps per split (so the
// pipeline fills), at most 32 splits.
inline Plan plan(int64_t m, int64_t n, int64_t k) {
  Plan p;
  p.mt = mt_for(m);
  const int64_t steps = cdiv(k, kBK);
  const int64_t ctas = cdiv(n, kBN) * cdiv(m, 16 * p.mt);
  int64_t want = cdiv(264, ctas);
  const int64_t min_steps = stages_for(p.mt);
  want = want < steps / min_steps ? want : steps / min_steps;
  want = want < 32 ? want : 32;
  want = want > 1 ? want : 1;
  p.per_split = cdiv(steps, want);
  p.splits = static_cast<int>(cdiv(steps, p.per_split));
  return p;
}

}  // namespace tiled_v2
}  // namespace cat
