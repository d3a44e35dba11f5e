// The arithmetic of the CUDA GEMV kernels (gemv_v2.cu, and the plan of the legacy gemv.cu),
// written once as __host__ __device__ code: the kernels include it under nvcc, and
// tests/gemv_host/emulate.cpp includes it with the host C++ compiler, so CI checks the split
// plan, which lane reads which word, the code decode of every bit width and the per-group
// accumulation against a numpy reference without a GPU (tests/test_gemv_arith.py).
//
// Only <cstdint>: nothing here may depend on the CUDA headers.
//
// v2 GEMV (M <= 8) in one paragraph: a warp owns one tile of 16 weight rows and a contiguous
// chunk of its 32-column blocks, and computes the 16 x 8 product tile with tensor cores
// (mma.m16n8k16, fp32 accumulate): A = the 16 rows' codes as exact integers (q - z) in x's
// 16-bit type, B = the (up to) 8 rows of x. Lane l (g = l / 4, c = l % 4) owns physical rows
// 2g and 2g+1 of the tile (one 64-bit load per word) and columns 8c .. 8c+7 of every block
// (8 codes per row: `bits` bytes of the block's bit stream). The mma's k order inside a slice
// is free as long as A and B agree, so each lane pairs its 8 codes into 4 half2 words in
// whatever order the bit tricks below make cheapest, and builds the matching x pairs with
// one byte permute each. Per group the 16 x 8 fp32 partial D is scaled once, y += s * D.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define CAT_HD __host__ __device__ __forceinline__
#define CAT_HDC __host__ __device__ constexpr
#else
#define CAT_HD inline
#define CAT_HDC constexpr
#endif

namespace cat {
namespace gemv {

constexpr int kTile = 16;    // rows per tile (format.md)
constexpr int kBlock = 32;   // columns per block (format.md)
constexpr int kMaxM = 8;     // the GEMV path's M (the mma's n = 8)

CAT_HD int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// ------------------------------------------------------------------ bit primitives

// PRMT: byte n of the result is byte (sel >> 4n) & 7 of the 8-byte value b:a.
CAT_HD uint32_t prmt(uint32_t a, uint32_t b, uint32_t sel) {
#if defined(__CUDA_ARCH__)
  return __byte_perm(a, b, sel);
#else
  const uint64_t v = (uint64_t(b) << 32) | a;
  uint32_t r = 0;
  for (int n = 0; n < 4; ++n) r |= uint32_t((v >> (8 * ((sel >> (4 * n)) & 7))) & 0xFF) << (8 * n);
  return r;
#endif
}

// (hi:lo) >> (sh & 31), the low 32 bits.
CAT_HD uint32_t funnel_r(uint32_t lo, uint32_t hi, uint32_t sh) {
#if defined(__CUDA_ARCH__)
  return __funnelshift_r(lo, hi, sh);
#else
  return uint32_t(((uint64_t(hi) << 32) | lo) >> (sh & 31));
#endif
}

// ------------------------------------------------------------------ which lane reads what

// Lane l of a warp: g = l >> 2 owns physical rows 2g, 2g+1 of the tile (mma rows g and g+8),
// c = l & 3 owns columns 8c .. 8c+7 of each block (and is the mma's thread-in-group).
CAT_HD int lane_row0(int lane) { return 2 * (lane >> 2); }
CAT_HD int lane_quad(int lane) { return lane & 3; }

// Words of a block (0 .. bits-1) lane quad c reads: columns 8c..8c+7 are stream bits
// [8 bits c, 8 bits c + 8 bits). Two words for 3 bits (a 24-bit window may straddle) and 8 bits.
template <int BITS>
CAT_HDC int lane_words() { return BITS == 3 || BITS == 8 ? 2 : 1; }
template <int BITS>
CAT_HD int lane_word(int c, int i) {
  if (BITS == 2) return c >> 1;
  if (BITS == 4) return c;
  if (BITS == 8) return 2 * c + i;
  const int w0 = (24 * c) >> 5;  // 3 bits: 0, 0, 1, 2
  return i == 0 ? w0 : (w0 + 1 < 3 ? w0 + 1 : 2);
}

// int32 index into `packed` of word w of block b of tile t, physical row r (format.md).
CAT_HD int64_t word_index(int64_t t, int64_t b, int w, int r, int64_t n_blocks, int bits) {
  return ((t * n_blocks + b) * bits + w) * kTile + r;
}

// ------------------------------------------------------------------ decode

// A lane's 8 codes of one row become 4 pairs (two codes each, one per 16-bit half). Pair j
// holds codes lo and hi (column 8c + lo, 8c + hi of the block). Each half is a "magic" 16-bit
// float: the exponent of M (fp16 0x6400 = 1024, bf16 0x4300 = 128) with the code placed at
// mantissa bit p, i.e. the value M + q 2^p, exact while p + bits <= mantissa bits (10, 7).
// One fma with multiplier 2^-p and bias -(M 2^-p + z) then yields q - z exactly (the exact
// result is a small integer, so the one rounding of the fma is exact).
// 8-bit codes with bf16 (8 code bits > 7 mantissa bits) take an fp32 detour instead (f32 = true):
// 0x4B0000qq is the float 2^23 + q, minus (2^23 + z) is q - z, packed to bf16x2 exactly.
struct PairInfo {
  int lo, hi;     // code index (0..7) in the low and the high half
  int plo, phi;   // mantissa bit of each code in the magic pattern (-1 for the fp32 path)
};

template <int BITS, bool BF16>
CAT_HDC bool decode_f32() { return BITS == 8 && BF16; }

template <int BITS, bool BF16>
CAT_HDC PairInfo pair_info(int j) {
  // 4 bits: (i, i+4), fp16 at p = 0/4 (one shift per word), bf16 at p = 0/3 (3 shifts).
  // 3 bits: (i, i+4) at p = (4, 0) or (7, 3) (fp16: 2 shifts; bf16 p <= 4: 4 shifts).
  // 2 bits: the 16-bit window duplicated into both halves, pairs (2i, 2i+1).
  // 8 bits: (0, 2), (1, 3), (4, 6), (5, 7).
  return BITS == 4 ? (BF16 ? PairInfo{j, j + 4, (j & 1) * 3, (j & 1) * 3}
                           : PairInfo{j, j + 4, (j & 1) * 4, (j & 1) * 4})
         : BITS == 3 ? (BF16 ? PairInfo{j, j + 4, 4, 0}
                             : PairInfo{j, j + 4, (j & 1) ? 7 : 4, (j & 1) ? 3 : 0})
         : BITS == 2 ? (BF16 ? PairInfo{2 * j, 2 * j + 1, 0, 2}
                             : PairInfo{2 * j, 2 * j + 1, (j & 1) * 4, (j & 1) * 4 + 2})
         : BF16 ? PairInfo{(j >> 1) * 4 + (j & 1), (j >> 1) * 4 + (j & 1) + 2, -1, -1}
                : PairInfo{(j >> 1) * 4 + (j & 1), (j >> 1) * 4 + (j & 1) + 2, 0, 0};
}

template <bool BF16>
CAT_HDC uint32_t magic2() { return BF16 ? 0x43004300u : 0x64006400u; }
template <bool BF16>
CAT_HDC int magic_value() { return BF16 ? 128 : 1024; }
template <bool BF16>
CAT_HDC int mantissa_bits() { return BF16 ? 7 : 10; }
// The 16-bit pattern of 2^-p.
template <bool BF16>
CAT_HDC uint32_t pow2_neg_bits(int p) { return BF16 ? uint32_t(127 - p) << 7 : uint32_t(15 - p) << 10; }

// (a & b) | c in one LOP3 (ptxas splits it in two when b and c are both immediates).
CAT_HD uint32_t and_or(uint32_t a, uint32_t b, uint32_t c) {
#if defined(__CUDA_ARCH__)
  uint32_t d;
  asm("lop3.b32 %0, %1, %2, %3, 0xEA;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
  return d;
#else
  return (a & b) | c;
#endif
}

// Bits of the fma2 bias pair j for zero point z: -(M 2^-p + z) in each half, exactly. The value
// lies in [2^(e-p), 2^(e-p+1)) (e = 10 for fp16, 7 for bf16: M = 2^e) because z < 2^(e-p) for
// every pair above, so its pattern is sign | exponent(e - p) | z << p: one multiply-add.
template <bool BF16>
CAT_HDC uint32_t bias_half_base(int p) {
  return 0x8000u | (uint32_t((BF16 ? 127 : 15) + (BF16 ? 7 : 10) - p) << (BF16 ? 7 : 10));
}
template <int BITS, bool BF16>
CAT_HD uint32_t bias_bits(int j, uint32_t z) {
  const PairInfo pi = pair_info<BITS, BF16>(j);
  const uint32_t base = bias_half_base<BF16>(pi.plo) | bias_half_base<BF16>(pi.phi) << 16;
  return base + z * ((1u << pi.plo) | (1u << (16 + pi.phi)));
}

// Words w0, w1 (lane_word(c, 0), lane_word(c, 1)) of one row -> the 4 magic pairs h[j].
template <int BITS, bool BF16>
CAT_HD void decode_pairs(uint32_t w0, uint32_t w1, int c, uint32_t (&h)[4]) {
  constexpr uint32_t M = magic2<BF16>();
  if constexpr (BITS == 4) {
    if constexpr (!BF16) {
      const uint32_t x1 = w0 >> 8;
      h[0] = and_or(w0, 0x000F000Fu, M);
      h[1] = and_or(w0, 0x00F000F0u, M);
      h[2] = and_or(x1, 0x000F000Fu, M);
      h[3] = and_or(x1, 0x00F000F0u, M);
    } else {
      h[0] = and_or(w0, 0x000F000Fu, M);
      h[1] = and_or(w0 >> 1, 0x00780078u, M);
      h[2] = and_or(w0 >> 8, 0x000F000Fu, M);
      h[3] = and_or(w0 >> 9, 0x00780078u, M);
    }
  } else if constexpr (BITS == 3) {
    const uint32_t v = funnel_r(w0, w1, uint32_t(24 * c) & 31u);  // codes at 3i, i = 0..7
    if constexpr (!BF16) {
      const uint32_t x1 = v << 4, x2 = v >> 2;
      h[0] = and_or(x1, 0x00070070u, M);
      h[1] = and_or(x1, 0x00380380u, M);
      h[2] = and_or(x2, 0x00070070u, M);
      h[3] = and_or(x2, 0x00380380u, M);
    } else {
      h[0] = and_or(v << 4, 0x00070070u, M);
      h[1] = and_or(v << 1, 0x00070070u, M);
      h[2] = and_or(v >> 2, 0x00070070u, M);
      h[3] = and_or(v >> 5, 0x00070070u, M);
    }
  } else if constexpr (BITS == 2) {
    // the lane's 16 bits in both halves: code i at bits 2i and 16 + 2i
    const uint32_t y = prmt(w0, w0, (c & 1) ? 0x3232u : 0x1010u);
    (void)w1;
    if constexpr (!BF16) {
      const uint32_t x1 = y >> 8;
      h[0] = and_or(y, 0x000C0003u, M);
      h[1] = and_or(y, 0x00C00030u, M);
      h[2] = and_or(x1, 0x000C0003u, M);
      h[3] = and_or(x1, 0x00C00030u, M);
    } else {
      h[0] = and_or(y, 0x000C0003u, M);
      h[1] = and_or(y >> 4, 0x000C0003u, M);
      h[2] = and_or(y >> 8, 0x000C0003u, M);
      h[3] = and_or(y >> 12, 0x000C0003u, M);
    }
  } else {
    static_assert(BITS == 8, "bits must be 2, 3, 4 or 8");
    static_assert(!BF16, "8-bit codes with bf16 use decode_f32_8");
    (void)c;
    h[0] = and_or(w0, 0x00FF00FFu, M);
    h[1] = and_or(w0 >> 8, 0x00FF00FFu, M);
    h[2] = and_or(w1, 0x00FF00FFu, M);
    h[3] = and_or(w1 >> 8, 0x00FF00FFu, M);
  }
}

// 8-bit codes, bf16: f[i] = bits of the float 2^23 + q_i (code i of the lane's 8).
CAT_HD void decode_f32_8(uint32_t w0, uint32_t w1, uint32_t (&f)[8]) {
  for (int i = 0; i < 4; ++i) {
    f[i] = prmt(w0, 0x4B000000u, 0x7440u | uint32_t(i));
    f[4 + i] = prmt(w1, 0x4B000000u, 0x7440u | uint32_t(i));
  }
}

// x of the same pair: xr[4] holds x columns 8c .. 8c+7 of one row of x as 16-bit pairs
// (xr[i / 2], column i in the low half when i is even); pair (lo, hi) -> one PRMT.
CAT_HDC uint32_t xpair_sel(int lo, int hi) {
  return ((lo & 1) ? 0x32u : 0x10u) | ((hi & 1) ? 0x7600u : 0x5400u);
}
template <int BITS, bool BF16>
CAT_HD uint32_t x_pair(const uint32_t (&xr)[4], int j) {
  const PairInfo p = pair_info<BITS, BF16>(j);
  return prmt(xr[p.lo >> 1], xr[p.hi >> 1], xpair_sel(p.lo, p.hi));
}

// Operands of mma.m16n8k16 slice s (0, 1) of a block from the lane's pairs: PTX's fragments are
// a[0] = (mma row g, k 2c..2c+1), a[1] = (row g+8, same k), a[2] = (row g, k 2c+8..2c+9),
// a[3] = (row g+8, k 2c+8..); b[0] = (k 2c..2c+1, n = g), b[1] = (k 2c+8.., n = g). Mma rows g and
// g+8 are the lane's physical rows 2g (hA) and 2g+1 (hB); n = g is x row g (the lane loads it).
CAT_HD void mma_operands(const uint32_t (&hA)[4], const uint32_t (&hB)[4], const uint32_t (&xp)[4],
                         int s, uint32_t (&a)[4], uint32_t (&b)[2]) {
  a[0] = hA[2 * s];
  a[1] = hB[2 * s];
  a[2] = hA[2 * s + 1];
  a[3] = hB[2 * s + 1];
  b[0] = xp[2 * s];
  b[1] = xp[2 * s + 1];
}
// The fp32 result d[i] of lane l: d0 = (mma row g, n 2c), d1 = (g, 2c+1), d2 = (g+8, 2c),
// d3 = (g+8, 2c+1), i.e. physical row lane_row0(l) + i / 2 of the tile and x row out_m(l, i).
CAT_HD int out_row(int lane, int i) { return lane_row0(lane) + (i >> 1); }
CAT_HD int out_m(int lane, int i) { return 2 * lane_quad(lane) + (i & 1); }
// Column of x (and of W) of the lane's code e (0..7) in block b.
CAT_HD int64_t lane_col(int64_t b, int lane, int e) { return b * kBlock + 8 * lane_quad(lane) + e; }

// ------------------------------------------------------------------ split plan (v2)

constexpr int kMaxWarps = 8;          // warps per CTA (all on one tile, splitting its K range)
constexpr int kTargetWarps = 2048;    // ~16 warps per SM on a 132-SM part, for any N
constexpr int kMinBlocksPerWarp = 8;  // a chunk shorter than 256 columns costs more than it helps
constexpr int kMaxSplits = 32;        // CTAs per tile (split-K through the workspace)

struct Plan {
  int unit = 1;         // blocks per inner-loop step: 4, 2 or 1, dividing the blocks per group
  int warps = 1;        // warps per CTA
  int splits = 1;       // CTAs per tile
  int64_t units = 0;    // ceil(n_blocks / unit): a tile's K range in steps
  int64_t chunks = 1;   // warps per tile = splits * warps
};

// The largest of 4, 2, 1 that divides the blocks per group (and, for one group spanning the
// row, the blocks per row), so that no step straddles a group and no block is virtual.
CAT_HD int unit_for(int64_t k, int64_t group_size) {
  const int64_t bpg = group_size >= k ? cdiv(k, kBlock) : group_size / kBlock;
  return bpg % 4 == 0 ? 4 : bpg % 2 == 0 ? 2 : 1;
}
// Blocks per group as the kernel steps through them: a group spanning the row never ends.
CAT_HD int64_t blocks_per_group(int64_t k, int64_t group_size) {
  return group_size >= k ? (int64_t(1) << 40) : group_size / kBlock;
}
// The v2 kernel's preconditions on the problem (gemm() takes the legacy GEMV otherwise):
// K a multiple of 32 (every block full; any LLM's K), so x needs no bounds checks.
CAT_HD bool v2_shape_ok(int64_t k) { return k % kBlock == 0; }

// Depends on the shapes only (results are reproducible and do not depend on M <= 8).
CAT_HD Plan plan(int64_t n, int64_t k, int64_t group_size) {
  Plan p;
  const int64_t nb = cdiv(k, kBlock), tiles = cdiv(n, kTile);
  p.unit = unit_for(k, group_size);
  p.units = cdiv(nb, p.unit);
  int64_t want = cdiv(kTargetWarps, tiles);
  int64_t cap = p.units * p.unit / kMinBlocksPerWarp;
  if (cap < 1) cap = 1;
  if (want > cap) want = cap;
  if (want < 1) want = 1;
  if (want <= kMaxWarps) {
    p.warps = static_cast<int>(want);
    p.splits = 1;
  } else {
    p.warps = kMaxWarps;
    int64_t s = cdiv(want, kMaxWarps);
    if (s > kMaxSplits) s = kMaxSplits;
    p.splits = static_cast<int>(s);
  }
  p.chunks = int64_t(p.splits) * p.warps;
  return p;
}

// Blocks [b0, b1) of chunk j = split * warps + warp: balanced (chunk lengths differ by at most
// one unit), whole units; blocks >= n_blocks in the last unit are virtual (zero codes, zero x).
CAT_HD void chunk_range(const Plan& p, int64_t j, int64_t& b0, int64_t& b1) {
  b0 = (j * p.units / p.chunks) * p.unit;
  b1 = ((j + 1) * p.units / p.chunks) * p.unit;
}

// Groups of block b (a block never straddles two groups: group_size is a multiple of 32, or
// the whole row).
CAT_HD int64_t group_of(int64_t b, int64_t group_size) { return (b * kBlock) / group_size; }
// First block of the group after block b's, or `limit`, whichever is smaller.
CAT_HD int64_t group_end(int64_t b, int64_t group_size, int64_t limit) {
  const int64_t e = cdiv((group_of(b, group_size) + 1) * group_size, kBlock);
  return e < limit ? e : limit;
}

// End of the segment (blocks of one group) that starts at block b of a chunk ending at b1.
// Virtual blocks past the last real one (n_blocks) join the last real group.
CAT_HD int64_t segment_end(int64_t b, int64_t group_size, int64_t n_blocks, int64_t b1) {
  const int64_t e = group_end(b, group_size, b1);
  return e >= n_blocks ? b1 : e;
}

// Zero point g of a row: stream bits [bits g, bits g + bits) of the row's zero stream, word
// index and offset (format.md "Zero points"); a 3-bit one may straddle into the next word.
CAT_HD int64_t zero_row_words(int64_t n_groups, int bits) { return cdiv(n_groups * bits, 32); }
CAT_HD int64_t zero_word(int64_t g, int bits) { return (g * bits) >> 5; }
CAT_HD int zero_off(int64_t g, int bits) { return static_cast<int>((g * bits) & 31); }
CAT_HD uint32_t zero_value(uint32_t lo, uint32_t hi, int off, int bits) {
  return funnel_r(lo, hi, uint32_t(off)) & ((1u << bits) - 1u);
}

// ------------------------------------------------------------------ legacy GEMV plan

// Today's gemv.cu (CAT_KERNELS_CUDA_IMPL=legacy): blocks per split, a multiple of 8, capped by
// the staged x of the CTA's K range in 48 KB of shared memory.
constexpr int kLegacyXStride = 36;        // floats per staged block of x
constexpr int kLegacySmemFloats = 12288;  // 48 KB
constexpr int kLegacyTargetWarps = 2048;
constexpr int kLegacyMaxSplits = 32;

CAT_HD int legacy_bucket(int64_t m) { return m <= 1 ? 1 : m <= 2 ? 2 : m <= 4 ? 4 : 8; }
CAT_HD int64_t legacy_smem_cap_blocks(int64_t m) {
  return (kLegacySmemFloats / (kLegacyXStride * legacy_bucket(m))) / 8 * 8;
}
struct LegacyPlan {
  int splits = 1;
  int64_t per_split = 0;  // 32-column blocks per split
};
CAT_HD LegacyPlan legacy_plan(int64_t m, int64_t n, int64_t k) {
  const int64_t n_blocks = cdiv(k, kBlock), tiles = cdiv(n, kTile);
  const int64_t cap = legacy_smem_cap_blocks(m);
  int64_t want = cdiv(kLegacyTargetWarps, tiles);
  const int64_t lim = n_blocks / 8 > 1 ? n_blocks / 8 : 1;
  if (want > lim) want = lim;
  if (want > kLegacyMaxSplits) want = kLegacyMaxSplits;
  if (want < 1) want = 1;
  int64_t bps = cdiv(cdiv(n_blocks, want), 8) * 8;
  if (bps > cap) bps = cap;
  LegacyPlan p;
  p.per_split = bps;
  p.splits = static_cast<int>(cdiv(n_blocks, bps));
  return p;
}

}  // namespace gemv
}  // namespace cat
