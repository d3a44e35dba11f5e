// Internal helpers shared by the CUDA kernels of cat-kernels (pack.cu, dequantize.cu, gemm.cu).
//
// Layout reminder (docs/format.md is the contract):
//
//   packed[t, b, w, r] = word w of the 32-column block b of row n = 16 t + r
//
// so for one tile t and one block b the 16 * bits words are contiguous, word-major, row-minor:
// 16 adjacent threads (or 4 threads with one 128-bit load each) read one word position of one
// block for the 16 rows of the tile in a single 64-byte segment.
//
// Inside a block, value v (column 32 b + v) is:
//   bits 2/4/8: word v / (32/bits), bits [bits * (v % (32/bits)), +bits)
//   bits 3    : the 3 words are one 96-bit little-endian stream (word w = stream bits
//               [32 w, 32 w + 32)); value v at stream bits [3 v, 3 v + 3). Values 10 (stream
//               bits 30..32) and 21 (63..65) straddle two words; a funnel shift reads any v.
//
// Everything here is header-only and internal: nothing in it is part of the ABI.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>

#include "cat/ops.h"
#include "decode.h"

namespace cat {
namespace cuda {
namespace detail {

__host__ __device__ __forceinline__ int64_t ceil_div_dev(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}

// ------------------------------------------------------------------ error handling

// Throws std::runtime_error naming `what` (a kernel or API call) when `err` is not cudaSuccess.
inline void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    (void)cudaGetLastError();  // clear the sticky-free error state so later calls are not blamed
    throw std::runtime_error(std::string("cat_kernels CUDA error in ") + what + ": " +
                             cudaGetErrorName(err) + " (" + cudaGetErrorString(err) + ")");
  }
}

// Launches `kernel` and reports only what this launch itself returns. cudaLaunchKernelEx hands
// back the launch's own status (bad configuration, no image for this GPU, too many resources),
// so an error that another library left pending in the runtime's last-error slot is neither
// reported as ours nor consumed: the slot is cleared only when it holds our own failure and
// was clean before. An asynchronous fault of an earlier kernel (sticky: the context is lost)
// surfaces from any later call, ours included; its message says so. Never synchronizes (legal
// under CUDA-graph capture).
template <typename... Params, typename... Actual>
inline void launch(const char* name, void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem,
                   cudaStream_t s, Actual&&... args) {
  const cudaError_t before = cudaPeekAtLastError();
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = s;
  const cudaError_t err = cudaLaunchKernelEx(&cfg, kernel, std::forward<Actual>(args)...);
  if (err == cudaSuccess) return;
  if (before == cudaSuccess) (void)cudaGetLastError();  // our own failure: do not leave it behind
  throw std::runtime_error(std::string("cat_kernels CUDA error launching ") + name + ": " +
                           cudaGetErrorName(err) + " (" + cudaGetErrorString(err) + ")" +
                           (before != cudaSuccess ? " [an earlier error was already pending: " +
                                                        std::string(cudaGetErrorName(before)) + "]"
                                                  : std::string()));
}

inline cudaStream_t as_stream(void* s) { return static_cast<cudaStream_t>(s); }

// Grid size for a grid-stride loop over `total` items with `threads` per block: enough blocks to
// fill any current GPU several times over, never more than needed.
inline unsigned grid_for(int64_t total, int threads) {
  int64_t blocks = ceil_div(total, threads);
  const int64_t cap = 65536;  // 64K blocks x 256 threads: the loop handles the rest
  if (blocks > cap) blocks = cap;
  if (blocks < 1) blocks = 1;
  return static_cast<unsigned>(blocks);
}

// ------------------------------------------------------------------ dtype conversion

// Loads element i of an array of dtype DT as float (exact for all three dtypes).
template <DType DT>
__device__ __forceinline__ float load_as_float(const void* p, int64_t i);
template <>
__device__ __forceinline__ float load_as_float<DType::f32>(const void* p, int64_t i) {
  return static_cast<const float*>(p)[i];
}
template <>
__device__ __forceinline__ float load_as_float<DType::f16>(const void* p, int64_t i) {
  return __half2float(static_cast<const __half*>(p)[i]);
}
template <>
__device__ __forceinline__ float load_as_float<DType::bf16>(const void* p, int64_t i) {
  return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
}

// Runtime-dtype load, used for scales: the branch is uniform across the grid, and a scale is
// loaded once per (row, block), so a switch costs nothing next to the 32 codes it multiplies.
// This keeps the scale dtype out of the template parameters (3x fewer instantiations).
__device__ __forceinline__ float load_scale(const void* p, DType dt, int64_t i) {
  switch (dt) {
    case DType::f16:
      return __half2float(static_cast<const __half*>(p)[i]);
    case DType::bf16:
      return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
    default:
      return static_cast<const float*>(p)[i];
  }
}

// Stores a float as dtype DT, rounding to nearest even (the single rounding of format.md).
template <DType DT>
__device__ __forceinline__ void store_from_float(void* p, int64_t i, float v);
template <>
__device__ __forceinline__ void store_from_float<DType::f32>(void* p, int64_t i, float v) {
  static_cast<float*>(p)[i] = v;
}
template <>
__device__ __forceinline__ void store_from_float<DType::f16>(void* p, int64_t i, float v) {
  static_cast<__half*>(p)[i] = __float2half_rn(v);
}
template <>
__device__ __forceinline__ void store_from_float<DType::bf16>(void* p, int64_t i, float v) {
  static_cast<__nv_bfloat16*>(p)[i] = __float2bfloat16_rn(v);
}

// ------------------------------------------------------------------ unpacking

using decode::word_index;

// Code of value v (0..31) of a block whose `bits` words are w[0..bits-1] (runtime bits and v).
// Used where speed does not matter (unpack, dequantize, zero points). The word is selected with
// an unrolled compare chain rather than w[runtime index], which would put w in local memory.
__device__ __forceinline__ uint32_t code_of(const uint32_t (&w)[8], int bits, int v) {
  const int pos = bits * v, wi = pos >> 5, off = pos & 31;
  uint32_t sel = w[0], nxt = w[1];
#pragma unroll
  for (int i = 1; i < 8; ++i)
    if (i == wi) {
      sel = w[i];
      nxt = i + 1 < 8 ? w[i + 1] : 0u;
    }
  // (nxt:sel) >> off: for 3-bit values 10 and 21 the high bits come from the next word; for
  // every other value they are masked off below.
  return __funnelshift_r(sel, nxt, off) & ((1u << bits) - 1u);
}

// Compile-time-bits version for the GEMM inner loops: with v a constant after unrolling, this is
// one shift and one mask (a funnel shift and a mask for the two 3-bit values that straddle two
// words). Also correct for a runtime v (zero points), again without dynamic register-array
// indexing.
template <int BITS>
__device__ __forceinline__ uint32_t code_at(const uint32_t (&w)[BITS], int v) {
  if constexpr (BITS == 3) {
    // 96-bit stream, value v at stream bits [3v, 3v + 3) (format.md).
    const int pos = 3 * v, wi = pos >> 5, off = pos & 31;
    const uint32_t lo = wi == 0 ? w[0] : (wi == 1 ? w[1] : w[2]);
    const uint32_t hi = wi == 0 ? w[1] : w[2];
    if (off <= 29) return (lo >> off) & 7u;    // the whole code is in one word
    return __funnelshift_r(lo, hi, off) & 7u;  // values 10 and 21
  } else {
    constexpr int kPerWord = 32 / BITS;
    const int wi = v / kPerWord;
    uint32_t sel = w[0];
#pragma unroll
    for (int i = 1; i < BITS; ++i)
      if (i == wi) sel = w[i];
    return (sel >> (BITS * (v % kPerWord))) & ((1u << BITS) - 1u);
  }
}

// Value v of one row's bit stream (docs/format.md): `row` points at word 0 of the row (the
// [tiles, row_words, 16] view), successive words 16 int32 apart. The next word is read only
// when the value straddles into it, so the stream's last word is never overrun.
__device__ __forceinline__ uint32_t stream_value(const int32_t* row, int64_t v, int bits) {
  const int64_t pos = int64_t(bits) * v, wi = pos >> 5;
  const int off = static_cast<int>(pos & 31);
  const uint32_t lo = static_cast<uint32_t>(__ldg(row + wi * kTileN));
  const uint32_t hi = off + bits > 32 ? static_cast<uint32_t>(__ldg(row + (wi + 1) * kTileN)) : 0u;
  return __funnelshift_r(lo, hi, off) & ((1u << bits) - 1u);
}

// Zero point of (row n, group g): 2**(bits-1) when symmetric, else decoded from the packed
// zero points, [ceil(n/16), ceil(n_groups * bits / 32), 16] (format.md "Zero points").
__device__ __forceinline__ uint32_t zero_point(const int32_t* zeros, int bits, int64_t n, int64_t g,
                                               int64_t n_groups) {
  if (zeros == nullptr) return 1u << (bits - 1);
  const int64_t zw = ceil_div_dev(n_groups * bits, 32);
  return stream_value(zeros + (n / kTileN) * zw * kTileN + n % kTileN, g, bits);
}

// float(q - z) without an integer-to-float conversion instruction (quarter rate on most GPUs):
// 0x4B000000 | q is the float 2**23 + q for q < 2**23, and (2**23 + q) - (2**23 + z) is exact.
// `zbias` = 8388608.f + z is computed once per (row, group).
__device__ __forceinline__ float q_minus_z(uint32_t q, float zbias) {
  return __uint_as_float(0x4B000000u | q) - zbias;
}

}  // namespace detail
}  // namespace cuda
}  // namespace cat
