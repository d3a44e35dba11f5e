// The v2 CUDA GEMV (csrc/cuda/gemv_v2.cu), lane by lane: the plan, each warp's chunk, the words
// each lane loads, the decode, the x pairing, the mma operand registers, the output mapping,
// groups, scales and zero points all come from the kernel's own headers (gemv_arith.h,
// decode.h). Modelled here: the fma2 of the decode (exact by construction: checked) and the mma
// (model.h). Sums are in double, so the result is the contract's exact value up to double
// rounding.
#include <cmath>
#include <cstring>

#include "cuda/gemv_arith.h"
#include "model.h"

namespace emu {
namespace {

using namespace cat::gemv;

bool representable(double v, bool bf16) {
  if (v == 0) return true;
  int e;
  const double fr = std::frexp(std::fabs(v), &e);  // [0.5, 1)
  const double sc = std::ldexp(fr, bf16 ? 8 : 11);
  return sc == std::floor(sc) && std::fabs(v) < 65504.0;
}

double h16(uint32_t bits, bool bf16) { return dec::h16_to_float(static_cast<uint16_t>(bits), bf16); }

// The kernel's fma2 on one half of a magic pair (exact by design: verified here).
double fma_half(double h, int p, double bias, bool bf16) {
  const double r = h * std::ldexp(1.0, -p) + bias;
  REQUIRE(representable(bias, bf16), "fma2 bias not exact in the 16-bit type");
  REQUIRE(representable(r, bf16) && r == std::floor(r), "fma2 result is not an exact integer");
  return r;
}

// Two exact small integers (|v| <= 255) as the 16-bit pair the kernel's registers hold.
uint32_t pair_bits(double lo, double hi, bool bf16) {
  REQUIRE(std::fabs(lo) <= 255 && std::fabs(hi) <= 255, "decoded q - z out of range");
  return uint32_t(dec::float_to_h16(float(lo), bf16)) | uint32_t(dec::float_to_h16(float(hi), bf16)) << 16;
}

// Zero point of group g of the tile's physical row r (format.md "Zero points").
uint32_t zero_point(const Problem& P, int bits, int64_t t, int r, int64_t g) {
  if (!P.has_zeros) return 1u << (bits - 1);
  const dec::StreamPos z = dec::stream_pos(g, bits);
  const int64_t base = (t * dec::zero_row_words(P.n_groups, bits) + z.word) * kTile + r;
  const uint32_t lo = uint32_t(P.zeros[base]);
  const uint32_t hi = z.bit + bits > 32 ? uint32_t(P.zeros[base + kTile]) : 0u;
  return dec::field(lo, hi, uint32_t(z.bit), bits);
}

// One row's 4 registers of q - z pairs, decoded from its words as the kernel does.
template <int BITS, bool BF16>
void decode_row(uint32_t w0, uint32_t w1, int c, uint32_t z, uint32_t (&regs)[4]) {
  if constexpr (dec::f32_route<BITS, BF16>()) {
    uint32_t f[8];
    dec::gemv_decode_f32(w0, w1, f);
    for (int q = 0; q < 4; ++q) {
      const dec::PairInfo pi = dec::pair_info<BITS, BF16>(q);
      regs[q] = pair_bits(double(dec::as_float(f[pi.lo])) - (8388608.0 + z),
                          double(dec::as_float(f[pi.hi])) - (8388608.0 + z), BF16);
    }
  } else {
    uint32_t h[4];
    dec::gemv_decode<BITS, BF16>(w0, w1, c, h);
    for (int q = 0; q < 4; ++q) {
      const dec::PairInfo pi = dec::pair_info<BITS, BF16>(q);
      REQUIRE(pi.plo + BITS <= dec::mantissa_bits<BF16>() && pi.phi + BITS <= dec::mantissa_bits<BF16>(),
              "a code does not fit the mantissa at its position");
      const double M = dec::magic_value<BF16>();
      const uint32_t bias = dec::bias_bits<BITS, BF16>(q, z);
      const double blo = h16(bias, BF16), bhi = h16(bias >> 16, BF16);
      REQUIRE(blo == -(M * std::ldexp(1.0, -pi.plo) + z) && bhi == -(M * std::ldexp(1.0, -pi.phi) + z),
              "bias_bits is not -(M 2^-p + z)");
      regs[q] = pair_bits(fma_half(h16(h[q], BF16), pi.plo, blo, BF16),
                          fma_half(h16(h[q] >> 16, BF16), pi.phi, bhi, BF16), BF16);
    }
  }
}

// Block bb of tile t, segment group g: the two mma slices of every lane added to D.
template <int BITS, bool BF16>
void block(const Problem& P, int64_t t, int64_t bb, int64_t g, double (&D)[16][8]) {
  const bool in = bb < P.n_blocks;  // virtual blocks past K: zero codes, zero x
  uint32_t hA[32][4], hB[32][4], xp[32][4];
  for (int lane = 0; lane < 32; ++lane) {
    const int c = lane_quad(lane), r0 = lane_row0(lane), xm = lane >> 2;
    uint32_t w[2][2] = {};  // [row][i]
    for (int i = 0; i < lane_words<BITS>(); ++i)
      for (int r = 0; r < 2; ++r)
        w[r][i] = in ? uint32_t(P.packed[word_index(t, bb, lane_word<BITS>(c, i), r0 + r, P.n_blocks, BITS)]) : 0u;
    const int NW = lane_words<BITS>();
    decode_row<BITS, BF16>(w[0][0], w[0][NW - 1], c, zero_point(P, BITS, t, r0, g), hA[lane]);
    decode_row<BITS, BF16>(w[1][0], w[1][NW - 1], c, zero_point(P, BITS, t, r0 + 1, g), hB[lane]);
    // x: columns lane_col(bb, lane, 0..7) of row xm, paired as the kernel pairs them
    uint32_t xr[4] = {};
    if (in && xm < P.m) {
      for (int e = 0; e < 8; ++e) {
        const int64_t col = lane_col(bb, lane, e);
        const uint32_t v = col < P.k ? P.x[xm * P.k + col] : 0u;
        xr[e >> 1] |= v << (16 * (e & 1));
      }
    }
    for (int q = 0; q < 4; ++q) xp[lane][q] = dec::x_pair<BITS, BF16>(xr, q);
  }
  for (int s = 0; s < 2; ++s) {
    uint32_t a[32][4], b[32][2];
    for (int lane = 0; lane < 32; ++lane) mma_operands(hA[lane], hB[lane], xp[lane], s, a[lane], b[lane]);
    double d[16][8];
    mma_exact(a, b, BF16, d);
    for (int r = 0; r < 16; ++r)
      for (int nn = 0; nn < 8; ++nn) D[r][nn] += d[r][nn];
  }
}

template <int BITS, bool BF16>
void run(const Problem& P, std::vector<double>& y) {
  const Plan p = plan(P.n, P.k, P.group_size);
  for (int64_t t = 0; t < P.n_tiles; ++t) {
    std::vector<double> tile_sum(16 * 8, 0.0);
    for (int64_t j = 0; j < p.chunks; ++j) {
      int64_t b, b1;
      chunk_range(p, j, b, b1);
      double acc[32][4] = {};
      while (b < b1) {
        const int64_t e = segment_end(b, P.group_size, P.n_blocks, b1);
        const int64_t g = dec::group_of(b, P.group_size);
        double D[16][8] = {};
        for (int64_t bb = b; bb < e; ++bb) block<BITS, BF16>(P, t, bb, g, D);
        // flush: acc += s * d, the lane's d0..d3 per PTX's accumulator layout
        for (int lane = 0; lane < 32; ++lane)
          for (int i = 0; i < 4; ++i) {
            int row, col;
            c_elem(lane, i, row, col);
            const int64_t n = t * kTile + out_row(lane, i);
            const double sc = n < P.n ? double(P.scale(n, g)) : 0.0;
            acc[lane][i] += sc * D[row][col];
          }
        b = e;
      }
      for (int lane = 0; lane < 32; ++lane)
        for (int i = 0; i < 4; ++i) tile_sum[out_row(lane, i) * 8 + out_m(lane, i)] += acc[lane][i];
    }
    for (int r = 0; r < 16; ++r)
      for (int mm = 0; mm < 8; ++mm) {
        const int64_t row = t * kTile + r;
        if (row < P.n && mm < P.m) y[mm * P.n + row] = tile_sum[r * 8 + mm];
      }
  }
}

}  // namespace

std::vector<double> gemv_run(const Problem& P) {
  REQUIRE(P.m >= 1 && P.m <= kMaxM, "m must be 1..8");
  REQUIRE(v2_shape_ok(P.k), "the v2 kernel needs K % 32 == 0 (gemm() takes the legacy GEMV otherwise)");
  std::vector<double> y(size_t(P.m * P.n), 0.0);
  dec::dispatch_bits_bf16(P.bits, P.bf16, "emulate", [&](auto bits, auto bf16) {
    run<decltype(bits)::value, decltype(bf16)::value>(P, y);
  });
  return y;
}

}  // namespace emu
