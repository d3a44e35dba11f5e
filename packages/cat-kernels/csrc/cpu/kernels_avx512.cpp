// AVX-512 (F + BW + VL) kernels: one zmm register holds the 16 rows of a tile.
// Compiled with -mavx512f -mavx512bw -mavx512vl -mavx2 -mfma -mf16c; only called after the
// runtime check in isa.cpp.
#include <immintrin.h>

#include <cstdint>
#include <type_traits>
#include <utility>

#include "common.h"
#include "internal.h"

namespace cat::cpu::detail {
namespace {

struct Ops {
  static constexpr int kMB = 8;  // 8 accumulators + decode temporaries fit the 32 zmm registers
  static constexpr bool kUnrollValues = true;
  static constexpr int kChains1 = 4;  // accumulator chains at one row of x
  using VI = __m512i;
  using VF = __m512;
  static VI load(const int32_t* p) { return _mm512_loadu_si512(static_cast<const void*>(p)); }
  static VF loadf(const float* p) { return _mm512_loadu_ps(p); }
  static void storef(float* p, VF v) { _mm512_storeu_ps(p, v); }
  static VF zero() { return _mm512_setzero_ps(); }
  static VF set1(float f) { return _mm512_set1_ps(f); }
  static VI set1i(int32_t i) { return _mm512_set1_epi32(i); }
  static VF bcast(const float* p) { return _mm512_set1_ps(*p); }
  static VF fma(VF a, VF b, VF c) { return _mm512_fmadd_ps(a, b, c); }
  static VF add(VF a, VF b) { return _mm512_add_ps(a, b); }
  static VF sub(VF a, VF b) { return _mm512_sub_ps(a, b); }
  static VF mul(VF a, VF b) { return _mm512_mul_ps(a, b); }
  static VF cvt(VI a) { return _mm512_cvtepi32_ps(a); }
  static VI and_(VI a, VI b) { return _mm512_and_si512(a, b); }
  static VI or_(VI a, VI b) { return _mm512_or_si512(a, b); }
  static VI srl(VI a, int s) { return _mm512_srl_epi32(a, _mm_cvtsi32_si128(s)); }
  static VI sll(VI a, int s) { return _mm512_sll_epi32(a, _mm_cvtsi32_si128(s)); }
  template <int S>
  static VI shift(VI w) {
    if constexpr (S > 0) return _mm512_srli_epi32(w, S);
    else if constexpr (S < 0) return _mm512_slli_epi32(w, -S);
    else return w;
  }
  // (w & mask) | one in a single vpternlogd.
  static VF mant(VI w, VI mask, VI one) {
    return _mm512_castsi512_ps(_mm512_ternarylogic_epi32(w, mask, one, 0xEA));
  }
  static float h2f(uint16_t h) { return _cvtsh_ss(h); }
};

#include "kernels_impl.h"

}  // namespace

const Kernels kernels_avx512 = {Ops::kMB, &gemm_item<Ops>, &dequant_tile};

}  // namespace cat::cpu::detail
