// The decode of the packed format (docs/format.md), written once for the v2 CUDA kernels
// (gemv_v2.cu, gemm_tiled_v2.cu) and for the host emulator that runs their data flow without a
// GPU (tests/emulator/). Under nvcc the functions are __host__ __device__ and use the hardware
// intrinsics; compiled by the host C++ compiler they are bit-exact models of them.
//
// Only standard headers: nothing here may depend on the CUDA headers (the device-only branches
// use the fp16/bf16 types of the .cu file that includes this one).
//
// Codes become 16-bit floats without an int -> float conversion: a code q < 2^bits placed at
// mantissa bit p of the "magic" number M (fp16 0x6400 = 1024, 10 mantissa bits; bf16 0x4300 =
// 128, 7 mantissa bits) is the float M + q 2^p, exact while p + bits fits the mantissa, so one
// subtraction (or one fma) leaves q - z exactly. 8-bit codes with bf16 (8 code bits > 7 mantissa
// bits) take an fp32 detour: 0x4B0000qq is the float 2^23 + q, minus 2^23 + z is q - z, which
// converts to bf16 exactly. The GEMV and the tiled kernel place the codes differently (their lanes
// own different codes), so each has its own decode below; both rest on the same primitives.
#pragma once

#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <type_traits>

#if defined(__CUDACC__)
#define CAT_HD __host__ __device__ __forceinline__
#define CAT_HDC __host__ __device__ constexpr
#else
#define CAT_HD inline
#define CAT_HDC constexpr
#endif

namespace cat {
namespace decode {

constexpr int kTile = 16;   // rows per tile (format.md)
constexpr int kBlock = 32;  // columns per block (format.md)

CAT_HD int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// int32 index into `packed` of word w of block b of tile t, row r of the tile (format.md:
// packed[t, b, w, r]).
CAT_HD int64_t word_index(int64_t t, int64_t b, int w, int r, int64_t n_blocks, int bits) {
  return ((t * n_blocks + b) * bits + w) * kTile + r;
}

// ------------------------------------------------------------------ bit primitives

// PRMT: byte n of the result is byte (sel >> 4n) & 7 of the 8-byte value b:a.
CAT_HD uint32_t prmt(uint32_t a, uint32_t b, uint32_t sel) {
#if defined(__CUDA_ARCH__)
  return __byte_perm(a, b, sel);
#else
  const uint64_t v = (uint64_t(b) << 32) | a;
  uint32_t r = 0;
  for (int n = 0; n < 4; ++n) r |= uint32_t((v >> (8 * ((sel >> (4 * n)) & 7))) & 0xFF) << (8 * n);
  return r;
#endif
}

// (hi:lo) >> (sh & 31), the low 32 bits.
CAT_HD uint32_t funnel_r(uint32_t lo, uint32_t hi, uint32_t sh) {
#if defined(__CUDA_ARCH__)
  return __funnelshift_r(lo, hi, sh);
#else
  return uint32_t(((uint64_t(hi) << 32) | lo) >> (sh & 31));
#endif
}

// (a & b) | c in one LOP3 (ptxas splits it in two when b and c are both immediates).
CAT_HD uint32_t and_or(uint32_t a, uint32_t b, uint32_t c) {
#if defined(__CUDA_ARCH__)
  uint32_t d;
  asm("lop3.b32 %0, %1, %2, %3, 0xEA;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
  return d;
#else
  return (a & b) | c;
#endif
}

// The same 32 bits as a float, or as a uint32 (a register move on the device).
template <class To, class From>
CAT_HD To bits_as(From v) {
  static_assert(sizeof(To) == 4 && sizeof(From) == 4, "32-bit values only");
#if defined(__CUDA_ARCH__)
  if constexpr (std::is_same<To, float>::value)
    return __uint_as_float(v);
  else
    return __float_as_uint(v);
#else
  To r;
  std::memcpy(&r, &v, 4);
  return r;
#endif
}
CAT_HD float as_float(uint32_t u) { return bits_as<float>(u); }
CAT_HD uint32_t as_uint(float f) { return bits_as<uint32_t>(f); }

// Bits [off, off + bits) of the 64-bit window hi:lo (off < 32): a value of a row's bit stream
// whose word is lo (and, for a value that straddles, the next word hi).
CAT_HD uint32_t field(uint32_t lo, uint32_t hi, uint32_t off, int bits) {
  return funnel_r(lo, hi, off) & ((1u << bits) - 1u);
}

// ------------------------------------------------------------------ 16-bit formats

#if !defined(__CUDA_ARCH__)
// Host models of the 16-bit formats, used by the emulator only: exact widening, and
// round-to-nearest-even narrowing (finite values).
inline float h16_to_float(uint16_t h, bool bf16) {
  if (bf16) return as_float(uint32_t(h) << 16);
  const uint32_t s = (h >> 15) & 1, e = (h >> 10) & 31, m = h & 1023;
  float v;
  if (e == 0) v = m * (1.0f / 16777216.0f);  // subnormal: m * 2^-24
  else if (e == 31) v = m ? as_float(0x7FC00000u) : as_float(0x7F800000u);
  else v = as_float(((e + 112) << 23) | (m << 13));
  return s ? -v : v;
}
inline uint16_t float_to_h16(float f, bool bf16) {
  const uint32_t u = as_uint(f);
  if (bf16) return static_cast<uint16_t>((u + 0x7FFFu + ((u >> 16) & 1)) >> 16);
  const uint32_t s = (u >> 16) & 0x8000;
  float a = f < 0 ? -f : f;
  if (a >= 65520.0f) return static_cast<uint16_t>(s | 0x7C00);
  if (a < 6.103515625e-05f) {  // subnormal: multiples of 2^-24, nearest even
    const float q = a * 16777216.0f;
    uint32_t r = static_cast<uint32_t>(q);
    const float rem = q - r;
    if (rem > 0.5f || (rem == 0.5f && (r & 1))) ++r;
    return static_cast<uint16_t>(s | r);
  }
  const uint32_t au = as_uint(a);
  uint32_t e = (au >> 23) - 112, m = au & 0x7FFFFF;
  uint32_t hm = m >> 13;
  const uint32_t rest = m & 0x1FFF;
  if (rest > 0x1000 || (rest == 0x1000 && (hm & 1))) ++hm;
  if (hm == 1024) {
    hm = 0;
    ++e;
  }
  return static_cast<uint16_t>(s | (e << 10) | hm);
}
#endif

#if defined(__CUDA_ARCH__)
// __hsub2 on the two 16-bit halves of a and b as the pair type V2 (__half2 or __nv_bfloat162).
template <class V2>
__device__ __forceinline__ uint32_t hsub2_bits(uint32_t a, uint32_t b) {
  V2 x, y;
  std::memcpy(&x, &a, 4);
  std::memcpy(&y, &b, 4);
  const V2 r = __hsub2(x, y);
  uint32_t u;
  std::memcpy(&u, &r, 4);
  return u;
}
#endif

// Lane-wise a - b on two packed 16-bit values (fp16 or bf16). Only ever used on exact integers
// of magnitude <= 2048, where the result is exact in both formats.
template <bool BF16>
CAT_HD uint32_t sub2(uint32_t a, uint32_t b) {
#if defined(__CUDA_ARCH__)
  if constexpr (BF16)
    return hsub2_bits<__nv_bfloat162>(a, b);
  else
    return hsub2_bits<__half2>(a, b);
#else
  const float lo = h16_to_float(a & 0xFFFF, BF16) - h16_to_float(b & 0xFFFF, BF16);
  const float hi = h16_to_float(a >> 16, BF16) - h16_to_float(b >> 16, BF16);
  return uint32_t(float_to_h16(lo, BF16)) | (uint32_t(float_to_h16(hi, BF16)) << 16);
#endif
}
// Two floats (exact small integers here) packed as bf16x2, low half first.
CAT_HD uint32_t pack_bf16x2(float lo, float hi) {
#if defined(__CUDA_ARCH__)
  const __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
  uint32_t u;
  std::memcpy(&u, &h, 4);
  return u;
#else
  return uint32_t(float_to_h16(lo, true)) | (uint32_t(float_to_h16(hi, true)) << 16);
#endif
}

// ------------------------------------------------------------------ magic numbers

// 8-bit codes with bf16 x take the fp32 route (see the top of this file).
template <int BITS, bool BF16>
CAT_HDC bool f32_route() { return BITS == 8 && BF16; }
constexpr uint32_t kF32Magic = 0x4B000000u;  // the float 2^23; | q is 2^23 + q

template <bool BF16>
CAT_HDC uint32_t magic16() { return BF16 ? 0x4300u : 0x6400u; }
template <bool BF16>
CAT_HDC uint32_t magic2() { return magic16<BF16>() * 0x00010001u; }
template <bool BF16>
CAT_HDC int magic_value() { return BF16 ? 128 : 1024; }
template <bool BF16>
CAT_HDC int mantissa_bits() { return BF16 ? 7 : 10; }
// The 16-bit pattern of 2^-p.
template <bool BF16>
CAT_HDC uint32_t pow2_neg_bits(int p) { return BF16 ? uint32_t(127 - p) << 7 : uint32_t(15 - p) << 10; }

// ------------------------------------------------------------------ GEMV decode (gemv_v2.cu)

// A GEMV lane's 8 codes of one row (block columns 8c .. 8c+7, c = lane % 4: `bits` bytes of the
// block's bit stream) become 4 pairs, two codes each, one per 16-bit half. Pair j holds codes lo
// and hi at mantissa bits plo and phi of the magic pattern; one fma2 with multiplier 2^-p and
// bias -(M 2^-p + z) then yields q - z exactly (the exact result is a small integer, so the one
// rounding of the fma is exact). The mma's k order inside a slice is free as long as A and B
// agree, so the pairs are whatever the bit tricks make cheapest, and x_pair builds the matching
// x pairs.
struct PairInfo {
  int lo, hi;     // code index (0..7) in the low and the high half
  int plo, phi;   // mantissa bit of each code in the magic pattern (-1 for the fp32 route)
};

template <int BITS, bool BF16>
CAT_HDC PairInfo pair_info(int j) {
  // 4 bits: (i, i+4), fp16 at p = 0/4 (one shift per word), bf16 at p = 0/3 (3 shifts).
  // 3 bits: (i, i+4) at p = (4, 0) or (7, 3) (fp16: 2 shifts; bf16 p <= 4: 4 shifts).
  // 2 bits: the 16-bit window duplicated into both halves, pairs (2i, 2i+1).
  // 8 bits: (0, 2), (1, 3), (4, 6), (5, 7).
  return BITS == 4 ? (BF16 ? PairInfo{j, j + 4, (j & 1) * 3, (j & 1) * 3}
                           : PairInfo{j, j + 4, (j & 1) * 4, (j & 1) * 4})
         : BITS == 3 ? (BF16 ? PairInfo{j, j + 4, 4, 0}
                             : PairInfo{j, j + 4, (j & 1) ? 7 : 4, (j & 1) ? 3 : 0})
         : BITS == 2 ? (BF16 ? PairInfo{2 * j, 2 * j + 1, 0, 2}
                             : PairInfo{2 * j, 2 * j + 1, (j & 1) * 4, (j & 1) * 4 + 2})
         : BF16 ? PairInfo{(j >> 1) * 4 + (j & 1), (j >> 1) * 4 + (j & 1) + 2, -1, -1}
                : PairInfo{(j >> 1) * 4 + (j & 1), (j >> 1) * 4 + (j & 1) + 2, 0, 0};
}

// Bits of the fma2 bias pair j for zero point z: -(M 2^-p + z) in each half, exactly. The value
// lies in [2^(e-p), 2^(e-p+1)) (e = 10 for fp16, 7 for bf16: M = 2^e) because z < 2^(e-p) for
// every pair above, so its pattern is sign | exponent(e - p) | z << p: one multiply-add.
template <bool BF16>
CAT_HDC uint32_t bias_half_base(int p) {
  return 0x8000u | (uint32_t((BF16 ? 127 : 15) + (BF16 ? 7 : 10) - p) << (BF16 ? 7 : 10));
}
template <int BITS, bool BF16>
CAT_HD uint32_t bias_bits(int j, uint32_t z) {
  const PairInfo pi = pair_info<BITS, BF16>(j);
  const uint32_t base = bias_half_base<BF16>(pi.plo) | bias_half_base<BF16>(pi.phi) << 16;
  return base + z * ((1u << pi.plo) | (1u << (16 + pi.phi)));
}

// The layouts below build pair j as the magic pattern with the codes shifted into place and
// masked. Two forms, each in the instruction order the decode was tuned with (it decides
// ptxas's register use): two windows of the codes with two masks (pairs 0, 1 from x0, pairs
// 2, 3 from x1: one shift serves two pairs), or one shift and mask per pair.
CAT_HD void masked_pairs(uint32_t x0, uint32_t x1, uint32_t mask0, uint32_t mask1, uint32_t magic,
                         uint32_t (&h)[4]) {
  h[0] = and_or(x0, mask0, magic);
  h[1] = and_or(x0, mask1, magic);
  h[2] = and_or(x1, mask0, magic);
  h[3] = and_or(x1, mask1, magic);
}
// Shifted right by right[j] (left when negative), masked by mask[j].
CAT_HD void shifted_pairs(uint32_t v, const int (&right)[4], const uint32_t (&mask)[4], uint32_t magic,
                          uint32_t (&h)[4]) {
  for (int j = 0; j < 4; ++j) h[j] = and_or(right[j] < 0 ? v << -right[j] : v >> right[j], mask[j], magic);
}

// Words w0, w1 of one row (gemv_arith.h's lane_word(c, 0), lane_word(c, 1)) -> the lane's 4
// magic pairs h[j] (fma2 them with bias_bits to get q - z).
template <int BITS, bool BF16>
CAT_HD void gemv_decode(uint32_t w0, uint32_t w1, int c, uint32_t (&h)[4]) {
  constexpr uint32_t M = magic2<BF16>();
  if constexpr (BITS == 4) {
    if constexpr (!BF16)
      masked_pairs(w0, w0 >> 8, 0x000F000Fu, 0x00F000F0u, M, h);
    else
      shifted_pairs(w0, {0, 1, 8, 9}, {0x000F000Fu, 0x00780078u, 0x000F000Fu, 0x00780078u}, M, h);
  } else if constexpr (BITS == 3) {
    const uint32_t v = funnel_r(w0, w1, uint32_t(24 * c) & 31u);  // codes at 3i, i = 0..7
    if constexpr (!BF16)
      masked_pairs(v << 4, v >> 2, 0x00070070u, 0x00380380u, M, h);
    else
      shifted_pairs(v, {-4, -1, 2, 5}, {0x00070070u, 0x00070070u, 0x00070070u, 0x00070070u}, M, h);
  } else if constexpr (BITS == 2) {
    // the lane's 16 bits in both halves: code i at bits 2i and 16 + 2i
    const uint32_t y = prmt(w0, w0, (c & 1) ? 0x3232u : 0x1010u);
    (void)w1;
    if constexpr (!BF16)
      masked_pairs(y, y >> 8, 0x000C0003u, 0x00C00030u, M, h);
    else
      shifted_pairs(y, {0, 4, 8, 12}, {0x000C0003u, 0x000C0003u, 0x000C0003u, 0x000C0003u}, M, h);
  } else {
    static_assert(BITS == 8, "bits must be 2, 3, 4 or 8");
    static_assert(!BF16, "8-bit codes with bf16 use gemv_decode_f32");
    (void)c;
    // two words: pairs 0, 1 from w0, pairs 2, 3 from w1
    h[0] = and_or(w0, 0x00FF00FFu, M);
    h[1] = and_or(w0 >> 8, 0x00FF00FFu, M);
    h[2] = and_or(w1, 0x00FF00FFu, M);
    h[3] = and_or(w1 >> 8, 0x00FF00FFu, M);
  }
}

// 8-bit codes, bf16: f[i] = bits of the float 2^23 + q_i (code i of the lane's 8).
CAT_HD void gemv_decode_f32(uint32_t w0, uint32_t w1, uint32_t (&f)[8]) {
  for (int i = 0; i < 4; ++i) {
    f[i] = prmt(w0, kF32Magic, 0x7440u | uint32_t(i));
    f[4 + i] = prmt(w1, kF32Magic, 0x7440u | uint32_t(i));
  }
}

// x of the same pair: xr[4] holds x columns 8c .. 8c+7 of one row of x as 16-bit pairs
// (xr[i / 2], column i in the low half when i is even); pair (lo, hi) -> one PRMT.
CAT_HDC uint32_t xpair_sel(int lo, int hi) {
  return ((lo & 1) ? 0x32u : 0x10u) | ((hi & 1) ? 0x7600u : 0x5400u);
}
template <int BITS, bool BF16>
CAT_HD uint32_t x_pair(const uint32_t (&xr)[4], int j) {
  const PairInfo p = pair_info<BITS, BF16>(j);
  return prmt(xr[p.lo >> 1], xr[p.hi >> 1], xpair_sel(p.lo, p.hi));
}

// ------------------------------------------------------------------ tiled decode (gemm_tiled_v2.cu)

// The per-(row, block) zero operand: the 16-bit pair (magic + z, magic + z), or for the fp32
// route the float bits of 2^23 + z.
template <int BITS, bool BF16>
CAT_HD uint32_t zero_operand(uint32_t z) {
  if constexpr (f32_route<BITS, BF16>()) return as_uint(8388608.0f + static_cast<float>(z));
  const uint32_t h = magic16<BF16>() + z;
  return h | (h << 16);
}

// Lane (g = lane / 4, t = lane % 4) decodes, for B register r of 16-column slice h of a block
// (pair j = 2 h + r), the two codes at block values v = 8 j + 2 t + {0, 1} of its row; `blk`
// points at word 0 row 0 of the tile's block in shared memory ([bits][16] words).
CAT_HD int pair_value(int j, int t) { return 8 * j + 2 * t; }

template <int BITS, bool BF16>
CAT_HD uint32_t tiled_decode(const uint32_t* blk, int row, int j, int t, uint32_t zop) {
  constexpr uint32_t mask = ((1u << BITS) - 1u) * 0x00010001u;
  constexpr uint32_t magic = magic2<BF16>();
  if constexpr (BITS == 4) {
    // values 8 j .. 8 j + 7 are word j; the pair is byte t: low nibble first.
    const uint32_t w = blk[j * 16 + row];
    const uint32_t sel = uint32_t(t) | (uint32_t(t) << 4) | (uint32_t(4 + t) << 8) | (uint32_t(4 + t) << 12);
    return sub2<BF16>((prmt(w, w >> 4, sel) & mask) | magic, zop);
  } else if constexpr (BITS == 2) {
    // word j / 2 holds values 16 (j / 2) .. +15; the pair is nibble t + 4 (j % 2): byte
    // t / 2 + 2 (j % 2), upper half when t is odd.
    const uint32_t w = blk[(j >> 1) * 16 + row] >> (4 * (t & 1));
    const uint32_t b = uint32_t((t >> 1) + 2 * (j & 1));
    const uint32_t sel = b | (b << 4) | ((4 + b) << 8) | ((4 + b) << 12);
    return sub2<BF16>((prmt(w, w >> 2, sel) & mask) | magic, zop);
  } else if constexpr (BITS == 3) {
    // 96-bit stream per block: the pair is stream bits [6 t + 24 j, +6), which may straddle two
    // words (t = 1, j = 1 and t = 2, j = 2); the funnel shift reads either case.
    const int p = 6 * t + 24 * j, wi = p >> 5;
    const uint32_t lo = blk[wi * 16 + row];
    const uint32_t hi = blk[(wi < 2 ? wi + 1 : 2) * 16 + row];
    const uint32_t x = funnel_r(lo, hi, p & 31);
    return sub2<BF16>((prmt(x, x >> 3, 0x4400u) & mask) | magic, zop);
  } else {
    static_assert(BITS == 8, "bits must be 2, 3, 4 or 8");
    // word 2 j + t / 2 holds values 8 j + 4 (t / 2) .. +3; the pair is bytes 2 (t % 2) and +1.
    const uint32_t w = blk[(2 * j + (t >> 1)) * 16 + row];
    const uint32_t b = 2 * uint32_t(t & 1);
    if constexpr (f32_route<BITS, BF16>()) {
      const uint32_t m = kF32Magic;  // bytes 1, 2 are 0: prmt fills them from m
      const float lo = as_float(prmt(w, m, b | (5u << 4) | (6u << 8) | (7u << 12))) - as_float(zop);
      const float hi = as_float(prmt(w, m, (b + 1) | (5u << 4) | (6u << 8) | (7u << 12))) - as_float(zop);
      return pack_bf16x2(lo, hi);
    } else {
      // fp16: bytes (q_lo, 0x64, q_hi, 0x64) is the pair (1024 + q_lo, 1024 + q_hi) directly.
      return sub2<BF16>(prmt(w, 0x64646464u, b | (4u << 4) | ((b + 1) << 8) | (4u << 12)), zop);
    }
  }
}

// ------------------------------------------------------------------ zero points and scales

// Zero points: one bit stream per row, tiles of 16 rows side by side (format.md "Zero points").
CAT_HD int64_t zero_row_words(int64_t n_groups, int bits) { return cdiv(n_groups * bits, 32); }
// Where value v of a row's bit stream lies (stream bits [bits v, bits v + bits)): from bit `bit`
// of the row's word `word`; a 3-bit value may straddle into the next word.
struct StreamPos {
  int64_t word;
  int bit;
};
CAT_HD StreamPos stream_pos(int64_t v, int bits) {
  const int64_t pos = int64_t(bits) * v;
  return {pos >> 5, static_cast<int>(pos & 31)};
}

// Scale from its raw storage bits (dtype as cat::DType: 0 f32, 1 f16, 2 bf16).
CAT_HD float scale_from_raw(uint32_t raw, int dtype) {
  if (dtype == 2) return as_float(raw << 16);
  if (dtype == 1) {
#if defined(__CUDA_ARCH__)
    return __half2float(__ushort_as_half(static_cast<unsigned short>(raw)));
#else
    return h16_to_float(static_cast<uint16_t>(raw), false);
#endif
  }
  return as_float(raw);
}

// ------------------------------------------------------------------ groups

// Group of block b (a block never straddles two groups: group_size is a multiple of 32, or the
// whole row, resolved to K; then every block is in group 0 because 32 b < K).
CAT_HD int64_t group_of(int64_t b, int64_t group_size) { return (b * kBlock) / group_size; }
// Blocks per group: group_size / 32, or every block of the row for a whole-row group with K not
// a multiple of 32 (the only case where group_size % 32 != 0).
CAT_HD int64_t blocks_per_group(int64_t group_size, int64_t n_blocks) {
  return group_size % kBlock == 0 ? group_size / kBlock : n_blocks;
}

// ------------------------------------------------------------------ bit widths (host)

// Calls f(std::integral_constant<int, BITS>{}) for the runtime bit width: the one place where
// `bits` becomes a template argument. `what` names the caller in the error for any other width.
template <class F>
void dispatch_bits(int bits, const char* what, F&& f) {
  switch (bits) {
    case 2: f(std::integral_constant<int, 2>{}); break;
    case 3: f(std::integral_constant<int, 3>{}); break;
    case 4: f(std::integral_constant<int, 4>{}); break;
    case 8: f(std::integral_constant<int, 8>{}); break;
    default: throw std::runtime_error(std::string(what) + ": bits must be 2, 3, 4 or 8");
  }
}
// Calls f(std::integral_constant<int, BITS>{}, std::bool_constant<BF16>{}): the v2 kernels'
// two template arguments (BF16: bfloat16 x, else float16).
template <class F>
void dispatch_bits_bf16(int bits, bool bf16, const char* what, F&& f) {
  dispatch_bits(bits, what, [&](auto b) {
    if (bf16)
      f(b, std::true_type{});
    else
      f(b, std::false_type{});
  });
}

}  // namespace decode
}  // namespace cat
