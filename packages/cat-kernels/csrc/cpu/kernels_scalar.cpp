// Portable kernels: the same algorithm over plain arrays of 16 lanes. Used on non-x86 CPUs,
// x86 CPUs without AVX2/FMA/F16C, and when CAT_KERNELS_ISA=scalar. Compiled with the
// baseline flags (the compiler may still vectorize the lane loops with SSE2/NEON).
#include <cstdint>
#include <type_traits>
#include <utility>

#include "common.h"
#include "internal.h"

namespace cat::cpu::detail {
namespace {

struct Ops {
  static constexpr int kMB = 2;  // keeps the fully unrolled portable code (and its build) small
  static constexpr bool kUnrollValues = false;
  static constexpr int kChains1 = 4;  // accumulator chains at one row of x
  static constexpr bool kScalesT = false;  // scales gathered one by one
  static constexpr bool kPermDecode = false;  // shift and and/or decode only
  static constexpr bool kPerm8Decode = false;
  struct VI {
    int32_t v[16];
  };
  struct VF {
    float v[16];
  };
#define CAT_LANES for (int i = 0; i < 16; ++i)
  static VI load(const int32_t* p) { VI r; CAT_LANES r.v[i] = p[i]; return r; }
  static VF loadf(const float* p) { VF r; CAT_LANES r.v[i] = p[i]; return r; }
  static void storef(float* p, const VF& x) { CAT_LANES p[i] = x.v[i]; }
  static VF zero() { return set1(0.0f); }
  static VF set1(float f) { VF r; CAT_LANES r.v[i] = f; return r; }
  static VI set1i(int32_t x) { VI r; CAT_LANES r.v[i] = x; return r; }
  static VF bcast(const float* p) { return set1(*p); }
  static VF fma(const VF& a, const VF& b, const VF& c) { VF r; CAT_LANES r.v[i] = a.v[i] * b.v[i] + c.v[i]; return r; }
  static VF add(const VF& a, const VF& b) { VF r; CAT_LANES r.v[i] = a.v[i] + b.v[i]; return r; }
  static VF sub(const VF& a, const VF& b) { VF r; CAT_LANES r.v[i] = a.v[i] - b.v[i]; return r; }
  static VF mul(const VF& a, const VF& b) { VF r; CAT_LANES r.v[i] = a.v[i] * b.v[i]; return r; }
  static VF cvt(const VI& a) { VF r; CAT_LANES r.v[i] = static_cast<float>(a.v[i]); return r; }
  static VI and_(const VI& a, const VI& b) { VI r; CAT_LANES r.v[i] = a.v[i] & b.v[i]; return r; }
  static VI or_(const VI& a, const VI& b) { VI r; CAT_LANES r.v[i] = a.v[i] | b.v[i]; return r; }
  static VI srl(const VI& a, int s) {
    VI r;
    CAT_LANES r.v[i] = static_cast<int32_t>(static_cast<uint32_t>(a.v[i]) >> s);
    return r;
  }
  static VI sll(const VI& a, int s) {
    VI r;
    CAT_LANES r.v[i] = static_cast<int32_t>(static_cast<uint32_t>(a.v[i]) << s);
    return r;
  }
  template <int S>
  static VI shift(const VI& w) {
    if constexpr (S > 0) return srl(w, S);
    else if constexpr (S < 0) return sll(w, -S);
    else return w;
  }
  static VF mant(const VI& w, const VI& mask, const VI& one) {
    VF r;
    CAT_LANES r.v[i] = bits_to_f32((static_cast<uint32_t>(w.v[i]) & static_cast<uint32_t>(mask.v[i])) |
                                   static_cast<uint32_t>(one.v[i]));
    return r;
  }
  static float h2f(uint16_t h) { return f16_to_f32(h); }
#undef CAT_LANES
};

#include "kernels_impl.h"

}  // namespace

const Kernels kernels_scalar = {Ops::kMB, &gemm_item<Ops>, &dequant_tile};

}  // namespace cat::cpu::detail
