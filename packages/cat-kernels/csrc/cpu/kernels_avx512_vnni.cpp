// The gemm with int8 x (QWeight::int8_x) on AVX-512 VNNI: one zmm register holds 4 codes of
// each of the 16 rows of a tile as bytes, and one vpdpbusd adds 4 code x int8 products into each
// row's int32 sum: 64 multiply-adds an instruction where the float kernel does 16, on codes
// unpacked by one byte shift-select (vpmultishiftqb) and one and. At one row of x the float
// kernel is bound by arithmetic (about 26 G weights/s a thread on SPR); this one by memory.
// Compiled with the AVX-512 flags plus -mavx512vnni -mavx512vbmi -mavx512vbmi2; only called
// after the runtime check in isa.cpp (active_q8_kernel).
#include <immintrin.h>

#include <cstdint>
#include <type_traits>
#include <utility>

#include "common.h"
#include "internal.h"

namespace cat::cpu::detail {
namespace {

#include "ops_avx512.h"
#include "kernels_impl.h"

// kernels_impl.h's helpers, under the names it uses (it undefines them at its end).
#define CAT_AI inline __attribute__((always_inline))
#define CAT_AIL __attribute__((always_inline))
#define CAT_CV(ic) decltype(ic)::value

// vpmultishiftqb control that moves codes i = 0..3, at bits OFF + BITS i of each row's word (the
// low dword of a qword, row 2j; the high dword, row 2j + 1), into byte i of that row's dword.
// Bits above a code (from the next code or the other row's word) are cleared by the mask after.
template <int BITS, int OFF>
constexpr int64_t kShiftCtrl = [] {
  uint64_t c = 0;
  for (int i = 0; i < 4; ++i) {
    c |= static_cast<uint64_t>(OFF + BITS * i) << (8 * i);
    c |= static_cast<uint64_t>(32 + OFF + BITS * i) << (8 * (i + 4));
  }
  return static_cast<int64_t>(c);
}();

// Codes 4J .. 4J + 3 of the block at wp (words of 16 rows, 16 int32 apart), one byte each, in
// column order: the lane of row r holds the 4 codes of row r. Only 3-bit groups 2 and 5 cross a
// word (stream bits 24..35 and 60..71): a funnel shift of the two words first brings them into
// one dword.
template <int BITS, int J>
CAT_AI __m512i codes4(const int32_t* wp) {
  if constexpr (BITS == 8) {
    return _mm512_loadu_si512(wp + J * 16);
  } else {
    constexpr int kPos = 4 * BITS * J, kWord = kPos / 32, kOff = kPos % 32;
    const __m512i mask = _mm512_set1_epi8(static_cast<char>((1 << BITS) - 1));
    __m512i w = _mm512_loadu_si512(wp + kWord * 16);
    if constexpr (kOff + 4 * BITS > 32) {
      w = _mm512_shrdi_epi32(w, _mm512_loadu_si512(wp + (kWord + 1) * 16), kOff);
      return _mm512_and_si512(_mm512_multishift_epi64_epi8(_mm512_set1_epi64(kShiftCtrl<BITS, 0>), w), mask);
    } else {
      return _mm512_and_si512(_mm512_multishift_epi64_epi8(_mm512_set1_epi64(kShiftCtrl<BITS, kOff>), w), mask);
    }
  }
}

// The segments [0, nseg) of one work item for MB rows of x: per block, exact int32 dot products
// of codes and int8 x, scaled by the block's d into a float sum; per segment
// y[m] += s * (sum d (q . x) - z * sum d (sum x)), sc / zf: the 16 scales and zero points of each
// group (from the first segment's group on). xq, xd: the row block's interleaved int8 x (see
// GemmPlan); xs[m * xs_stride + i]: sum of d * (sum of row m's codes) over segment i.
template <int BITS, int MB>
__attribute__((noinline)) void run_segments_q8(const int32_t* tile_words, const Segment* segs, int nseg,
                                               const float* sc, const float* zf, const int32_t* xq,
                                               const float* xd, const float* xs, int64_t xs_stride, float* y) {
  const int g_lo = segs[0].g;
  // vpdpbusd's latency is 5 cycles: at one or two rows of x, spread a block over a few chains.
  constexpr int U = MB >= 4 ? 1 : (MB == 2 ? 2 : 4);
  for (int i = 0; i < nseg; ++i) {
    const Segment seg = segs[i];
    const int32_t* wp = tile_words + static_cast<int64_t>(seg.b0) * BITS * 16;
    __m512 f[MB];
    unroll<MB>([&](auto mi) CAT_AIL { f[CAT_CV(mi)] = _mm512_setzero_ps(); });
    for (int blk = seg.b0; blk < seg.b1; ++blk, wp += BITS * 16) {
      if constexpr (MB == 1) {
        unroll<BITS>([&](auto li) CAT_AIL {
          __builtin_prefetch(wp + (kPrefetchBlocks * BITS + CAT_CV(li)) * 16, 0, 3);
        });
      }
      const int32_t* xb = xq + static_cast<int64_t>(blk) * 8 * MB;
      __m512i acc[MB][U];
      unroll<MB>([&](auto mi) CAT_AIL {
        unroll<U>([&](auto u) CAT_AIL { acc[CAT_CV(mi)][CAT_CV(u)] = _mm512_setzero_si512(); });
      });
      unroll<8>([&](auto ji) CAT_AIL {
        constexpr int j = CAT_CV(ji);
        const __m512i c = codes4<BITS, j>(wp);
        unroll<MB>([&](auto mi) CAT_AIL {
          constexpr int m = CAT_CV(mi);
          acc[m][j % U] = _mm512_dpbusd_epi32(acc[m][j % U], c, _mm512_set1_epi32(xb[j * MB + m]));
        });
      });
      unroll<MB>([&](auto mi) CAT_AIL {
        constexpr int m = CAT_CV(mi);
        __m512i a = acc[m][0];
        unroll<U - 1>([&](auto u) CAT_AIL { a = _mm512_add_epi32(a, acc[m][CAT_CV(u) + 1]); });
        f[m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(a), _mm512_set1_ps(xd[blk * MB + m]), f[m]);
      });
    }
    const __m512 scv = _mm512_loadu_ps(sc + (seg.g - g_lo) * 16);
    const __m512 zv = _mm512_loadu_ps(zf + (seg.g - g_lo) * 16);
    unroll<MB>([&](auto mi) CAT_AIL {
      constexpr int m = CAT_CV(mi);
      const __m512 inner = _mm512_sub_ps(f[m], _mm512_mul_ps(zv, _mm512_set1_ps(xs[m * xs_stride + i])));
      _mm512_storeu_ps(y + m * 16, _mm512_fmadd_ps(scv, inner, _mm512_loadu_ps(y + m * 16)));
    });
  }
}

constexpr int kMBQ8 = 8;  // rows of x per register block: 8 int32 + 8 float accumulators
constexpr unsigned kQ8Bits = 0x11Cu;  // the widths it multiplies in integers: 2, 3, 4, 8

// quantize_block_q8 (common.h) 16 lanes at a time, with the same operations in float32 (so the
// same codes and scales): max |x| of the block, d = max / 127 (NaN if the block holds a NaN or an
// infinity), q = round-half-even(x * (1 / d)) clamped to [-127, 127].
void quantize_row(const float* row, int64_t nb, int /*bits: column order for every width*/, int8_t* q, float* d,
                  float* bsum) {
  const __m512i absmask = _mm512_set1_epi32(0x7FFFFFFF), expmask = _mm512_set1_epi32(0x7F800000);
  for (int64_t b = 0; b < nb; ++b) {
    const __m512 v0 = _mm512_loadu_ps(row + b * 32), v1 = _mm512_loadu_ps(row + b * 32 + 16);
    const __m512i a0 = _mm512_and_si512(_mm512_castps_si512(v0), absmask);
    const __m512i a1 = _mm512_and_si512(_mm512_castps_si512(v1), absmask);
    // a NaN or an infinity: all exponent bits set
    const bool nonfinite = (_mm512_cmpeq_epi32_mask(_mm512_and_si512(a0, expmask), expmask) |
                            _mm512_cmpeq_epi32_mask(_mm512_and_si512(a1, expmask), expmask)) != 0;
    const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_castsi512_ps(a0), _mm512_castsi512_ps(a1)));
    const float db = nonfinite ? NAN : amax / 127.0f;
    const float id = !nonfinite && db != 0.0f ? 1.0f / db : 0.0f;
    const __m512 idv = _mm512_set1_ps(id);
    const __m512i lo = _mm512_set1_epi32(-127), hi = _mm512_set1_epi32(127);
    const __m512i q0 = _mm512_min_epi32(_mm512_max_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(v0, idv)), lo), hi);
    const __m512i q1 = _mm512_min_epi32(_mm512_max_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(v1, idv)), lo), hi);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(q + b * 32), _mm512_cvtepi32_epi8(q0));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(q + b * 32 + 16), _mm512_cvtepi32_epi8(q1));
    d[b] = db;
    bsum[b] = db * static_cast<float>(_mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1)));
  }
}

#undef CAT_CV
#undef CAT_AIL
#undef CAT_AI

}  // namespace

const Q8Kernel q8_avx512_vnni = {kMBQ8, kQ8Bits, &q8_item<Ops, kMBQ8, kQ8Bits>, &quantize_row};

}  // namespace cat::cpu::detail
