// Scalar helpers used by the driver and by every kernel translation unit. All `static inline`
// on purpose: each translation unit keeps its own copy compiled with its own ISA flags, so the
// linker never merges an AVX-512 copy into baseline code.
#pragma once

#include <cstdint>
#include <cmath>
#include <cstring>

#include "cat/ops.h"

namespace cat::cpu::detail {

static inline float bits_to_f32(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
static inline uint32_t f32_to_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

static inline float f16_to_f32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t e = (h >> 10) & 0x1Fu, m = h & 0x3FFu;
  if (e == 0) {
    // Subnormal (or zero): exact in float32 as m * 2^-24.
    float f = static_cast<float>(m) * 5.9604644775390625e-08f;
    return bits_to_f32(f32_to_bits(f) | sign);
  }
  if (e == 31) return bits_to_f32(sign | 0x7F800000u | (m << 13));
  return bits_to_f32(sign | ((e + 112u) << 23) | (m << 13));
}

// Round to nearest even, like numpy's astype(float16).
static inline uint16_t f32_to_f16(float f) {
  uint32_t x = f32_to_bits(f);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  uint32_t a = x & 0x7FFFFFFFu;
  if (a >= 0x7F800000u) return sign | 0x7C00u | (a > 0x7F800000u ? 0x200u | ((a >> 13) & 0x3FFu) : 0u);
  if (a >= 0x477FF000u) return sign | 0x7C00u;  // >= 65520 rounds to inf
  if (a < 0x38800000u) {
    // Below the smallest normal half: adding 0.5 makes the FPU round at 2^-24, the half
    // subnormal spacing, with the current (nearest-even) rounding mode.
    float r = bits_to_f32(a) + 0.5f;
    return sign | static_cast<uint16_t>(f32_to_bits(r) - 0x3F000000u);
  }
  a += 0xC8000FFFu + ((a >> 13) & 1u);  // rebias exponent 127 -> 15, round to nearest even
  return sign | static_cast<uint16_t>(a >> 13);
}

static inline float bf16_to_f32(uint16_t h) { return bits_to_f32(static_cast<uint32_t>(h) << 16); }

static inline uint16_t f32_to_bf16(float f) {
  uint32_t x = f32_to_bits(f);
  if ((x & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<uint16_t>((x >> 16) | 0x40u);  // quiet NaN
  x += 0x7FFFu + ((x >> 16) & 1u);
  return static_cast<uint16_t>(x >> 16);
}

static inline float load_as_f32(const void* p, DType dt, int64_t i) {
  switch (dt) {
    case DType::f16: return f16_to_f32(static_cast<const uint16_t*>(p)[i]);
    case DType::bf16: return bf16_to_f32(static_cast<const uint16_t*>(p)[i]);
    default: return static_cast<const float*>(p)[i];
  }
}

static inline void store_from_f32(void* p, DType dt, int64_t i, float v) {
  switch (dt) {
    case DType::f16: static_cast<uint16_t*>(p)[i] = f32_to_f16(v); break;
    case DType::bf16: static_cast<uint16_t*>(p)[i] = f32_to_bf16(v); break;
    default: static_cast<float*>(p)[i] = v;
  }
}

// Value v of one row's stream (any length): `row` points at word 0 of that row (packed[t, 0, r]
// in the [tiles, row_words, 16] view); successive words are 16 int32 apart. Reads the next word
// only when the value straddles into it, so it never reads past the stream's last word.
static inline uint32_t decode_stream(const int32_t* row, int64_t v, int bits) {
  const int64_t pos = int64_t{bits} * v, wi = pos >> 5;
  const int off = static_cast<int>(pos & 31);
  uint32_t q = static_cast<uint32_t>(row[wi * 16]) >> off;
  if (off + bits > 32) q |= static_cast<uint32_t>(row[(wi + 1) * 16]) << (32 - off);
  return q & ((1u << bits) - 1u);
}

// Zero point of row r (0..15) of tile t for group g; `zeros` is [tiles, zero_words, 16].
static inline uint32_t zero_point(const int32_t* zeros, int64_t zero_words, int64_t t, int64_t g, int r,
                                  int bits) {
  if (!zeros) return 1u << (bits - 1);
  return decode_stream(zeros + t * zero_words * 16 + r, g, bits);
}

// x rounded to int8 per block of 32 columns, as llama.cpp's Q8_0 does: d = max|x| / 127,
// q = round-half-even(x * (1 / d)) (q = 0 where d = 0). A block holding a NaN or an infinity gets
// d = NaN, so the outputs it touches are NaN, as in the float path. Returns d; q into q[0..32).
static inline float quantize_block_q8(const float* v, int8_t* q, int32_t* sum) {
  float amax = 0.0f;
  uint32_t nonfinite = 0;
  for (int j = 0; j < 32; ++j) {
    uint32_t u;
    std::memcpy(&u, v + j, 4);
    nonfinite |= (u & 0x7F800000u) == 0x7F800000u;
    const float a = std::fabs(v[j]);
    amax = a > amax ? a : amax;
  }
  if (nonfinite) {  // d = NaN makes every output the block reaches NaN; the codes do not matter
    std::memset(q, 0, 32);
    *sum = 0;
    return NAN;
  }
  const float d = amax / 127.0f;
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  int32_t s = 0;
  for (int j = 0; j < 32; ++j) {
    // round half to even without a libm call: |v * id| <= 127 (plus rounding), and adding then
    // subtracting 1.5 * 2^23 rounds to an integer in the default rounding mode
    float t = (v[j] * id + 12582912.0f) - 12582912.0f;
    t = t > 127.0f ? 127.0f : (t < -127.0f ? -127.0f : t);
    q[j] = static_cast<int8_t>(t);
    s += static_cast<int32_t>(t);
  }
  *sum = s;
  return d;
}

}  // namespace cat::cpu::detail
