// The data layout and split plan of the CUDA GEMV kernels (gemv_v2.cu, and the plan of the legacy
// gemv.cu), written once as __host__ __device__ code: the kernels include it under nvcc, and the
// host emulator (tests/emulator/) includes it with the host C++ compiler, so CI checks the split
// plan, which lane reads which word and the per-group accumulation against a numpy reference
// without a GPU (tests/test_gemv_arith.py). The decode of the codes is decode.h's.
//
// v2 GEMV (M <= 8) in one paragraph: a warp owns one tile of 16 weight rows and a contiguous
// chunk of its 32-column blocks, and computes the 16 x 8 product tile with tensor cores
// (mma.m16n8k16, fp32 accumulate): A = the 16 rows' codes as exact integers (q - z) in x's
// 16-bit type, B = the (up to) 8 rows of x. Lane l (g = l / 4, c = l % 4) owns physical rows
// 2g and 2g+1 of the tile (one 64-bit load per word) and columns 8c .. 8c+7 of every block
// (8 codes per row: `bits` bytes of the block's bit stream), which decode::gemv_decode turns
// into 4 pairs and decode::x_pair matches with x. Per group the 16 x 8 fp32 partial D is
// scaled once, y += s * D.
#pragma once

#include <cstdint>

#include "decode.h"

namespace cat {
namespace gemv {

using decode::cdiv;
using decode::kBlock;
using decode::kTile;
using decode::word_index;
constexpr int kMaxM = 8;  // the GEMV path's M (the mma's n = 8)

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

// ------------------------------------------------------------------ mma fragments

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
  const int64_t bpg = decode::blocks_per_group(group_size, cdiv(k, kBlock));
  return bpg % 4 == 0 ? 4 : bpg % 2 == 0 ? 2 : 1;
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

// First block of the group after block b's, or `limit`, whichever is smaller.
CAT_HD int64_t group_end(int64_t b, int64_t group_size, int64_t limit) {
  const int64_t e = cdiv((decode::group_of(b, group_size) + 1) * group_size, kBlock);
  return e < limit ? e : limit;
}

// End of the segment (blocks of one group) that starts at block b of a chunk ending at b1.
// Virtual blocks past the last real one (n_blocks) join the last real group.
CAT_HD int64_t segment_end(int64_t b, int64_t group_size, int64_t n_blocks, int64_t b1) {
  const int64_t e = group_end(b, group_size, b1);
  return e >= n_blocks ? b1 : e;
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
