// The v2 tiled CUDA kernel (csrc/cuda/gemm_tiled_v2.cu): every CTA of the grid, every warp,
// lane and pipeline stage, with the kernel's own index functions (tiled_v2_math.h) and decode
// (decode.h), and independent models of the hardware written from the PTX ISA (cp.async with
// zero fill and deferred completion, ldmatrix.x4 here; the mma in model.h). It also checks, as
// it goes:
//   - every shared-memory byte the compute reads was written for that k-step (slots are
//     poisoned before each refill; every slot carries the k-step it holds);
//   - no copy still in flight targets the slot being read;
//   - every global read is inside its array;
//   - the fragment maps are bijections onto their tiles;
//   - every output is stored exactly once per split.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "cuda/tiled_v2_math.h"
#include "model.h"

namespace emu {
namespace {

namespace tv2 = cat::tiled_v2;

// ------------------------------------------------------------------ hardware models (PTX ISA)

// ldmatrix.sync.aligned.m8n8.x4.shared.b16: lanes 8 i .. 8 i + 7 give the addresses (element
// offsets) of the 8 rows of matrix i; lane l receives in register i the elements
// 2 (l % 4), 2 (l % 4) + 1 of row l / 4 of matrix i.
void ldmatrix_x4(const std::vector<uint8_t>& smem, int x_base_byte, const int (&addr)[32],
                        uint32_t (&out)[32][4], const std::vector<int64_t>& tag, int64_t want) {
  for (int i = 0; i < 4; ++i)
    for (int l = 0; l < 32; ++l) {
      const int row = l >> 2, e0 = 2 * (l & 3);
      const int a = addr[8 * i + row];
      REQUIRE(a >= 0 && a + 8 <= 16 * 8 * 64, "ldmatrix row outside the x tile");
      REQUIRE((a & 7) == 0, "ldmatrix row address not 16-byte aligned");
      uint16_t v[2];
      for (int e = 0; e < 2; ++e) {
        const int byte = x_base_byte + 2 * (a + e0 + e);
        REQUIRE(tag[byte] == want, "ldmatrix reads x bytes not written for this k-step");
        std::memcpy(&v[e], &smem[byte], 2);
      }
      out[l][i] = uint32_t(v[0]) | (uint32_t(v[1]) << 16);
    }
}

// D = A B + C for one warp: the exact product (model.h), rounded once to fp32 when added (the
// hardware adds with at least fp32 precision).
void mma_m16n8k16(float (&c)[32][4], const uint32_t (&a)[32][4], const uint32_t (&b)[32][2], bool bf16) {
  double d[16][8];
  mma_exact(a, b, bf16, d);
  for (int l = 0; l < 32; ++l)
    for (int i = 0; i < 4; ++i) {
      int row, col;
      c_elem(l, i, row, col);
      c[l][i] = static_cast<float>(static_cast<double>(c[l][i]) + d[row][col]);
    }
}

// ------------------------------------------------------------------ one CTA

struct Copy {  // a cp.async in flight
  int dst_byte, bytes;
  std::vector<uint8_t> data;  // zero-filled when src-size was 0
  int64_t step;
};

template <int BITS, bool BF16, int MT>
struct Cta {
  static constexpr int S = tv2::stages_for(MT);
  static constexpr int kStage = tv2::stage_bytes(MT, BITS);
  const Problem& P;
  const tv2::Plan& plan;
  std::vector<float>& ws;      // [splits, m, n]
  std::vector<int>& written;   // [splits, m, n]
  std::vector<uint8_t> smem;
  std::vector<int64_t> tag;    // per smem byte: the local k-step whose data it holds (-1: poison)
  std::vector<std::vector<Copy>> groups;  // committed cp.async groups, oldest first
  std::vector<Copy> open;                 // issued, not yet committed

  Cta(const Problem& p, const tv2::Plan& pl, std::vector<float>& w, std::vector<int>& wr)
      : P(p), plan(pl), ws(w), written(wr), smem(S * kStage), tag(S * kStage, -2) {}

  void write(int byte, const void* src, int bytes, int64_t li) {
    REQUIRE(byte >= 0 && byte + bytes <= S * kStage, "shared-memory write out of range");
    std::memcpy(&smem[byte], src, bytes);
    for (int i = 0; i < bytes; ++i) tag[byte + i] = li;
  }
  void cp_async(int dst_byte, const void* src, int bytes, bool valid, int64_t li) {
    Copy c{dst_byte, bytes, std::vector<uint8_t>(bytes, 0), li};
    if (valid) std::memcpy(c.data.data(), src, bytes);
    open.push_back(std::move(c));
  }
  void commit() {
    groups.push_back(std::move(open));
    open.clear();
  }
  void wait_group(int n) {  // complete all but the newest n groups (latest legal landing time)
    while (static_cast<int>(groups.size()) > n) {
      for (const Copy& c : groups.front()) write(c.dst_byte, c.data.data(), c.bytes, c.step);
      groups.erase(groups.begin());
    }
  }
  void poison_slot(int slot) {
    for (int i = 0; i < kStage; ++i) {
      smem[slot * kStage + i] = 0xA5;
      tag[slot * kStage + i] = -1;
    }
  }

  void run(int64_t n0, int64_t m0, int split) {
    const int64_t tile0 = n0 / 16;
    const int64_t steps = (P.k + tv2::kBK - 1) / tv2::kBK;
    const int64_t s_begin = int64_t(split) * plan.per_split;
    const int64_t nsteps = std::min(s_begin + plan.per_split, steps) - s_begin;
    REQUIRE(nsteps >= 1, "a split with no k-step");
    const int64_t b_end = std::min((s_begin + nsteps) * tv2::kBlocksPerStep, P.n_blocks);
    const bool xvec = P.k % 8 == 0 && P.x_vec_ok;
    const bool fast = xvec && P.aligned16;
    const int64_t bpg = dec::blocks_per_group(P.group_size, P.n_blocks);

    auto issue = [&](int64_t li) {
      if (li >= nsteps) return;
      const int slot = tv2::slot_of(li, S);
      poison_slot(slot);  // the slot's previous contents must never be read again
      const int st = slot * kStage;
      const int64_t step = s_begin + li, k0 = step * tv2::kBK;
      for (int tid = 0; tid < tv2::kThreads; ++tid) {
        if (fast) {
          const tv2::XChunk xc0 = tv2::x_chunk(tid);
          const bool col_ok = k0 + xc0.col < P.k;
          for (int i = 0; i < tv2::x_chunks(MT) / tv2::kThreads; ++i) {
            const tv2::XChunk q = tv2::x_chunk(tid + i * tv2::kThreads);
            const bool ok = col_ok && m0 + q.row < P.m;
            const int64_t src = tv2::x_src0(tid, m0, P.k) + i * tv2::x_src_stride(P.k) + k0;
            if (ok) REQUIRE(src >= 0 && src + 8 <= P.m * P.k, "x chunk read outside x");
            cp_async(st + 2 * tv2::x_swizzle(q.row, q.col), ok ? &P.x[src] : nullptr, 16, ok, li);
          }
          const int units = tv2::packed_units(BITS, 16);
          for (int i = 0; i < (units + tv2::kThreads - 1) / tv2::kThreads; ++i) {
            if (tid + i * tv2::kThreads >= units) break;
            const tv2::PackedCopy p =
                tv2::packed_copy(std::min(tid + i * tv2::kThreads, units - 1), 16, BITS, tile0, P.n_tiles, P.n_blocks);
            const bool ok = p.tile_ok && step * tv2::kBlocksPerStep + p.bl < P.n_blocks;
            const int64_t src = p.gmem_word0 + step * tv2::packed_step_words(BITS);
            if (ok) REQUIRE(src >= 0 && src + 4 <= int64_t(P.packed.size()), "packed read outside packed");
            cp_async(st + tv2::packed_off(MT) + 4 * p.smem_word, ok ? &P.packed[src] : nullptr, 16, ok, li);
          }
        } else {
          for (int e = tid; e < 16 * MT * tv2::kBK; e += tv2::kThreads) {
            const int r = e / tv2::kBK, c = e % tv2::kBK;
            const int64_t row = m0 + r, col = k0 + c;
            const uint16_t v = (row < P.m && col < P.k) ? P.x[row * P.k + col] : 0;
            write(st + 2 * tv2::x_swizzle(r, c), &v, 2, li);
          }
          for (int u = tid; u < tv2::packed_units(BITS, 4); u += tv2::kThreads) {
            const tv2::PackedCopy p = tv2::packed_copy(u, 4, BITS, tile0, P.n_tiles, P.n_blocks);
            const bool ok = p.tile_ok && step * tv2::kBlocksPerStep + p.bl < P.n_blocks;
            const int64_t src = p.gmem_word0 + step * tv2::packed_step_words(BITS);
            if (ok) REQUIRE(src >= 0 && src + 1 <= int64_t(P.packed.size()), "packed read outside packed");
            cp_async(st + tv2::packed_off(MT) + 4 * p.smem_word, ok ? &P.packed[src] : nullptr, 4, ok, li);
          }
        }
      }
    };
    struct Raw {
      uint32_t s = 0, zlo = 0, zhi = 0;
      int zoff = 0;
      bool valid = false;
    };
    std::vector<tv2::GroupCursor> mcur(tv2::kThreads);
    for (int tid = 0; tid < tv2::kThreads; ++tid) mcur[tid].start(s_begin * tv2::kBlocksPerStep + tv2::meta_slot(tid).bl, bpg);
    auto meta_of = [&](int tid, int64_t li) {
      const tv2::MetaSlot ms = tv2::meta_slot(tid);
      const int64_t row = n0 + ms.row, b = (s_begin + li) * tv2::kBlocksPerStep + ms.bl;
      const tv2::MetaSrc src = tv2::meta_src(tv2::meta_row(row, P.n_groups, BITS), row < P.n, b, mcur[tid].g, b_end, BITS);
      for (int i = 0; i < tv2::kBlocksPerStep; ++i) mcur[tid].next();
      Raw r;
      r.valid = src.valid;
      r.zoff = src.zoff;
      if (!src.valid) return r;
      REQUIRE(src.scale >= 0 && src.scale < int64_t(P.scales.size()), "scale read outside scales");
      r.s = P.scales[src.scale];
      if (P.has_zeros) {
        REQUIRE(src.zlo >= 0 && src.zlo < int64_t(P.zeros.size()), "zero read outside zeros");
        r.zlo = static_cast<uint32_t>(P.zeros[src.zlo]);
        if (src.zhi >= 0) {
          REQUIRE(src.zhi < int64_t(P.zeros.size()), "zero read outside zeros");
          r.zhi = static_cast<uint32_t>(P.zeros[src.zhi]);
        }
      }
      return r;
    };
    auto put_meta = [&](int tid, int64_t li, const Raw& r) {
      if (li >= nsteps) return;
      const tv2::MetaSlot ms = tv2::meta_slot(tid);
      const int st = tv2::slot_of(li, S) * kStage;
      const int i = ms.bl * tv2::kBN + ms.row;
      float s = 0.f;
      uint32_t z = 0;
      if (r.valid) {
        s = dec::scale_from_raw(r.s, P.scale_dtype);
        z = P.has_zeros ? dec::field(r.zlo, r.zhi, r.zoff, BITS) : (1u << (BITS - 1));
      }
      const uint32_t zop = dec::zero_operand<BITS, BF16>(z);
      write(st + tv2::scale_off(MT, BITS) + 4 * i, &s, 4, li);
      write(st + tv2::zero_off(MT, BITS) + 4 * i, &zop, 4, li);
    };
    tv2::GroupCursor cur;
    cur.start(s_begin * tv2::kBlocksPerStep, bpg);

    // Prologue, as in the kernel.
    for (int li = 0; li < S - 1; ++li) {
      issue(li);
      commit();
      if (li < S - 2)
        for (int tid = 0; tid < tv2::kThreads; ++tid) put_meta(tid, li, meta_of(tid, li));
    }
    std::vector<Raw> pending(tv2::kThreads);
    for (int tid = 0; tid < tv2::kThreads; ++tid) pending[tid] = meta_of(tid, S - 2);

    static float acc[tv2::kWarps][MT][2][32][4], part[tv2::kWarps][MT][2][32][4];
    std::memset(acc, 0, sizeof(acc));
    std::memset(part, 0, sizeof(part));

    for (int64_t li = 0; li < nsteps; ++li) {
      wait_group(S - 2);
      // __syncthreads()
      for (int tid = 0; tid < tv2::kThreads; ++tid) put_meta(tid, li + S - 2, pending[tid]);
      issue(li + S - 1);
      commit();
      for (int tid = 0; tid < tv2::kThreads; ++tid) pending[tid] = meta_of(tid, li + S - 1);

      const int slot = tv2::slot_of(li, S);
      const int st = slot * kStage;
      for (const auto& g : groups)
        for (const Copy& c : g)
          REQUIRE(c.dst_byte + c.bytes <= st || c.dst_byte >= st + kStage,
                  "a copy in flight targets the slot being read");

      auto read_u32 = [&](int byte) {
        REQUIRE(byte >= st && byte + 4 <= st + kStage, "read outside the k-step's slot");
        for (int i = 0; i < 4; ++i) REQUIRE(tag[byte + i] == li, "read of bytes not written for this k-step");
        uint32_t v;
        std::memcpy(&v, &smem[byte], 4);
        return v;
      };
      for (int bl = 0; bl < tv2::kBlocksPerStep; ++bl) {
        const int64_t b = (s_begin + li) * tv2::kBlocksPerStep + bl;
        if (b >= b_end) break;
        const bool flush = tv2::flush_after(cur, b, b_end);
        REQUIRE(flush == tv2::group_ends(b, P.group_size, b_end), "group cursor disagrees with group_ends");
        cur.next();
        for (int warp = 0; warp < tv2::kWarps; ++warp) {
          // B registers of every lane, decoded with the kernel's decode from a copy of the block
          // (after checking that the lane only reads words written for this k-step).
          const int blk_byte = st + tv2::packed_off(MT) + 4 * tv2::packed_word(warp, bl, 0, 0, BITS);
          uint32_t blk[8 * 16];
          for (int w = 0; w < BITS * 16; ++w) blk[w] = read_u32(blk_byte + 4 * w);
          uint32_t bf[2][32][4];
          for (int lane = 0; lane < 32; ++lane)
            for (int f = 0; f < 2; ++f) {
              const int r = tv2::b_row(lane, f);
              const uint32_t zop = read_u32(st + tv2::zero_off(MT, BITS) + 4 * (bl * tv2::kBN + warp * 16 + r));
              for (int j = 0; j < 4; ++j) bf[f][lane][j] = dec::tiled_decode<BITS, BF16>(blk, r, j, lane & 3, zop);
            }
          for (int h = 0; h < 2; ++h)
            for (int mf = 0; mf < MT; ++mf) {
              int addr[32];
              for (int lane = 0; lane < 32; ++lane) {
                const tv2::XAddr xa = tv2::ldsm_a(lane, mf, bl * 2 + h);
                addr[lane] = tv2::x_swizzle(xa.row, xa.col);
              }
              uint32_t af[32][4];
              ldmatrix_x4(smem, st, addr, af, tag, li);
              for (int f = 0; f < 2; ++f) {
                uint32_t bb[32][2];
                for (int lane = 0; lane < 32; ++lane) {
                  bb[lane][0] = bf[f][lane][2 * h];
                  bb[lane][1] = bf[f][lane][2 * h + 1];
                }
                mma_m16n8k16(part[warp][mf][f], af, bb, BF16);
              }
            }
          if (flush) {
            for (int lane = 0; lane < 32; ++lane) {
              float s[2][2];
              for (int f = 0; f < 2; ++f)
                for (int e = 0; e < 2; ++e) {
                  const uint32_t u = read_u32(st + tv2::scale_off(MT, BITS) +
                                              4 * (bl * tv2::kBN + tv2::c_pos(lane, warp, 0, f, e).col));
                  std::memcpy(&s[f][e], &u, 4);
                }
              for (int mf = 0; mf < MT; ++mf)
                for (int f = 0; f < 2; ++f)
                  for (int e = 0; e < 4; ++e) {
                    acc[warp][mf][f][lane][e] = std::fma(s[f][e & 1], part[warp][mf][f][lane][e],
                                                         acc[warp][mf][f][lane][e]);
                    part[warp][mf][f][lane][e] = 0.f;
                  }
            }
          }
        }
      }
    }
    wait_group(0);

    for (int warp = 0; warp < tv2::kWarps; ++warp)
      for (int lane = 0; lane < 32; ++lane)
        for (int mf = 0; mf < MT; ++mf)
          for (int f = 0; f < 2; ++f)
            for (int e = 0; e < 4; ++e) {
              const tv2::CPos p = tv2::c_pos(lane, warp, mf, f, e);
              const int64_t row = m0 + p.row, col = n0 + p.col;
              if (row < P.m && col < P.n) {
                const int64_t i = (int64_t(split) * P.m + row) * P.n + col;
                ws[i] = acc[warp][mf][f][lane][e];
                ++written[i];
              }
            }
  }
};

template <int BITS, bool BF16, int MT>
void run_grid(const Problem& P, const tv2::Plan& plan, std::vector<float>& y_raw) {
  std::vector<float> ws(size_t(plan.splits) * P.m * P.n, 0.f);
  std::vector<int> written(ws.size(), 0);
  const int64_t bm = 16 * MT;
  for (int64_t nt = 0; nt * tv2::kBN < P.n; ++nt)
    for (int64_t mt = 0; mt * bm < P.m; ++mt)
      for (int split = 0; split < plan.splits; ++split) {
        Cta<BITS, BF16, MT> cta(P, plan, ws, written);
        cta.run(nt * tv2::kBN, mt * bm, split);
      }
  for (size_t i = 0; i < written.size(); ++i) REQUIRE(written[i] == 1, "an output not stored exactly once");
  // split-K reduction in split order (gemm.cu's reduce_kernel)
  const int64_t mn = P.m * P.n;
  for (int64_t i = 0; i < mn; ++i) {
    float v = ws[i];
    for (int s = 1; s < plan.splits; ++s) v += ws[s * mn + i];
    y_raw[i] = v;
  }
}

// ------------------------------------------------------------------ piecewise checks

// Code of column v of a block from its `bits` words, straight from docs/format.md (one bit stream
// per block, value v at stream bits [bits v, bits v + bits)).
uint32_t ref_code(const uint32_t* words_of_row_stride16, int row, int bits, int v) {
  uint32_t q = 0;
  for (int i = 0; i < bits; ++i) {
    const int bit = bits * v + i;
    q |= ((words_of_row_stride16[(bit / 32) * 16 + row] >> (bit % 32)) & 1u) << i;
  }
  return q;
}

template <int BITS, bool BF16>
void check_decode(uint64_t& rng) {
  auto next = [&]() {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return static_cast<uint32_t>(rng);
  };
  uint32_t blk[8 * 16];
  for (int trial = 0; trial < 64; ++trial) {
    for (int i = 0; i < BITS * 16; ++i) blk[i] = next();
    if (trial == 0)
      for (int i = 0; i < BITS * 16; ++i) blk[i] = 0xFFFFFFFFu;  // all codes at their maximum
    for (uint32_t z = 0; z < (1u << BITS); ++z) {
      const uint32_t zop = dec::zero_operand<BITS, BF16>(z);
      for (int row = 0; row < 16; ++row)
        for (int j = 0; j < 4; ++j)
          for (int t = 0; t < 4; ++t) {
            const uint32_t d = dec::tiled_decode<BITS, BF16>(blk, row, j, t, zop);
            for (int e = 0; e < 2; ++e) {
              const int v = dec::pair_value(j, t) + e;
              const float want = float(int(ref_code(blk, row, BITS, v)) - int(z));
              const float got = dec::h16_to_float(static_cast<uint16_t>(d >> (16 * e)), BF16);
              REQUIRE(got == want, "tiled_decode: wrong (q - z) for bits " + std::to_string(BITS) +
                                       (BF16 ? " bf16" : " f16") + " v " + std::to_string(v));
            }
          }
    }
  }
  // the lanes' pairs of one k16 slice cover the B fragment exactly: v = 16 h + k
  for (int h = 0; h < 2; ++h) {
    int seen[16] = {};
    for (int l = 0; l < 32; ++l)
      for (int r = 0; r < 2; ++r)
        for (int e = 0; e < 2; ++e) {
          int k, n;
          b_elem(l, r, e, k, n);
          const int v = dec::pair_value(2 * h + r, l & 3) + e;
          REQUIRE(v == 16 * h + k, "decode pair does not match the B fragment's k");
          REQUIRE(tv2::b_row(l, 0) == n && tv2::b_row(l, 1) == 8 + n, "b_row does not match the B fragment's n");
          if (l < 4) ++seen[k];
        }
    for (int k = 0; k < 16; ++k) REQUIRE(seen[k] == 1, "B k coverage");
  }
}

template <int MT>
void check_x_maps() {
  const int rows = 16 * MT, elems = rows * tv2::kBK;
  std::vector<int> hit(elems, 0);
  for (int r = 0; r < rows; ++r)
    for (int c = 0; c < tv2::kBK; ++c) {
      const int o = tv2::x_swizzle(r, c);
      REQUIRE(o >= 0 && o < elems, "x_swizzle out of the tile");
      ++hit[o];
      if (c % 8) REQUIRE(o == tv2::x_swizzle(r, c - c % 8) + c % 8, "x_swizzle splits a 16-byte chunk");
    }
  for (int i = 0; i < elems; ++i) REQUIRE(hit[i] == 1, "x_swizzle is not a bijection");
  std::vector<int> chunk(rows * 8, 0);
  for (int c = 0; c < tv2::x_chunks(MT); ++c) {
    const tv2::XChunk q = tv2::x_chunk(c);
    REQUIRE(q.row >= 0 && q.row < rows && q.col % 8 == 0 && q.col < tv2::kBK, "x_chunk out of the tile");
    ++chunk[q.row * 8 + q.col / 8];
  }
  for (int i = 0; i < rows * 8; ++i) REQUIRE(chunk[i] == 1, "x chunks do not cover the tile once");
  // ldmatrix: A fragments come out right, and each 8-lane phase hits 8 distinct bank groups.
  std::vector<uint8_t> smem(size_t(elems) * 2);
  std::vector<int64_t> tag(smem.size(), 0);
  for (int r = 0; r < rows; ++r)
    for (int c = 0; c < tv2::kBK; ++c) {
      const uint16_t v = static_cast<uint16_t>(r * 64 + c);
      std::memcpy(&smem[2 * tv2::x_swizzle(r, c)], &v, 2);
    }
  for (int mf = 0; mf < MT; ++mf)
    for (int ks = 0; ks < 4; ++ks) {
      int addr[32];
      for (int l = 0; l < 32; ++l) {
        const tv2::XAddr a = tv2::ldsm_a(l, mf, ks);
        addr[l] = tv2::x_swizzle(a.row, a.col);
      }
      for (int ph = 0; ph < 4; ++ph) {
        int banks = 0;
        for (int i = 0; i < 8; ++i) banks |= 1 << ((addr[8 * ph + i] * 2 / 16) % 8);
        REQUIRE(banks == 0xFF, "ldmatrix phase has a bank conflict");
      }
      uint32_t out[32][4];
      ldmatrix_x4(smem, 0, addr, out, tag, 0);
      for (int l = 0; l < 32; ++l)
        for (int r = 0; r < 4; ++r)
          for (int e = 0; e < 2; ++e) {
            int row, col;
            a_elem(l, r, e, row, col);
            const uint16_t want = static_cast<uint16_t>((mf * 16 + row) * 64 + ks * 16 + col);
            REQUIRE(static_cast<uint16_t>(out[l][r] >> (16 * e)) == want, "ldmatrix A fragment mismatch");
          }
    }
}

template <int BITS>
void check_packed_map() {
  for (int bytes : {16, 4}) {
    std::vector<int> hit(tv2::packed_stage_words(BITS), 0);
    const int64_t n_tiles = 7, n_blocks = 5, tile0 = 4;  // tile 7 and block 5 do not exist
    for (int64_t step : {0, 1, 2}) {
      for (int u = 0; u < tv2::packed_units(BITS, bytes); ++u) {
        const tv2::PackedCopy p = tv2::packed_copy(u, bytes, BITS, tile0, n_tiles, n_blocks);
        for (int w = 0; w < bytes / 4; ++w) {
          const int sw = p.smem_word + w;
          if (step == 0) ++hit[sw];
          const int row = sw % 16, word = (sw / 16) % BITS, bl = (sw / (16 * BITS)) % 2, warp = sw / (32 * BITS);
          REQUIRE(tv2::packed_word(warp, bl, word, row, BITS) == sw, "packed_word disagrees with the copy");
          REQUIRE(p.warp == warp && p.bl == bl, "packed copy unit spans two tiles or blocks");
          const int64_t t = tile0 + warp, b = step * 2 + bl;
          REQUIRE(p.gmem_word0 + step * tv2::packed_step_words(BITS) + w == ((t * n_blocks + b) * BITS + word) * 16 + row,
                  "packed copy source");
          REQUIRE(p.tile_ok == (t < n_tiles), "packed copy tile validity");
        }
      }
    }
    for (int x : hit) REQUIRE(x == 1, "packed copies do not cover the stage once");
  }
  // x sources: thread tid's chunk i
  for (int64_t k : {8, 64, 1000})
    for (int tid = 0; tid < tv2::kThreads; ++tid)
      for (int i = 0; i < 8; ++i) {
        const tv2::XChunk q = tv2::x_chunk(tid + i * tv2::kThreads);
        REQUIRE(tv2::x_src0(tid, 48, k) + i * tv2::x_src_stride(k) == (48 + q.row) * k + q.col, "x chunk source");
      }
}

void check_c_and_groups() {
  for (int l = 0; l < 32; ++l)
    for (int i = 0; i < 4; ++i) {
      int row, col;
      c_elem(l, i, row, col);
      const tv2::CPos p = tv2::c_pos(l, 3, 2, 1, i);
      REQUIRE(p.row == 32 + row && p.col == 48 + 8 + col, "c_pos disagrees with the C fragment");
    }
  // scales read at the flush: the lane's C columns (e = i & 1)
  for (int l = 0; l < 32; ++l)
    for (int i = 0; i < 4; ++i) REQUIRE(tv2::c_pos(l, 0, 0, 0, i & 1).col == tv2::c_pos(l, 0, 0, 0, i).col, "scale column");
  // group flushes: between two flushes every block is in one group, and every group ends with one
  for (int64_t k : {32, 96, 100, 257, 640, 2048}) {
    const int64_t nb = (k + 31) / 32;
    std::vector<int64_t> gss = {-1};
    for (int64_t g = 32; g <= k; g += 32)
      if (k % g == 0) gss.push_back(g);
    for (int64_t gs0 : gss) {
      const int64_t gs = gs0 == -1 ? k : gs0;
      for (int64_t per : {1, 2, 3, 7}) {  // split boundaries every `per` k-steps
        for (int64_t s0 = 0; s0 * 2 < nb; s0 += per) {
          const int64_t b_end = std::min((s0 + per) * 2, nb);
          int64_t run_group = -1;
          tv2::GroupCursor cur;
          cur.start(s0 * 2, dec::blocks_per_group(gs, nb));
          for (int64_t b = s0 * 2; b < b_end; ++b) {
            REQUIRE(cur.g == dec::group_of(b, gs), "group cursor: wrong group");
            REQUIRE(tv2::flush_after(cur, b, b_end) == tv2::group_ends(b, gs, b_end), "group cursor: wrong flush");
            cur.next();
            const int64_t g = dec::group_of(b, gs);
            REQUIRE(g >= 0 && g < (gs0 == -1 ? 1 : k / gs), "group_of out of range");
            REQUIRE(g == (32 * b) / gs, "group_of");
            if (run_group >= 0) REQUIRE(g == run_group, "a flush-free run crosses a group boundary");
            run_group = g;
            const bool last_of_group = b + 1 == nb || dec::group_of(b + 1, gs) != g;
            if (last_of_group || b + 1 == b_end) REQUIRE(tv2::group_ends(b, gs, b_end), "a group part ends without a flush");
            if (tv2::group_ends(b, gs, b_end)) run_group = -1;
          }
          REQUIRE(run_group == -1, "split ends without a flush");
        }
      }
    }
  }
  // plan: splits cover K; M buckets
  for (int64_t m : {9, 16, 17, 32, 33, 64, 65, 128, 129, 300, 5000})
    for (int64_t n : {1, 50, 64, 4096, 28672})
      for (int64_t k : {1, 31, 64, 100, 4096, 11008}) {
        const tv2::Plan p = tv2::plan(m, n, k);
        const int64_t steps = (k + 63) / 64;
        REQUIRE(p.splits >= 1 && p.splits <= 32 && p.per_split >= 1, "plan ranges");
        REQUIRE((p.splits - 1) * p.per_split < steps && p.splits * p.per_split >= steps, "plan coverage");
        REQUIRE(16 * p.mt >= std::min<int64_t>(m, 128) || m > 128, "plan: M tile below min(M, 128)");
      }
}

void check_meta_src() {
  // zero points and scales against format.md, for a few stream layouts
  for (int bits : {2, 3, 4, 8})
    for (int64_t ng : {1, 3, 9, 11, 64}) {
      const int64_t n = 37, zw = (ng * bits + 31) / 32;
      std::vector<uint32_t> zeros(size_t((n + 15) / 16 * zw * 16), 0);
      std::vector<uint32_t> z(size_t(n * ng));
      for (int64_t r = 0; r < n; ++r)
        for (int64_t g = 0; g < ng; ++g) {
          const uint32_t v = static_cast<uint32_t>((r * 7 + g * 13 + 5) % (1 << bits));
          z[r * ng + g] = v;
          for (int i = 0; i < bits; ++i) {
            const int64_t bit = bits * g + i;
            zeros[(r / 16) * zw * 16 + (bit / 32) * 16 + r % 16] |= ((v >> i) & 1u) << (bit % 32);
          }
        }
      const int64_t k = ng * 64, gs = 64, nb = k / 32;
      for (int64_t r = 0; r < n + 3; ++r)
        for (int64_t b = 0; b < nb + 2; ++b) {
          const tv2::MetaSrc s = tv2::meta_src(tv2::meta_row(r, ng, bits), r < n, b, dec::group_of(b, gs), nb, bits);
          REQUIRE(s.valid == (r < n && b < nb), "meta_src validity");
          if (!s.valid) continue;
          REQUIRE(s.scale == r * ng + b / 2, "meta_src scale index");
          const uint32_t lo = zeros.at(size_t(s.zlo)), hi = s.zhi >= 0 ? zeros.at(size_t(s.zhi)) : 0u;
          REQUIRE(dec::field(lo, hi, s.zoff, bits) == z[r * ng + b / 2], "zero point decode");
        }
    }
  // scale storage formats
  REQUIRE(dec::scale_from_raw(0x3C00u, 1) == 1.0f && dec::scale_from_raw(0xC000u, 1) == -2.0f, "f16 scale");
  REQUIRE(dec::scale_from_raw(0x3F80u, 2) == 1.0f && dec::scale_from_raw(0x0001u, 1) == 5.9604644775390625e-08f,
          "bf16 / subnormal f16 scale");
}

}  // namespace

TiledResult tiled_run(const Problem& P) {
  const tv2::Plan plan = tv2::plan(P.m, P.n, P.k);
  const int64_t steps = dec::cdiv(P.k, tv2::kBK);
  REQUIRE(plan.splits >= 1 && plan.splits <= 32, "plan: splits out of range");
  REQUIRE((plan.splits - 1) * plan.per_split < steps && plan.splits * plan.per_split >= steps,
          "plan: splits do not cover K exactly");
  TiledResult r;
  r.splits = plan.splits;
  r.per_split = plan.per_split;
  r.mt = plan.mt;
  r.y_raw.assign(size_t(P.m * P.n), 0.f);
  dec::dispatch_bits_bf16(P.bits, P.bf16, "emulate", [&](auto bits, auto bf16) {
    constexpr int kBits = decltype(bits)::value;
    constexpr bool kBf16 = decltype(bf16)::value;
    if (plan.mt == 2) run_grid<kBits, kBf16, 2>(P, plan, r.y_raw);
    else if (plan.mt == 4) run_grid<kBits, kBf16, 4>(P, plan, r.y_raw);
    else run_grid<kBits, kBf16, 8>(P, plan, r.y_raw);
  });
  return r;
}

void tiled_selftest() {
  uint64_t rng = 0x9E3779B97F4A7C15ull;
  check_decode<2, false>(rng);
  check_decode<3, false>(rng);
  check_decode<4, false>(rng);
  check_decode<8, false>(rng);
  check_decode<2, true>(rng);
  check_decode<3, true>(rng);
  check_decode<4, true>(rng);
  check_decode<8, true>(rng);
  check_x_maps<2>();
  check_x_maps<4>();
  check_x_maps<8>();
  check_packed_map<2>();
  check_packed_map<3>();
  check_packed_map<4>();
  check_packed_map<8>();
  check_c_and_groups();
  check_meta_src();
  // smem budget: fits the sm_86/89 opt-in limit (99 KB) with room for 2 CTAs where it can
  for (int bits : {2, 3, 4, 8})
    for (int mt : {2, 4, 8}) REQUIRE(tv2::smem_bytes(mt, bits) <= 99 * 1024, "shared memory above 99 KB");
}

}  // namespace emu
