// Host emulation of the v2 CUDA GEMV (csrc/cuda/gemv_v2.cu), built by tests/test_gemv_arith.py
// with the host C++ compiler. Everything that decides *which* data meets *which* (the plan, the
// chunk of each warp, the words each lane loads, the bit decode, the x pairing, the mma operand
// registers, the output mapping, groups, scales and zero points) comes from the kernels' own
// header, gemv_arith.h; only the hardware is modelled here: a 16-bit float's value, the fma2
// (exact by construction: checked), and mma.m16n8k16 as PTX defines its fragments. Sums are in
// double, so the result is the contract's exact value up to double rounding.
//
//   emulate run  IN OUT   IN: header (7 x int64: bits, bf16, n, k, m, group_size, has_zeros), then
//                         packed int32, scales float32 [n, n_groups] (their values), zeros int32
//                         (if any), x uint16 bits [m, k]. OUT: y float64 [m, n].
//   emulate plan n k group_size        -> "unit warps splits units chunks" then one "b0 b1" per chunk
//   emulate legacy m n k               -> "splits per_split cap_blocks"
// Exit code 3 with a message when a decoded value is not exact (a broken decode).
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "../../csrc/cuda/gemv_arith.h"

using namespace cat::gemv;

namespace {

[[noreturn]] void fail(const char* msg) {
  std::fprintf(stderr, "emulate: %s\n", msg);
  std::exit(3);
}

double h16(uint32_t bits, bool bf16) {
  bits &= 0xFFFF;
  if (bf16) {
    uint32_t f = bits << 16;
    float v;
    std::memcpy(&v, &f, 4);
    return v;
  }
  const int sign = bits >> 15, e = (bits >> 10) & 31, m = bits & 1023;
  double v;
  if (e == 0) v = std::ldexp(m, -24);
  else if (e == 31) v = m ? NAN : INFINITY;
  else v = std::ldexp(1024 + m, e - 25);
  return sign ? -v : v;
}

bool representable(double v, bool bf16) {
  if (v == 0) return true;
  int e;
  const double fr = std::frexp(std::fabs(v), &e);  // [0.5, 1)
  const double sc = std::ldexp(fr, bf16 ? 8 : 11);
  return sc == std::floor(sc) && std::fabs(v) < 65504.0;
}

// The kernel's fma2 on a magic pair (exact by design: verified here).
double fma_half(double h, int p, double bias, bool bf16) {
  const double r = h * std::ldexp(1.0, -p) + bias;
  if (!representable(bias, bf16)) fail("fma2 bias not exact in the 16-bit type");
  if (!representable(r, bf16) || r != std::floor(r)) fail("fma2 result is not an exact integer");
  return r;
}

struct Problem {
  int bits;
  bool bf16;
  int64_t n, k, m, gs, ng, nb, tiles;
  std::vector<int32_t> packed, zeros;
  std::vector<float> scales;
  std::vector<uint16_t> x;
  bool has_zeros;
};

template <int BITS, bool BF16>
void run(const Problem& P, std::vector<double>& y) {
  const Plan p = plan(P.n, P.k, P.gs);
  const int64_t nb = P.nb;
  const int64_t zw = zero_row_words(P.ng, BITS);
  for (int64_t t = 0; t < P.tiles; ++t) {
    std::vector<double> tile_sum(16 * 8, 0.0);
    for (int64_t j = 0; j < p.chunks; ++j) {
      int64_t b, b1;
      chunk_range(p, j, b, b1);
      double acc[32][4] = {};
      while (b < b1) {
        const int64_t e = segment_end(b, P.gs, nb, b1);
        const int64_t g = group_of(b, P.gs);
        double D[16][8] = {};
        for (int64_t bb = b; bb < e; ++bb) {
          const bool in = bb < nb;
          // per lane: decoded pairs of both rows and the x pairs
          uint32_t B2[32][2][4];  // [lane][row][pair]: an id (lane, row, pair) standing for the register
          double vals[32][2][4][2];  // [lane][row][pair][half] = q - z
          uint32_t xpv[32][4];
          for (int lane = 0; lane < 32; ++lane) {
            const int c = lane_quad(lane), r0 = lane_row0(lane), xm = lane >> 2;
            uint32_t w[2][2] = {};  // [row][i]
            for (int i = 0; i < lane_words<BITS>(); ++i)
              for (int r = 0; r < 2; ++r)
                w[r][i] = in ? uint32_t(P.packed[word_index(t, bb, lane_word<BITS>(c, i), r0 + r, nb, BITS)]) : 0u;
            uint32_t z[2];
            for (int r = 0; r < 2; ++r) {
              if (!P.has_zeros) {
                z[r] = 1u << (BITS - 1);
              } else {
                const int off = zero_off(g, BITS);
                const int64_t base = (t * zw + zero_word(g, BITS)) * kTile + r0 + r;
                const uint32_t lo = uint32_t(P.zeros[base]);
                const uint32_t hi = off + BITS > 32 ? uint32_t(P.zeros[base + kTile]) : 0u;
                z[r] = zero_value(lo, hi, off, BITS);
              }
            }
            for (int r = 0; r < 2; ++r) {
              const int NW = lane_words<BITS>();
              if constexpr (decode_f32<BITS, BF16>()) {
                uint32_t f[8];
                decode_f32_8(w[r][0], w[r][NW - 1], f);
                for (int q = 0; q < 4; ++q) {
                  const PairInfo pi = pair_info<BITS, BF16>(q);
                  float lo, hi;
                  std::memcpy(&lo, &f[pi.lo], 4);
                  std::memcpy(&hi, &f[pi.hi], 4);
                  vals[lane][r][q][0] = double(lo) - (8388608.0 + z[r]);
                  vals[lane][r][q][1] = double(hi) - (8388608.0 + z[r]);
                }
              } else {
                uint32_t h[4];
                decode_pairs<BITS, BF16>(w[r][0], w[r][NW - 1], c, h);
                for (int q = 0; q < 4; ++q) {
                  const PairInfo pi = pair_info<BITS, BF16>(q);
                  if (pi.plo + BITS > mantissa_bits<BF16>() || pi.phi + BITS > mantissa_bits<BF16>())
                    fail("a code does not fit the mantissa at its position");
                  const double M = magic_value<BF16>();
                  const uint32_t bb2 = bias_bits<BITS, BF16>(q, z[r]);  // the kernel's bias pair
                  const double blo = h16(bb2, BF16), bhi = h16(bb2 >> 16, BF16);
                  if (blo != -(M * std::ldexp(1.0, -pi.plo) + z[r]) || bhi != -(M * std::ldexp(1.0, -pi.phi) + z[r]))
                    fail("bias_bits is not -(M 2^-p + z)");
                  vals[lane][r][q][0] = fma_half(h16(h[q], BF16), pi.plo, blo, BF16);
                  vals[lane][r][q][1] = fma_half(h16(h[q] >> 16, BF16), pi.phi, bhi, BF16);
                }
              }
              for (int q = 0; q < 4; ++q) {
                if (std::fabs(vals[lane][r][q][0]) > 255 || std::fabs(vals[lane][r][q][1]) > 255)
                  fail("decoded q - z out of range");
              }
            }
            // Register images: pair q of row r as an index (lane, r, q); the value lives in vals.
            for (int q = 0; q < 4; ++q) {
              B2[lane][0][q] = uint32_t((lane << 8) | (0 << 4) | q);
              B2[lane][1][q] = uint32_t((lane << 8) | (1 << 4) | q);
            }
            // x: columns lane_col(bb, lane, 0..7) of row xm, pairs as the kernel builds them
            uint32_t xr[4] = {};
            if (in && xm < P.m) {
              for (int e2 = 0; e2 < 8; ++e2) {
                const int64_t col = lane_col(bb, lane, e2);
                const uint32_t v = col < P.k ? P.x[xm * P.k + col] : 0u;
                xr[e2 >> 1] |= v << (16 * (e2 & 1));
              }
            }
            for (int q = 0; q < 4; ++q) xpv[lane][q] = x_pair<BITS, BF16>(xr, q);
          }
          // the two mma slices, with PTX's fragment layout
          for (int s = 0; s < 2; ++s) {
            double Am[16][16] = {}, Bm[16][8] = {};
            for (int lane = 0; lane < 32; ++lane) {
              const int gq = lane >> 2, c = lane & 3;
              uint32_t hA[4], hB[4], a[4], bx[2];
              for (int q = 0; q < 4; ++q) {
                hA[q] = B2[lane][0][q];
                hB[q] = B2[lane][1][q];
              }
              mma_operands(hA, hB, xpv[lane], s, a, bx);
              auto val = [&](uint32_t id, int half) {
                return vals[id >> 8][(id >> 4) & 15][id & 15][half];
              };
              const int rows[4] = {gq, gq + 8, gq, gq + 8};
              const int ks[4] = {2 * c, 2 * c, 2 * c + 8, 2 * c + 8};
              for (int i = 0; i < 4; ++i) {
                if ((a[i] >> 8) != uint32_t(lane)) fail("an A operand from another lane");
                Am[rows[i]][ks[i]] = val(a[i], 0);
                Am[rows[i]][ks[i] + 1] = val(a[i], 1);
              }
              Bm[2 * c][gq] = h16(bx[0], BF16);
              Bm[2 * c + 1][gq] = h16(bx[0] >> 16, BF16);
              Bm[2 * c + 8][gq] = h16(bx[1], BF16);
              Bm[2 * c + 9][gq] = h16(bx[1] >> 16, BF16);
            }
            for (int r = 0; r < 16; ++r)
              for (int nn = 0; nn < 8; ++nn) {
                double sum = 0;
                for (int kk = 0; kk < 16; ++kk) sum += Am[r][kk] * Bm[kk][nn];
                D[r][nn] += sum;
              }
          }
        }
        // flush: acc += s * d, the lane's d0..d3 per PTX's accumulator layout
        for (int lane = 0; lane < 32; ++lane) {
          const int gq = lane >> 2, c = lane & 3;
          const double d[4] = {D[gq][2 * c], D[gq][2 * c + 1], D[gq + 8][2 * c], D[gq + 8][2 * c + 1]};
          for (int i = 0; i < 4; ++i) {
            const int64_t row = t * kTile + out_row(lane, i);
            const double sc = row < P.n ? double(P.scales[row * P.ng + g]) : 0.0;
            acc[lane][i] += sc * d[i];
          }
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

template <class T>
void read_into(FILE* f, std::vector<T>& v, size_t count) {
  v.resize(count);
  if (count && std::fread(v.data(), sizeof(T), count, f) != count) fail("short input file");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc >= 5 && !std::strcmp(argv[1], "plan")) {
    const int64_t n = std::atoll(argv[2]), k = std::atoll(argv[3]), gs = std::atoll(argv[4]);
    const Plan p = plan(n, k, gs);
    std::printf("%d %d %d %lld %lld\n", p.unit, p.warps, p.splits, (long long)p.units, (long long)p.chunks);
    for (int64_t j = 0; j < p.chunks; ++j) {
      int64_t b0, b1;
      chunk_range(p, j, b0, b1);
      std::printf("%lld %lld\n", (long long)b0, (long long)b1);
    }
    return 0;
  }
  if (argc >= 5 && !std::strcmp(argv[1], "legacy")) {
    const int64_t m = std::atoll(argv[2]), n = std::atoll(argv[3]), k = std::atoll(argv[4]);
    const LegacyPlan p = legacy_plan(m, n, k);
    std::printf("%d %lld %lld\n", p.splits, (long long)p.per_split, (long long)legacy_smem_cap_blocks(m));
    return 0;
  }
  if (argc < 4 || std::strcmp(argv[1], "run")) fail("usage: emulate run IN OUT | plan n k g | legacy m n k");
  FILE* f = std::fopen(argv[2], "rb");
  if (!f) fail("cannot open input");
  int64_t hdr[7];
  if (std::fread(hdr, 8, 7, f) != 7) fail("short header");
  Problem P;
  P.bits = int(hdr[0]);
  P.bf16 = hdr[1] != 0;
  P.n = hdr[2];
  P.k = hdr[3];
  P.m = hdr[4];
  P.gs = hdr[5];
  P.has_zeros = hdr[6] != 0;
  P.ng = P.k / P.gs;
  P.nb = cdiv(P.k, kBlock);
  P.tiles = cdiv(P.n, kTile);
  if (P.m < 1 || P.m > kMaxM) fail("m must be 1..8");
  if (!v2_shape_ok(P.k)) fail("the v2 kernel needs K % 32 == 0 (gemm() takes the legacy GEMV otherwise)");
  read_into(f, P.packed, size_t(P.tiles * P.nb * P.bits * kTile));
  read_into(f, P.scales, size_t(P.n * P.ng));
  if (P.has_zeros) read_into(f, P.zeros, size_t(P.tiles * zero_row_words(P.ng, P.bits) * kTile));
  read_into(f, P.x, size_t(P.m * P.k));
  std::fclose(f);
  std::vector<double> y(size_t(P.m * P.n), 0.0);
  const int key = P.bits * 2 + (P.bf16 ? 1 : 0);
  switch (key) {
    case 4: run<2, false>(P, y); break;
    case 5: run<2, true>(P, y); break;
    case 6: run<3, false>(P, y); break;
    case 7: run<3, true>(P, y); break;
    case 8: run<4, false>(P, y); break;
    case 9: run<4, true>(P, y); break;
    case 16: run<8, false>(P, y); break;
    case 17: run<8, true>(P, y); break;
    default: fail("bits must be 2, 3, 4 or 8");
  }
  FILE* o = std::fopen(argv[3], "wb");
  if (!o) fail("cannot open output");
  std::fwrite(y.data(), 8, y.size(), o);
  std::fclose(o);
  return 0;
}
