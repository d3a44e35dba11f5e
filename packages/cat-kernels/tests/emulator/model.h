// What the emulator models itself rather than taking from the kernels' headers: the hardware
// (mma.m16n8k16 fragments as the PTX ISA defines them, exact 16-bit values) and the problem file
// the Python tests write. Everything that decides which data meets which comes from the kernels'
// own headers (csrc/cuda/decode.h, gemv_arith.h, tiled_v2_math.h).
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "cuda/decode.h"

namespace emu {

namespace dec = cat::decode;

#define REQUIRE(c, msg)                                                                   \
  do {                                                                                    \
    if (!(c)) throw std::runtime_error(std::string("emulation check failed: ") + (msg)); \
  } while (0)

// ------------------------------------------------------------------ mma.m16n8k16 (PTX ISA)

// "Matrix Fragments for mma.m16n8k16 with floating point type", g = lane / 4, t = lane % 4:
// A (16 x 16, row): register r, half e of lane l -> (row, col).
void a_elem(int l, int r, int e, int& row, int& col);
// B (16 x 8, col): register r, half e of lane l -> (k, n).
void b_elem(int l, int r, int e, int& k, int& n);
// C/D (16 x 8, f32): element i of lane l -> (row, col).
void c_elem(int l, int i, int& row, int& col);

// The exact product of one warp's mma: d[row][col] = sum over k = 0..15 (in that order, in
// double) of A[row][k] B[k][col], the 16-bit operands read from every lane's registers through
// the fragment maps (checked to be bijections). How the hardware adds it to C is the caller's.
void mma_exact(const uint32_t (&a)[32][4], const uint32_t (&b)[32][2], bool bf16, double (&d)[16][8]);

// ------------------------------------------------------------------ the problem file

// IN: int64 header [bits, bf16, m, n, k, group_size (resolved), n_groups, has_zeros, scale_dtype
// (0 f32, 1 f16, 2 bf16), x_vec_ok, packed_aligned16, 5 x reserved], then x (uint16 bits [m, k]),
// packed (int32), scales (uint32 raw bits [n, n_groups]), zeros (int32, if any).
struct Problem {
  int bits = 4;
  bool bf16 = false;
  int64_t m = 0, n = 0, k = 0, group_size = 0, n_groups = 0;
  bool has_zeros = false;
  int scale_dtype = 0;
  bool x_vec_ok = true, aligned16 = true;
  std::vector<uint16_t> x;
  std::vector<int32_t> packed, zeros;
  std::vector<uint32_t> scales;
  int64_t n_blocks = 0, n_tiles = 0;

  float scale(int64_t row, int64_t g) const {
    return dec::scale_from_raw(scales[row * n_groups + g], scale_dtype);
  }
};
Problem read_problem(const char* path);
void write_file(const char* path, const void* data, size_t bytes);

// ------------------------------------------------------------------ the two kernels

// The v2 GEMV's y [m, n] in double: every product exact, sums in double.
std::vector<double> gemv_run(const Problem& p);
// The v2 tiled kernel's fp32 result (before the final rounding to x's dtype) and its plan.
struct TiledResult {
  int64_t splits = 1, per_split = 0, mt = 0;
  std::vector<float> y_raw;  // [m, n]
};
TiledResult tiled_run(const Problem& p);
// The tiled kernel's pieces one by one (decode, fragment maps, swizzle, copies, groups, plan).
void tiled_selftest();

}  // namespace emu
