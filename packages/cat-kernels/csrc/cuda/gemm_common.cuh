// Internal to the gemm translation units (gemm.cu, gemv.cu, gemm_tiled.cu): tile constants, the
// kernel argument block and the launchers each unit provides. See gemm.cu for the design.
#pragma once

#include "common.cuh"
#include "gemv_arith.h"

namespace cat {
namespace cuda {
namespace gemm_detail {

using detail::ceil_div_dev;

// Names the gemm in its errors (decode::dispatch_bits).
constexpr const char* kGemmWhat = "cat_kernels CUDA gemm";

// ------------------------------------------------------------------ plans (host, shapes only)

constexpr int kGemvMaxM = 8;            // M <= 8: GEMV path
constexpr int kGemvWarps = 4;           // tiles (of 16 rows) per GEMV CTA
constexpr int kGemvThreads = 32 * kGemvWarps;
constexpr int kXStride = 36;            // floats per staged block of x (32 + 4 to spread banks)
constexpr int kGemvSmemFloats = 12288;  // 48 KB of staged x at most (no opt-in needed)
constexpr int kGemvTargetWarps = 2048;  // ~16 warps per SM on a 132-SM part
static_assert(kXStride == gemv::kLegacyXStride && kGemvSmemFloats == gemv::kLegacySmemFloats &&
                  kGemvTargetWarps == gemv::kLegacyTargetWarps,
              "the legacy GEMV plan (gemv_arith.h) must describe gemv.cu");

constexpr int kBM = 64, kBN = 64, kBK = 64;  // tiled path CTA tile
constexpr int kTileThreads = 128;
constexpr int kTileTargetCtas = 264;         // ~2 CTAs per SM on a 132-SM part
constexpr int kMaxSplits = 32;

inline int gemv_bucket(int64_t m) { return m <= 1 ? 1 : m <= 2 ? 2 : m <= 4 ? 4 : 8; }

// ------------------------------------------------------------------ kernel arguments

struct Args {
  const void* x;
  DType x_dtype;
  int64_t m, n, k;
  const int32_t* packed;
  const void* scales;
  DType scale_dtype;
  const int32_t* zeros;  // nullptr: symmetric
  int bits;
  int64_t group_size, n_groups, n_blocks, n_tiles;
  int splits;
  int64_t per_split;
  bool aligned16;  // packed and zeros are 16-byte aligned (128-bit loads allowed)
  void* out;       // [m, n], x_dtype; written when splits == 1
  float* ws;       // [splits, m, n]; written when splits > 1
  // v2 GEMV only (gemv_v2.cu): its plan and the per-tile arrival counters of the in-kernel
  // split-K reduction (zero on entry, left zero on exit).
  gemv::Plan v2;
  uint32_t* counters = nullptr;
};

// Stores one result: y directly (rounded to x's dtype) or the fp32 partial of `split`.
__device__ __forceinline__ void store_result(const Args& a, int split, int64_t row, int64_t col,
                                             float v) {
  if (a.splits == 1) {
    const int64_t i = row * a.n + col;
    switch (a.x_dtype) {
      case DType::f16:
        detail::store_from_float<DType::f16>(a.out, i, v);
        break;
      case DType::bf16:
        detail::store_from_float<DType::bf16>(a.out, i, v);
        break;
      default:
        detail::store_from_float<DType::f32>(a.out, i, v);
        break;
    }
  } else {
    a.ws[(int64_t(split) * a.m + row) * a.n + col] = v;
  }
}

// gemm.cu: compute capability major of the current device, cached per device.
int device_cc_major();

// gemv.cu (legacy): M <= kGemvMaxM. per_split = 32-column blocks per split.
void launch_gemv(const Args& a, cudaStream_t s);
// gemv_v2.cu: M <= kGemvMaxM, f16/bf16 x, sm_80+, packed/zeros 8-byte aligned. Plan a.v2; with
// a.v2.splits > 1 it reduces the split-K partials itself (a.ws, a.counters).
void launch_gemv_v2(const Args& a, cudaStream_t s);
// gemm_tiled.cu: M > kGemvMaxM. per_split = 64-column k-steps per split.
void launch_tiled(const Args& a, cudaStream_t s);
// gemm_tiled_v2.cu: M > kGemvMaxM, mma.sync + cp.async pipeline. a.splits / a.per_split (64-column
// k-steps) must come from tiled_v2::plan (tiled_v2_math.h), which gemm_splits must report too.
// fp32 x and GPUs below sm_80 go to launch_tiled with the same plan.
void launch_tiled_v2(const Args& a, cudaStream_t s);

}  // namespace gemm_detail
}  // namespace cuda
}  // namespace cat
