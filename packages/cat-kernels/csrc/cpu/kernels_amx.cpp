// Float-x products of many rows on AMX-BF16 tiles (Sapphire Rapids and later), exact to float32:
//
// - Every x value is split into three bfloat16 pieces by truncation, h = x with the low 16 bits
//   cleared, l = the same of x - h, r = x - h - l. Each step is exact in float32 and each piece
//   keeps 8 significant bits of the 24, so x = h + l + r exactly (r fits in a bfloat16; pieces
//   below 2^-126 are read as zero by the tiles, an absolute error under 2^-110 |x|). bfloat16 x
//   needs h only and float16 x h and l: the x dtype sets the number of pieces.
// - The weights enter as the integers q - z (|q - z| <= 255), exact in bfloat16.
// - TDPBF16PS multiplies bfloat16 pairs exactly and accumulates in float32, so each segment's
//   sum of x (q - z) over up to 512 columns is a float32 sum of exact products (the float
//   kernels' error class, in another order), then scaled once: y += s * sum.
// A tile product does 16 x 16 x 32 multiply-adds where an AVX-512 FMA does 16: even at three
// pieces per x this outruns float32 FMAs (and MKL's float32 sgemm) several times over once a
// block of decoded codes serves 16 rows or more.
//
// Tiles: tmm0-2 hold the pieces of 16 rows of x for one block of 32 columns (16 x 64 bytes),
// tmm3 the block's codes for the 16 weight rows of the tile in the pair order the instruction
// reads (row i: 16 dwords, dword n = columns 2i and 2i + 1 of weight row n), tmm4-7 the float32
// sums of up to four tiles of 16 rows of x (the 64 rows of a work item).
//
// Compiled with the AVX-512 flags plus -mamx-tile -mamx-bf16; only called after the run-time
// check in isa.cpp (the CPU has the instructions and the kernel granted this process the tile
// state).
#include <immintrin.h>

#include <cstdint>
#include <cstring>
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

struct alignas(64) TileConfig {
  uint8_t palette_id = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// Every tile is 16 rows of 64 bytes. Loaded at the start of every work item: the calling thread
// may run other AMX code (oneDNN's) between our calls, with its own configuration.
CAT_AI void load_config() {
  TileConfig c;
  for (int i = 0; i < 8; ++i) {
    c.colsb[i] = 64;
    c.rows[i] = 16;
  }
  _tile_loadconfig(&c);
}

// Tile ops on C tile 4 + MT. GCC's tile intrinsics paste their tile numbers into the assembly
// text, so each number must be a literal.
#define CAT_ON_C(MT, OP)              \
  if constexpr (MT == 0) OP(4);       \
  else if constexpr (MT == 1) OP(5);  \
  else if constexpr (MT == 2) OP(6);  \
  else OP(7)
template <int MT>
CAT_AI void c_zero() {
#define CAT_OP(T) _tile_zero(T)
  CAT_ON_C(MT, CAT_OP);
#undef CAT_OP
}
template <int MT>
CAT_AI void c_store(float* c) {
#define CAT_OP(T) _tile_stored(T, c, 64)
  CAT_ON_C(MT, CAT_OP);
#undef CAT_OP
}
// C tile MT += piece P (tile P) x codes (tile 3).
template <int MT, int P>
CAT_AI void c_dot() {
#define CAT_OP(T)                                      \
  if constexpr (P == 0) _tile_dpbf16ps(T, 0, 3);       \
  else if constexpr (P == 1) _tile_dpbf16ps(T, 1, 3);  \
  else _tile_dpbf16ps(T, 2, 3)
  CAT_ON_C(MT, CAT_OP);
#undef CAT_OP
}
#undef CAT_ON_C

// Code of value V (0..31) of a block for the 16 rows of a tile (word w of the rows at wp + 16 w).
template <int BITS, int V>
CAT_AI __m512i code(const int32_t* wp) {
  constexpr int kPos = BITS * V, kWord = kPos / 32, kOff = kPos % 32;
  __m512i w = _mm512_srli_epi32(_mm512_loadu_si512(wp + kWord * 16), kOff);
  if constexpr (kOff + BITS > 32)
    w = _mm512_or_si512(w, _mm512_slli_epi32(_mm512_loadu_si512(wp + (kWord + 1) * 16), 32 - kOff));
  if constexpr (kOff + BITS < 32 || kOff + BITS > 32) w = _mm512_and_si512(w, _mm512_set1_epi32((1 << BITS) - 1));
  return w;
}

// One block's codes minus the zero points (z: one per row of the tile) as the tile operand:
// row i of b = 16 dwords holding bf16(q - z) of columns 2i (low half) and 2i + 1 (high half).
// q - z is an integer of magnitude <= 255, so its float's upper half is its bfloat16, exactly.
template <int BITS>
CAT_AI void decode_block(const int32_t* wp, __m512i z, uint32_t* b) {
  unroll<16>([&](auto ii) CAT_AIL {
    constexpr int i = CAT_CV(ii);
    const __m512i f0 = _mm512_castps_si512(_mm512_cvtepi32_ps(_mm512_sub_epi32(code<BITS, 2 * i>(wp), z)));
    const __m512i f1 = _mm512_castps_si512(_mm512_cvtepi32_ps(_mm512_sub_epi32(code<BITS, 2 * i + 1>(wp), z)));
    _mm512_store_si512(b + i * 16, _mm512_mask_blend_epi16(static_cast<__mmask32>(0xAAAAAAAAu),
                                                           _mm512_srli_epi32(f0, 16), f1));
  });
}

// Scales of group g for the 16 rows of tile t (padded rows: 0, so they add nothing).
CAT_AI __m512 group_scales(const GemmPlan& p, int64_t t, int rows, int64_t g) {
  alignas(64) float s[16];
  for (int r = 0; r < rows; ++r) s[r] = load_as_f32(p.w.scales, p.w.scale_dtype, (t * 16 + r) * p.ng + g);
  for (int r = rows; r < 16; ++r) s[r] = 0.0f;
  return _mm512_load_ps(s);
}

// Work item (tile t, split s, rows m0 .. m0 + mc of x, mc <= 64) with NT = ceil(mc / 16) row
// tiles and NP pieces per x value.
template <int BITS, int NT, int NP>
void item(const GemmPlan& p, int64_t t, int64_t s, int64_t m0, int64_t mc, float* part) {
  const int rows = static_cast<int>(p.w.n - t * 16 < 16 ? p.w.n - t * 16 : 16);
  const int32_t* tile_words = p.w.packed + t * p.nb * BITS * 16;
  // Piece i, rows 16 u .. 16 u + 16, block b: one contiguous 1 KB tile (see GemmPlan::xb).
  const int64_t plane = p.xb_rows * p.kp;
  const uint16_t* xa = p.xb + m0 * p.kp;
  alignas(64) float c[16 * 16];
  for (int64_t i = 0; i < mc * 16; ++i) part[i] = 0.0f;
  alignas(64) uint32_t b[16 * 16];
  load_config();
  for (int32_t si = p.split_begin[s]; si < p.split_begin[s + 1]; ++si) {
    const Segment seg = p.segments[si];
    const __m512i z = zero_codes<Ops, BITS>(p, t, seg.g);
    unroll<NT>([&](auto mt) CAT_AIL { c_zero<CAT_CV(mt)>(); });
    for (int32_t blk = seg.b0; blk < seg.b1; ++blk) {
      decode_block<BITS>(tile_words + static_cast<int64_t>(blk) * BITS * 16, z, b);
      _tile_loadd(3, b, 64);
      unroll<NT>([&](auto mti) CAT_AIL {
        constexpr int mt = CAT_CV(mti);
        const uint16_t* a = xa + mt * 16 * p.kp + blk * 512;
        _tile_loadd(0, a, 64);
        c_dot<mt, 0>();
        if constexpr (NP > 1) {
          _tile_loadd(1, a + plane, 64);
          c_dot<mt, 1>();
        }
        if constexpr (NP > 2) {
          _tile_loadd(2, a + 2 * plane, 64);
          c_dot<mt, 2>();
        }
      });
    }
    const __m512 sc = group_scales(p, t, rows, seg.g);
    unroll<NT>([&](auto mti) CAT_AIL {
      constexpr int mt = CAT_CV(mti);
      c_store<mt>(c);
      const int64_t r1 = mc - mt * 16 < 16 ? mc - mt * 16 : 16;
      float* y = part + mt * 16 * 16;
      for (int64_t r = 0; r < r1; ++r)
        _mm512_storeu_ps(y + r * 16, _mm512_fmadd_ps(sc, _mm512_load_ps(c + r * 16), _mm512_loadu_ps(y + r * 16)));
    });
  }
  _tile_release();
}

template <int BITS, int NP>
void item_np(const GemmPlan& p, int64_t t, int64_t s, int64_t m0, int64_t mc, float* part) {
  switch ((mc + 15) / 16) {
    case 1: item<BITS, 1, NP>(p, t, s, m0, mc, part); break;
    case 2: item<BITS, 2, NP>(p, t, s, m0, mc, part); break;
    case 3: item<BITS, 3, NP>(p, t, s, m0, mc, part); break;
    default: item<BITS, 4, NP>(p, t, s, m0, mc, part); break;
  }
}

template <int BITS>
void item_bits(const GemmPlan& p, int64_t t, int64_t s, int64_t m0, int64_t mc, float* part) {
  switch (p.xb_pieces) {
    case 1: item_np<BITS, 1>(p, t, s, m0, mc, part); break;
    case 2: item_np<BITS, 2>(p, t, s, m0, mc, part); break;
    default: item_np<BITS, 3>(p, t, s, m0, mc, part); break;
  }
}

}  // namespace

void amx_gemm_item(const GemmPlan& p, int64_t t, int64_t s, int64_t m0, int64_t mc, float* part) {
  switch (p.w.bits) {
    case 2: item_bits<2>(p, t, s, m0, mc, part); break;
    case 3: item_bits<3>(p, t, s, m0, mc, part); break;
    case 4: item_bits<4>(p, t, s, m0, mc, part); break;
    default: item_bits<8>(p, t, s, m0, mc, part); break;
  }
}

void amx_split_row(const float* row, int64_t kp, uint16_t* h, uint16_t* l, uint16_t* r) {
  const __m512i hi = _mm512_set1_epi32(static_cast<int>(0xFFFF0000u));
  const __m512i exp = _mm512_set1_epi32(0x7F800000);
  for (int64_t j = 0; j < kp; j += 16) {
    const __m512 x = _mm512_loadu_ps(row + j);
    const __m512i xi = _mm512_castps_si512(x);
    // Infinities and NaNs go whole into h (a NaN made quiet: truncating its payload could
    // leave an infinity) with l = r = 0, so they reach the sums as in float32 arithmetic.
    const __mmask16 special = _mm512_cmpeq_epi32_mask(_mm512_and_si512(xi, exp), exp);
    const __mmask16 nan = _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
    __m512i hv = _mm512_and_si512(xi, hi);
    hv = _mm512_mask_mov_epi32(hv, nan, _mm512_set1_epi32(0x7FC00000));
    const __m512 d1 = _mm512_maskz_sub_ps(static_cast<__mmask16>(~special), x, _mm512_castsi512_ps(hv));
    const __m512i lv = _mm512_and_si512(_mm512_castps_si512(d1), hi);
    const __m512 d2 = _mm512_sub_ps(d1, _mm512_castsi512_ps(lv));
    // Column j of the row goes to its block's tile row: 512 values per block of 32 columns.
    const int64_t o = (j >> 5) * 512 + (j & 31);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(h + o), _mm512_cvtepi32_epi16(_mm512_srli_epi32(hv, 16)));
    if (l) _mm256_storeu_si256(reinterpret_cast<__m256i*>(l + o), _mm512_cvtepi32_epi16(_mm512_srli_epi32(lv, 16)));
    if (r)
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(r + o),
                          _mm512_cvtepi32_epi16(_mm512_srli_epi32(_mm512_castps_si512(d2), 16)));
  }
}

#undef CAT_CV
#undef CAT_AI
#undef CAT_AIL

}  // namespace cat::cpu::detail
