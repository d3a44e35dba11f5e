// AVX2 + FMA + F16C kernels: two ymm registers hold the 16 rows of a tile.
// Compiled with -mavx2 -mfma -mf16c; only called after the runtime check in isa.cpp.
#include <immintrin.h>

#include <cstdint>
#include <type_traits>
#include <utility>

#include "common.h"
#include "internal.h"

namespace cat::cpu::detail {
namespace {

struct Ops {
  static constexpr int kMB = 4;  // 4 x 2 accumulators leave room for decode in 16 ymm registers
  static constexpr bool kUnrollValues = true;
  static constexpr int kChains1 = 4;  // accumulator chains at one row of x
  static constexpr bool kScalesT = false;  // scales gathered one by one
  static constexpr bool kPermDecode = false;
  static constexpr bool kPerm8Decode = true;  // perm_lo below (2/3-bit codes)
  struct VI {
    __m256i a, b;
  };
  struct VF {
    __m256 a, b;
  };
  static VI load(const int32_t* p) {
    return {_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)),
            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 8))};
  }
  static VF loadf(const float* p) { return {_mm256_loadu_ps(p), _mm256_loadu_ps(p + 8)}; }
  static void storef(float* p, VF v) {
    _mm256_storeu_ps(p, v.a);
    _mm256_storeu_ps(p + 8, v.b);
  }
  static VF zero() { return {_mm256_setzero_ps(), _mm256_setzero_ps()}; }
  static VF set1(float f) { return {_mm256_set1_ps(f), _mm256_set1_ps(f)}; }
  static VI set1i(int32_t i) { return {_mm256_set1_epi32(i), _mm256_set1_epi32(i)}; }
  static VF bcast(const float* p) {
    const __m256 v = _mm256_broadcast_ss(p);
    return {v, v};
  }
  static VF fma(VF a, VF b, VF c) { return {_mm256_fmadd_ps(a.a, b.a, c.a), _mm256_fmadd_ps(a.b, b.b, c.b)}; }
  static VF add(VF a, VF b) { return {_mm256_add_ps(a.a, b.a), _mm256_add_ps(a.b, b.b)}; }
  static VF sub(VF a, VF b) { return {_mm256_sub_ps(a.a, b.a), _mm256_sub_ps(a.b, b.b)}; }
  static VF mul(VF a, VF b) { return {_mm256_mul_ps(a.a, b.a), _mm256_mul_ps(a.b, b.b)}; }
  static VF cvt(VI a) { return {_mm256_cvtepi32_ps(a.a), _mm256_cvtepi32_ps(a.b)}; }
  static VI and_(VI x, VI y) { return {_mm256_and_si256(x.a, y.a), _mm256_and_si256(x.b, y.b)}; }
  static VI or_(VI x, VI y) { return {_mm256_or_si256(x.a, y.a), _mm256_or_si256(x.b, y.b)}; }
  static VI srl(VI x, int s) {
    const __m128i c = _mm_cvtsi32_si128(s);
    return {_mm256_srl_epi32(x.a, c), _mm256_srl_epi32(x.b, c)};
  }
  static VI sll(VI x, int s) {
    const __m128i c = _mm_cvtsi32_si128(s);
    return {_mm256_sll_epi32(x.a, c), _mm256_sll_epi32(x.b, c)};
  }
  template <int S>
  static VI shift(VI w) {
    if constexpr (S > 0) return {_mm256_srli_epi32(w.a, S), _mm256_srli_epi32(w.b, S)};
    else if constexpr (S < 0) return {_mm256_slli_epi32(w.a, -S), _mm256_slli_epi32(w.b, -S)};
    else return w;
  }
  static VF mant(VI w, VI mask, VI one) {
    return {_mm256_castsi256_ps(_mm256_or_si256(_mm256_and_si256(w.a, mask.a), one.a)),
            _mm256_castsi256_ps(_mm256_or_si256(_mm256_and_si256(w.b, mask.b), one.b))};
  }
  static float h2f(uint16_t h) { return _cvtsh_ss(h); }
  // table[idx & 7] per lane (vpermps; both halves use the same 8-entry table table.a).
  static VF perm_lo(VI idx, VF table) {
    return {_mm256_permutevar8x32_ps(table.a, idx.a), _mm256_permutevar8x32_ps(table.a, idx.b)};
  }
};

#include "kernels_impl.h"

// ---------------------------------------------------------------- int8 x (QWeight::int8_x)
// 2-, 4- and 8-bit weights. A word of 8 rows holds 4 bytes per row; `and 0x0F0F0F0F` after a shift
// by 0 or 4 leaves one code per byte (4-bit: codes 0, 2, 4, 6 of the word, then 1, 3, 5, 7;
// 2-bit: shifts 0, 2, 4, 6 leave codes s, s+4, s+8, s+12), so x is stored in that order
// (quantize_row below) and vpmaddubsw multiplies 32 code/x byte pairs, adding neighbours into
// 16-bit sums: one block's 16 products per lane stay below 2^15 (16 * 15 * 127 = 30480), so they
// are added as int16 and widened once per block by vpmaddwd. 8-bit codes would overflow those
// sums, so each is taken as 16 hi + lo: both nibbles (x in column order) go through vpmaddubsw
// like 4-bit codes, and the two sums meet as int32 (hi times 16). 3-bit weights have no such
// layout here: the float kernels multiply the rounded x for them.

#define CAT_AI inline __attribute__((always_inline))
#define CAT_AIL __attribute__((always_inline))
#define CAT_CV(ic) decltype(ic)::value

// Byte order of x within each word's values for BITS-bit weights: position i of a word's
// values (8 for 4-bit, 16 for 2-bit) holds value kOrder[i].
constexpr int kOrder4[8] = {0, 2, 4, 6, 1, 3, 5, 7};
constexpr int kOrder2[16] = {0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15};

void quantize_row_avx2(const float* row, int64_t nb, int bits, int8_t* q, float* d, float* bsum) {
  int8_t tmp[32];
  for (int64_t b = 0; b < nb; ++b) {
    int32_t sum;
    d[b] = quantize_block_q8(row + b * 32, tmp, &sum);
    bsum[b] = d[b] * static_cast<float>(sum);
    int8_t* out = q + b * 32;
    if (bits == 8) {
      for (int i = 0; i < 32; ++i) out[i] = tmp[i];
    } else if (bits == 4) {
      for (int w = 0; w < 4; ++w)
        for (int i = 0; i < 8; ++i) out[w * 8 + i] = tmp[w * 8 + kOrder4[i]];
    } else {
      for (int w = 0; w < 2; ++w)
        for (int i = 0; i < 16; ++i) out[w * 16 + i] = tmp[w * 16 + kOrder2[i]];
    }
  }
}

template <int BITS, int MB>
__attribute__((noinline)) void run_segments_q8(const int32_t* tile_words, const Segment* segs, int nseg,
                                               const float* sc, const float* zf, const int32_t* xq,
                                               const float* xd, const float* xs, int64_t xs_stride, float* y) {
  constexpr int kPerWord = BITS == 8 ? 1 : 8 / BITS;  // dwords of x per word of codes
  const int g_lo = segs[0].g;
  const __m256i mask = _mm256_set1_epi8(static_cast<char>(BITS == 8 ? 0x0F : (1 << BITS) - 1));
  const __m256i ones = _mm256_set1_epi16(1);
  for (int i = 0; i < nseg; ++i) {
    const Segment seg = segs[i];
    const int32_t* wp = tile_words + static_cast<int64_t>(seg.b0) * BITS * 16;
    __m256 f[MB][2];
    unroll<MB>([&](auto mi) CAT_AIL {
      f[CAT_CV(mi)][0] = _mm256_setzero_ps();
      f[CAT_CV(mi)][1] = _mm256_setzero_ps();
    });
    for (int blk = seg.b0; blk < seg.b1; ++blk, wp += BITS * 16) {
      if constexpr (MB == 1) {
        unroll<BITS>([&](auto li) CAT_AIL {
          __builtin_prefetch(wp + (kPrefetchBlocks * BITS + CAT_CV(li)) * 16, 0, 3);
        });
      }
      const int32_t* xb = xq + static_cast<int64_t>(blk) * 8 * MB;
      __m256i acc[MB][2];
      unroll<MB>([&](auto mi) CAT_AIL {
        acc[CAT_CV(mi)][0] = _mm256_setzero_si256();
        acc[CAT_CV(mi)][1] = _mm256_setzero_si256();
      });
      if constexpr (BITS == 8) {
        // acc: the low nibbles' sums; hi: the high nibbles'
        __m256i hi[MB][2];
        unroll<MB>([&](auto mi) CAT_AIL {
          hi[CAT_CV(mi)][0] = _mm256_setzero_si256();
          hi[CAT_CV(mi)][1] = _mm256_setzero_si256();
        });
        unroll<8>([&](auto wi) CAT_AIL {
          constexpr int w = CAT_CV(wi);
          const __m256i a0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wp + w * 16));
          const __m256i a1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wp + w * 16 + 8));
          const __m256i l0 = _mm256_and_si256(a0, mask), l1 = _mm256_and_si256(a1, mask);
          const __m256i h0 = _mm256_and_si256(_mm256_srli_epi32(a0, 4), mask);
          const __m256i h1 = _mm256_and_si256(_mm256_srli_epi32(a1, 4), mask);
          unroll<MB>([&](auto mi) CAT_AIL {
            constexpr int m = CAT_CV(mi);
            const __m256i xv = _mm256_set1_epi32(xb[w * MB + m]);
            acc[m][0] = _mm256_add_epi16(acc[m][0], _mm256_maddubs_epi16(l0, xv));
            acc[m][1] = _mm256_add_epi16(acc[m][1], _mm256_maddubs_epi16(l1, xv));
            hi[m][0] = _mm256_add_epi16(hi[m][0], _mm256_maddubs_epi16(h0, xv));
            hi[m][1] = _mm256_add_epi16(hi[m][1], _mm256_maddubs_epi16(h1, xv));
          });
        });
        const __m256i sixteen = _mm256_set1_epi16(16);
        unroll<MB>([&](auto mi) CAT_AIL {
          constexpr int m = CAT_CV(mi);
          const __m256 dv = _mm256_broadcast_ss(xd + blk * MB + m);
          for (int h = 0; h < 2; ++h) {
            const __m256i sum = _mm256_add_epi32(_mm256_madd_epi16(hi[m][h], sixteen), _mm256_madd_epi16(acc[m][h], ones));
            f[m][h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum), dv, f[m][h]);
          }
        });
        continue;
      }
      unroll<BITS>([&](auto wi) CAT_AIL {
        constexpr int w = CAT_CV(wi);
        const __m256i a0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wp + w * 16));
        const __m256i a1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wp + w * 16 + 8));
        unroll<kPerWord>([&](auto si) CAT_AIL {
          constexpr int sh = BITS * CAT_CV(si), j = w * kPerWord + CAT_CV(si);
          const __m256i c0 = _mm256_and_si256(sh ? _mm256_srli_epi32(a0, sh) : a0, mask);
          const __m256i c1 = _mm256_and_si256(sh ? _mm256_srli_epi32(a1, sh) : a1, mask);
          unroll<MB>([&](auto mi) CAT_AIL {
            constexpr int m = CAT_CV(mi);
            const __m256i xv = _mm256_set1_epi32(xb[j * MB + m]);
            acc[m][0] = _mm256_add_epi16(acc[m][0], _mm256_maddubs_epi16(c0, xv));
            acc[m][1] = _mm256_add_epi16(acc[m][1], _mm256_maddubs_epi16(c1, xv));
          });
        });
      });
      unroll<MB>([&](auto mi) CAT_AIL {
        constexpr int m = CAT_CV(mi);
        const __m256 dv = _mm256_broadcast_ss(xd + blk * MB + m);
        f[m][0] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_madd_epi16(acc[m][0], ones)), dv, f[m][0]);
        f[m][1] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_madd_epi16(acc[m][1], ones)), dv, f[m][1]);
      });
    }
    const float* scp = sc + (seg.g - g_lo) * 16;
    const float* zp = zf + (seg.g - g_lo) * 16;
    unroll<MB>([&](auto mi) CAT_AIL {
      constexpr int m = CAT_CV(mi);
      const __m256 xsv = _mm256_set1_ps(xs[m * xs_stride + i]);
      for (int h = 0; h < 2; ++h) {
        const __m256 inner = _mm256_sub_ps(f[m][h], _mm256_mul_ps(_mm256_loadu_ps(zp + 8 * h), xsv));
        _mm256_storeu_ps(y + m * 16 + 8 * h,
                         _mm256_fmadd_ps(_mm256_loadu_ps(scp + 8 * h), inner, _mm256_loadu_ps(y + m * 16 + 8 * h)));
      }
    });
  }
}

constexpr int kMBQ8 = 2;  // 2 x 2 int16 and 2 x 2 float accumulators, codes and x: 16 ymm
constexpr unsigned kQ8Bits = 0x114u;  // the widths it multiplies in integers: 2, 4, 8

#undef CAT_CV
#undef CAT_AIL
#undef CAT_AI

}  // namespace

const Kernels kernels_avx2 = {Ops::kMB, &gemm_item<Ops>, &dequant_tile};
const Q8Kernel q8_avx2 = {kMBQ8, kQ8Bits, &q8_item<Ops, kMBQ8, kQ8Bits>, &quantize_row_avx2};

}  // namespace cat::cpu::detail
