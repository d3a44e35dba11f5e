// The index arithmetic of the v2 tiled kernel (gemm_tiled_v2.cu), shared with the host emulator
// (tests/emulator/, driven by tests/test_tiled_v2_emulation.py), which runs every CTA's whole
// k-loop on the host: every warp, lane and pipeline stage.
//
// Everything that decides an index lives here: which thread copies which bytes into which
// shared-memory slot, the x-tile swizzle, which lane supplies which ldmatrix row address, which
// (row, column) of W each lane decodes into which mma B register, the group boundaries, the
// stage ring and the split plan; the decode of the codes into exact 16-bit (q - z) pairs is
// decode.h's (decode::tiled_decode). Plain C++17 with no CUDA header, like decode.h.
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

#include "decode.h"

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
CAT_HD constexpr int mt_for(int64_t m) { return m <= 32 ? 2 : m <= 64 ? 4 : 8; }
// Stages: 4 while the x tile is small; 3 at MT = 8 (an x tile of 16 KB per stage).
CAT_HD constexpr int stages_for(int mt) { return mt >= 8 ? 3 : 4; }

CAT_HD constexpr int x_stage_bytes(int mt) { return 16 * mt * kBK * 2; }
CAT_HD constexpr int packed_stage_words(int bits) { return kWarps * kBlocksPerStep * bits * 16; }
CAT_HD constexpr int stage_bytes(int mt, int bits) {
  return x_stage_bytes(mt) + packed_stage_words(bits) * 4 + kMetaBytes;
}
CAT_HD constexpr int smem_bytes(int mt, int bits) { return stages_for(mt) * stage_bytes(mt, bits); }
// Byte offsets inside one stage: [x tile][packed words][scales f32 [2][64]][zero pairs u32 [2][64]]
CAT_HD constexpr int packed_off(int mt) { return x_stage_bytes(mt); }
CAT_HD constexpr int scale_off(int mt, int bits) { return packed_off(mt) + packed_stage_words(bits) * 4; }
CAT_HD constexpr int zero_off(int mt, int bits) { return scale_off(mt, bits) + kBlocksPerStep * kBN * 4; }

// Stage ring: local k-step li (0 = the split's first) lives in slot li % stages.
CAT_HD int slot_of(int64_t li, int stages) { return static_cast<int>(li % stages); }

// ------------------------------------------------------------------ x tile

// x tile [16 MT][64] 16-bit, rows of 128 bytes = 8 chunks of 16 bytes; chunk c of row r is stored
// at chunk position c ^ (r % 8), so the 8 rows one ldmatrix phase reads hit 8 different bank
// groups (no padding needed).
CAT_HD int x_swizzle(int row, int col) {
  return row * kBK + ((((col >> 3) ^ row) & 7) << 3) + (col & 7);
}
// 16-byte chunk `c` of a stage's x tile (cp.async loop: c = tid + i * kThreads): (row, col).
struct XChunk {
  int row, col;
};
CAT_HD XChunk x_chunk(int c) { return {c >> 3, (c & 7) * 8}; }
CAT_HD constexpr int x_chunks(int mt) { return 16 * mt * 8; }
// Source of thread tid's chunk i (c = tid + i * kThreads) at k-step column k0: element offset
// x_src0(tid, m0, k) + i * x_src_stride(k) + k0 into x [M, K] (kThreads is a multiple of 8 rows'
// chunks, so every i has the same column and rows kThreads / 8 apart).
CAT_HD int64_t x_src0(int tid, int64_t m0, int64_t k) {
  const XChunk q = x_chunk(tid);
  return (m0 + q.row) * k + q.col;
}
CAT_HD int64_t x_src_stride(int64_t k) { return int64_t(kThreads / 8) * k; }

// ldmatrix.x4 row address for lane `lane`, M fragment `mf`, 16-column slice `ks` (0..3) of the
// stage: matrices 0..3 = (rows 0-7, cols 0-7), (rows 8-15, cols 0-7), (rows 0-7, cols 8-15),
// (rows 8-15, cols 8-15), i.e. A registers 0..3 in the mma's order.
struct XAddr {
  int row, col;
};
CAT_HD XAddr ldsm_a(int lane, int mf, int ks) {
  return {mf * 16 + (lane & 15), ks * 16 + ((lane >> 4) << 3)};
}

// ------------------------------------------------------------------ packed codes

// A stage holds, for the CTA's 4 packed tiles (warp w <-> tile n0 / 16 + w) and its 2 blocks,
// the words in the global order [tile][block][word][row]: per tile 2 * bits * 16 contiguous
// words in global memory too (format.md), so the copy is an identity of 16-byte chunks.
CAT_HD int packed_word(int warp, int bl, int word, int row, int bits) {
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
CAT_HD constexpr int packed_units(int bits, int bytes) { return packed_stage_words(bits) * 4 / bytes; }
CAT_HD constexpr int64_t packed_step_words(int bits) { return int64_t(kBlocksPerStep) * bits * 16; }
CAT_HD PackedCopy packed_copy(int u, int bytes, int bits, int64_t tile0, int64_t n_tiles, int64_t n_blocks) {
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

// ------------------------------------------------------------------ per-stage metadata

// Thread `tid` loads the scale and zero point of (CTA row tid % 64, block tid / 64) of a stage.
struct MetaSlot {
  int row, bl;
};
CAT_HD MetaSlot meta_slot(int tid) { return {tid & (kBN - 1), tid >> 6}; }
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
CAT_HD MetaRow meta_row(int64_t row, int64_t n_groups, int bits) {
  const int64_t zw = decode::zero_row_words(n_groups, bits);
  return {row * n_groups, (row / 16) * zw * 16 + row % 16};
}
// Source of (row, block b in group g); valid only for rows < n and blocks < b_end.
CAT_HD MetaSrc meta_src(const MetaRow& r, bool row_ok, int64_t b, int64_t g, int64_t b_end, int bits) {
  MetaSrc m{false, 0, 0, -1, 0};
  if (!row_ok || b >= b_end) return m;
  m.valid = true;
  m.scale = r.scale0 + g;
  // decode::stream_pos(g, bits), spelled out: in this form ptxas schedules the k-loop better
  const int64_t pos = int64_t(bits) * g, wi = pos >> 5;
  m.zoff = static_cast<int>(pos & 31);
  m.zlo = r.zero0 + wi * 16;
  if (m.zoff + bits > 32) m.zhi = r.zero0 + (wi + 1) * 16;
  return m;
}
// Walks blocks in order without a division per block: the group of the current block and how
// many of its blocks remain (this one included). One division at start.
struct GroupCursor {
  int64_t g, left, bpg;
  CAT_HD void start(int64_t b, int64_t blocks_per_group) {
    bpg = blocks_per_group;
    g = b / bpg;
    left = bpg - b % bpg;
  }
  CAT_HD void next() {
    if (--left == 0) {
      ++g;
      left = bpg;
    }
  }
  CAT_HD bool last_in_group() const { return left == 1; }
};
// The kernel's flush test for block b (cursor on b): the group_ends rule below, incrementally.
CAT_HD bool flush_after(const GroupCursor& c, int64_t b, int64_t b_end) {
  return b + 1 == b_end || c.last_in_group();
}

// After block b the group's partial sums are scaled and folded into the totals when b is the
// last block of its group, of the matrix, or of this split (a split may cut a group in two: each
// part is scaled by the same s, the parts meet in the split-K reduction).
CAT_HD bool group_ends(int64_t b, int64_t group_size, int64_t b_end) {
  return b + 1 == b_end || ((b + 1) * 32) % group_size == 0;
}

// ------------------------------------------------------------------ C fragment and epilogue

struct CPos {
  int row, col;
};
// Accumulator i (0..3) of lane `lane` in M fragment mf, N fragment nf of warp `warp`: its
// (row, col) in the CTA's output tile.
CAT_HD CPos c_pos(int lane, int warp, int mf, int nf, int i) {
  return {mf * 16 + (lane >> 2) + 8 * (i >> 1), warp * 16 + nf * 8 + 2 * (lane & 3) + (i & 1)};
}
// W row (in the CTA tile) whose codes lane `lane` decodes for N fragment nf: n = g.
CAT_HD int b_row(int lane, int nf) { return nf * 8 + (lane >> 2); }

// ------------------------------------------------------------------ split plan (host)

struct Plan {
  int mt = 2;
  int splits = 1;
  int64_t per_split = 0;  // k-steps (64 columns) per split
};
// Enough CTAs for ~2 per SM on a 132-SM part, at least `stages` k-steps per split (so the
// pipeline fills), at most 32 splits.
inline Plan plan(int64_t m, int64_t n, int64_t k) {
  Plan p;
  p.mt = mt_for(m);
  const int64_t steps = decode::cdiv(k, kBK);
  const int64_t ctas = decode::cdiv(n, kBN) * decode::cdiv(m, 16 * p.mt);
  int64_t want = decode::cdiv(264, ctas);
  const int64_t min_steps = stages_for(p.mt);
  want = want < steps / min_steps ? want : steps / min_steps;
  want = want < 32 ? want : 32;
  want = want > 1 ? want : 1;
  p.per_split = decode::cdiv(steps, want);
  p.splits = static_cast<int>(decode::cdiv(steps, p.per_split));
  return p;
}

}  // namespace tiled_v2
}  // namespace cat
