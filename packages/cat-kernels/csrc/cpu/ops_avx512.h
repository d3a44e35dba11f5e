// The AVX-512 (F + BW + VL) vector interface of kernels_impl.h, shared by kernels_avx512.cpp
// and kernels_avx512_vnni.cpp. Included INSIDE an anonymous namespace of those files (each keeps
// its own copy, compiled with its own flags); includes nothing itself.
#define CAT_OPS_AI inline __attribute__((always_inline))

struct Ops {
  static constexpr int kMB = 8;  // 8 accumulators + decode temporaries fit the 32 zmm registers
  static constexpr bool kUnrollValues = true;
  static constexpr int kChains1 = 8;  // accumulator chains at one row of x
  static constexpr bool kScalesT = true;  // scales_t below
  static constexpr bool kPermDecode = true;  // perm_lo / perm_hi below
  static constexpr bool kPerm8Decode = false;
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
  // table[idx & 15] per lane (vpermps).
  static VF perm_lo(VI idx, VF table) { return _mm512_permutexvar_ps(idx, table); }
  // Per lane: (16-bit table[(idx >> 16) & 31]) << 16 (vpermw, lower halves zeroed).
  static VF perm_hi(VI idx, VI table) {
    return _mm512_castsi512_ps(_mm512_maskz_permutexvar_epi16(static_cast<__mmask32>(0xAAAAAAAAu), idx, table));
  }

  // In-register transpose of 16 rows of 16 floats, in place pair by pair (no temporaries
  // beyond two registers). Column c ends up in r[transposed_slot(c)].
  static constexpr int transposed_slot(int c) { return (c & ~3) | ((c & 1) << 1) | ((c >> 1) & 1); }
  static CAT_OPS_AI void transpose16(VF r[16]) {
#pragma GCC unroll 16
    for (int i = 0; i < 8; ++i) {  // rows 2i, 2i+1 -> per 128-bit lane L: (2i, 2i+1) x (4L, 4L+1) | x (4L+2, 4L+3)
      const VF a = r[2 * i], b = r[2 * i + 1];
      r[2 * i] = _mm512_unpacklo_ps(a, b);
      r[2 * i + 1] = _mm512_unpackhi_ps(a, b);
    }
#pragma GCC unroll 16
    for (int q = 0; q < 8; ++q) {  // quad i = q / 2 (rows 4i..4i+3), j = q % 2
      const int i = q >> 1, j = q & 1;
      const __m512d a = _mm512_castps_pd(r[4 * i + j]), b = _mm512_castps_pd(r[4 * i + j + 2]);
      r[4 * i + j] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, b));      // column 4L + 2j
      r[4 * i + j + 2] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, b));  // column 4L + 2j + 1
    }
    // Slot 4i + transposed_slot(c) (c < 4) now holds, in each 128-bit lane L, rows 4i..4i+3 of
    // column 4L + c.
#pragma GCC unroll 16
    for (int q = 0; q < 8; ++q) {  // i = q / 4 (rows 8i..8i+7), c = q % 4
      const int i = q >> 2, c = transposed_slot(q & 3);
      const VF a = r[8 * i + c], b = r[8 * i + 4 + c];
      r[8 * i + c] = _mm512_shuffle_f32x4(a, b, 0x88);      // lanes 0, 2 of a, then of b
      r[8 * i + 4 + c] = _mm512_shuffle_f32x4(a, b, 0xDD);  // lanes 1, 3 of a, then of b
    }
    // Slot 8i + c': column c, 8 + c (rows 8i..8i+3), then column c, 8 + c (rows 8i+4..8i+7);
    // slot 8i + 4 + c': the same for columns 4 + c, 12 + c (c' = transposed_slot(c)).
#pragma GCC unroll 16
    for (int q = 0; q < 8; ++q) {  // h = q / 4, c = q % 4
      const int h = q >> 2, c = transposed_slot(q & 3);
      const VF a = r[4 * h + c], b = r[8 + 4 * h + c];
      r[4 * h + c] = _mm512_shuffle_f32x4(a, b, 0x88);      // column 4h + c
      r[8 + 4 * h + c] = _mm512_shuffle_f32x4(a, b, 0xDD);  // column 8 + 4h + c
    }
  }

  // sc[gi * 16 + r] = scale of row r (0 for r >= rows), group gi, of the scales matrix read at
  // scales[first + r * stride + gi] for gi in [0, ngc): 16 rows x 16 groups per transpose.
  static void scales_t(const void* scales, DType dt, int64_t first, int64_t stride, int rows,
                       int ngc, float* sc) {
    for (int g0 = 0; g0 < ngc; g0 += 16) {
      const int cnt = ngc - g0 < 16 ? ngc - g0 : 16;
      const __mmask16 mk = static_cast<__mmask16>((1u << cnt) - 1u);
      VF r[16];
#pragma GCC unroll 16
      for (int i = 0; i < 16; ++i) {
        if (i >= rows) {
          r[i] = _mm512_setzero_ps();
          continue;
        }
        const int64_t o = first + i * stride + g0;
        if (dt == DType::f32) {
          r[i] = _mm512_maskz_loadu_ps(mk, static_cast<const float*>(scales) + o);
        } else {
          const __m256i h = _mm256_maskz_loadu_epi16(mk, static_cast<const uint16_t*>(scales) + o);
          r[i] = dt == DType::f16 ? _mm512_cvtph_ps(h)
                                  : _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
        }
      }
      transpose16(r);
#pragma GCC unroll 16
      for (int j = 0; j < 16; ++j)
        if (j < cnt) _mm512_store_ps(sc + (g0 + j) * 16, r[transposed_slot(j)]);
    }
  }
};

#undef CAT_OPS_AI
