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

}  // namespace

const Kernels kernels_avx2 = {Ops::kMB, &gemm_item<Ops>, &dequant_tile};

}  // namespace cat::cpu::detail
