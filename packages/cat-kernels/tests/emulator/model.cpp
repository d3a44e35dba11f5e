// The hardware models and the problem file (model.h).
#include "model.h"

#include <cstdio>
#include <utility>

namespace emu {

void a_elem(int l, int r, int e, int& row, int& col) {
  const int g = l >> 2, t = l & 3;
  row = g + ((r == 1 || r == 3) ? 8 : 0);
  col = 2 * t + e + (r >= 2 ? 8 : 0);
}
void b_elem(int l, int r, int e, int& k, int& n) {
  const int g = l >> 2, t = l & 3;
  k = 2 * t + e + (r == 1 ? 8 : 0);
  n = g;
}
void c_elem(int l, int i, int& row, int& col) {
  const int g = l >> 2, t = l & 3;
  row = g + (i >= 2 ? 8 : 0);
  col = 2 * t + (i & 1);
}

// Fills m[i][j] from every lane's register halves through `map`; each element exactly once.
template <int R, int C, int REGS, class Map>
static void gather(const uint32_t (&regs)[32][REGS], bool bf16, Map map, double (&m)[R][C], const char* what) {
  int seen[R][C] = {};
  for (int l = 0; l < 32; ++l)
    for (int r = 0; r < REGS; ++r)
      for (int e = 0; e < 2; ++e) {
        int i, j;
        map(l, r, e, i, j);
        m[i][j] = dec::h16_to_float(static_cast<uint16_t>(regs[l][r] >> (16 * e)), bf16);
        ++seen[i][j];
      }
  for (int i = 0; i < R; ++i)
    for (int j = 0; j < C; ++j) REQUIRE(seen[i][j] == 1, std::string(what) + " fragment map is not a bijection");
}

void mma_exact(const uint32_t (&a)[32][4], const uint32_t (&b)[32][2], bool bf16, double (&d)[16][8]) {
  double A[16][16], B[16][8];
  gather(a, bf16, a_elem, A, "A");
  gather(b, bf16, b_elem, B, "B");
  for (int row = 0; row < 16; ++row)
    for (int col = 0; col < 8; ++col) {
      double s = 0;
      for (int kk = 0; kk < 16; ++kk) s += A[row][kk] * B[kk][col];
      d[row][col] = s;
    }
}

template <typename T>
static void read_vec(FILE* f, std::vector<T>& v, size_t n) {
  v.resize(n);
  if (n && std::fread(v.data(), sizeof(T), n, f) != n) throw std::runtime_error("short input file");
}

Problem read_problem(const char* path) {
  FILE* f = std::fopen(path, "rb");
  if (!f) throw std::runtime_error("cannot open input");
  int64_t h[16];
  if (std::fread(h, 8, 16, f) != 16) throw std::runtime_error("short header");
  Problem P;
  P.bits = int(h[0]);
  P.bf16 = h[1] != 0;
  P.m = h[2];
  P.n = h[3];
  P.k = h[4];
  P.group_size = h[5];
  P.n_groups = h[6];
  P.has_zeros = h[7] != 0;
  P.scale_dtype = int(h[8]);
  P.x_vec_ok = h[9] != 0;
  P.aligned16 = h[10] != 0;
  P.n_blocks = dec::cdiv(P.k, dec::kBlock);
  P.n_tiles = dec::cdiv(P.n, dec::kTile);
  read_vec(f, P.x, size_t(P.m * P.k));
  read_vec(f, P.packed, size_t(P.n_tiles * P.n_blocks * P.bits * dec::kTile));
  read_vec(f, P.scales, size_t(P.n * P.n_groups));
  if (P.has_zeros) read_vec(f, P.zeros, size_t(P.n_tiles * dec::zero_row_words(P.n_groups, P.bits) * dec::kTile));
  std::fclose(f);
  return P;
}

void write_file(const char* path, const void* data, size_t bytes) {
  FILE* o = std::fopen(path, "wb");
  if (!o) throw std::runtime_error("cannot open output");
  const bool ok = std::fwrite(data, 1, bytes, o) == bytes;
  if (std::fclose(o) != 0 || !ok) throw std::runtime_error("cannot write output");
}

}  // namespace emu
