// Standalone timing loop around cat::cpu::gemm (no Python, no binding overhead): random codes,
// float16 scales, asymmetric zero points, float32 x. Prints the best and median per-call time of
// 7 repetitions, ns-derived cycles per 16 weights at a nominal 3.5 GHz, the error against a
// float64 reference (skipped with NOREF=1) and a hash of the output (bit-identity checks).
// Build with build.sh.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>
#include <random>
#include <algorithm>
#include <cmath>
#include "cat/ops.h"
#include "threadpool.h"
#include "internal.h"
#include "common.h"
using namespace cat;
int main(int argc, char** argv) {
  int64_t n = atoi(argv[1]), k = atoi(argv[2]); int bits = atoi(argv[3]); int64_t m = atoi(argv[4]);
  int threads = argc > 5 ? atoi(argv[5]) : 1; int64_t G = argc > 6 ? atoi(argv[6]) : 128;
  double target = argc > 7 ? atof(argv[7]) : 0.2;
  cpu::set_num_threads(threads);
  std::mt19937 rng(0);
  std::vector<uint8_t> codes(n * k);
  for (auto& c : codes) c = rng() & ((1 << bits) - 1);
  std::vector<int32_t> packed(packed_words(n, k, bits));
  cpu::pack(codes.data(), 1, n, k, bits, weight_row_words(k, bits), packed.data());
  int64_t ng = k / G;
  std::vector<uint16_t> scales(n * ng);
  std::vector<uint8_t> zc(n * ng);
  for (auto& s : scales) s = cpu::detail::f32_to_f16((rng() % 1000) * 1e-5f);
  for (auto& z : zc) z = rng() & ((1 << bits) - 1);
  std::vector<int32_t> zeros(ceil_div(n, kTileN) * zero_row_words(ng, bits) * kTileN);
  cpu::pack(zc.data(), 1, n, ng, bits, zero_row_words(ng, bits), zeros.data());
  QWeight w; w.packed = packed.data(); w.scales = scales.data(); w.scale_dtype = DType::f16;
  w.zeros = zeros.data(); w.bits = bits; w.n = n; w.k = k; w.group_size = G;
  std::vector<float> x(m * k), y(m * n);
  std::normal_distribution<float> nd;
  for (auto& v : x) v = nd(rng);
  // reference check
  std::vector<float> wd(n * k);
  cpu::dequantize(w, wd.data(), DType::f32);
  cpu::gemm(x.data(), DType::f32, m, w, y.data());
  double maxerr = 0, maxref = 0;
  const char* noref = getenv("NOREF");
  if (!(noref && *noref)) for (int64_t i = 0; i < m; ++i) for (int64_t j = 0; j < n; ++j) {
    double r = 0; for (int64_t c = 0; c < k; ++c) r += (double)x[i * k + c] * wd[j * k + c];
    maxerr = std::max(maxerr, std::fabs(r - y[i * n + j])); maxref = std::max(maxref, std::fabs(r));
  }
  uint64_t h = 1469598103934665603ull; for (float v : y) { uint32_t u; memcpy(&u, &v, 4); h = (h ^ u) * 1099511628211ull; }
  auto now = [] { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); };
  double t0 = now(); cpu::gemm(x.data(), DType::f32, m, w, y.data()); double dt = now() - t0;
  int64_t it = std::max<int64_t>(1, (int64_t)(target / 7 / std::max(dt, 1e-7)));
  std::vector<double> res;
  for (int r = 0; r < 7; ++r) { t0 = now(); for (int64_t i = 0; i < it; ++i) cpu::gemm(x.data(), DType::f32, m, w, y.data()); res.push_back((now() - t0) / it); }
  std::sort(res.begin(), res.end());
  double vec = (double)n * k / 16 * m;
  printf("%5ldx%-5ld b%d M%-2ld t%d G%ld: min %9.2f us  med %9.2f us  cyc/16w@3.5GHz(min) %.2f  relerr %.2e hash %016lx\n", n, k, bits, m, threads, G,
         res[0] * 1e6, res[3] * 1e6, res[0] * 3.5e9 / vec, maxref > 0 ? maxerr / maxref : 0.0, h);
}
