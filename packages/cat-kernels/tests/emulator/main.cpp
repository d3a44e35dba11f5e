// Host emulator of the v2 CUDA kernels (csrc/cuda/gemv_v2.cu, gemm_tiled_v2.cu), built by the
// kernel tests with the host C++ compiler against the kernels' own headers. One program for
// both kernels, since they share the format's decode (decode.h) and the hardware model
// (model.h).
//
//   emulate gemv IN OUT           IN: problem file (model.h); OUT: y float64 [m, n]
//   emulate gemv-plan N K G       -> "unit warps splits units chunks", then "b0 b1" per chunk
//   emulate legacy-plan M N K     -> "splits per_split cap_blocks" (the legacy GEMV's plan)
//   emulate tiled IN OUT          OUT: int64 [splits, per_split, mt], y_raw float32 [m, n] (the
//                                 fp32 result), y float32 [m, n] (its value rounded to x's dtype)
//   emulate tiled-selftest        the tiled kernel's pieces one by one; prints "selftest ok"
// Exit code 2 with a message on stderr when a check fails (a broken index or decode).
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "cuda/gemv_arith.h"
#include "model.h"

namespace {

using emu::dec::float_to_h16;
using emu::dec::h16_to_float;

template <class T>
void append(std::vector<char>& out, const T* data, size_t n) {
  const char* p = reinterpret_cast<const char*>(data);
  out.insert(out.end(), p, p + n * sizeof(T));
}

int gemv_plan(int64_t n, int64_t k, int64_t group_size) {
  const cat::gemv::Plan p = cat::gemv::plan(n, k, group_size);
  std::printf("%d %d %d %lld %lld\n", p.unit, p.warps, p.splits, (long long)p.units, (long long)p.chunks);
  for (int64_t j = 0; j < p.chunks; ++j) {
    int64_t b0, b1;
    cat::gemv::chunk_range(p, j, b0, b1);
    std::printf("%lld %lld\n", (long long)b0, (long long)b1);
  }
  return 0;
}

int legacy_plan(int64_t m, int64_t n, int64_t k) {
  const cat::gemv::LegacyPlan p = cat::gemv::legacy_plan(m, n, k);
  std::printf("%d %lld %lld\n", p.splits, (long long)p.per_split, (long long)cat::gemv::legacy_smem_cap_blocks(m));
  return 0;
}

int tiled(const char* in, const char* out) {
  const emu::Problem P = emu::read_problem(in);
  const emu::TiledResult r = emu::tiled_run(P);
  std::vector<float> y(r.y_raw.size());
  for (size_t i = 0; i < y.size(); ++i) y[i] = h16_to_float(float_to_h16(r.y_raw[i], P.bf16), P.bf16);
  const int64_t plan[3] = {r.splits, r.per_split, r.mt};
  std::vector<char> bytes;
  append(bytes, plan, 3);
  append(bytes, r.y_raw.data(), r.y_raw.size());
  append(bytes, y.data(), y.size());
  emu::write_file(out, bytes.data(), bytes.size());
  return 0;
}

int gemv(const char* in, const char* out) {
  const std::vector<double> y = emu::gemv_run(emu::read_problem(in));
  emu::write_file(out, y.data(), y.size() * sizeof(double));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const std::string cmd = argc > 1 ? argv[1] : "";
    auto arg = [&](int i) { return std::atoll(argv[i]); };
    if (cmd == "gemv" && argc == 4) return gemv(argv[2], argv[3]);
    if (cmd == "gemv-plan" && argc == 5) return gemv_plan(arg(2), arg(3), arg(4));
    if (cmd == "legacy-plan" && argc == 5) return legacy_plan(arg(2), arg(3), arg(4));
    if (cmd == "tiled" && argc == 4) return tiled(argv[2], argv[3]);
    if (cmd == "tiled-selftest" && argc == 2) {
      emu::tiled_selftest();
      std::printf("selftest ok\n");
      return 0;
    }
    throw std::runtime_error(
        "usage: emulate gemv IN OUT | gemv-plan N K G | legacy-plan M N K | tiled IN OUT | tiled-selftest");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "emulate: %s\n", e.what());
    return 2;
  }
}
