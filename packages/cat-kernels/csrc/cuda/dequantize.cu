// dequantize: W[n, k] = float32(q - z) * float32(s), rounded once to the output dtype.
//
// One thread per output element, consecutive threads along k, so the stores (the bulk of the
// traffic: 2-4 bytes out per 0.25-1 byte in) are coalesced; the `bits` words of a block are
// shared by the 32 threads of that block and come from L1. This op materializes a dense matrix
// (tests, export, fallbacks), it is not the inference path; gemm never calls it.
#include "common.cuh"

namespace cat {
namespace cuda {

using detail::ceil_div_dev;

namespace {

constexpr int kThreads = 256;

template <DType OUT>
__global__ void dequantize_kernel(const int32_t* __restrict__ packed, const void* __restrict__ scales,
                                  DType scale_dtype, const int32_t* __restrict__ zeros, int bits,
                                  int64_t n, int64_t k, int64_t group_size, void* __restrict__ out) {
  const int64_t n_blocks = ceil_div_dev(k, kBlockK);
  const int64_t n_groups = k / group_size;
  const int64_t total = n * k;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t row = i / k, col = i % k;
    const int64_t base = detail::word_index(row / kTileN, col / kBlockK, 0,
                                            static_cast<int>(row % kTileN), n_blocks, bits);
    uint32_t w[8];
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      w[j] = j < bits ? static_cast<uint32_t>(__ldg(packed + base + int64_t(j) * kTileN)) : 0u;
    }
    const uint32_t q = detail::code_of(w, bits, static_cast<int>(col % kBlockK));
    const int64_t g = col / group_size;
    const uint32_t z = detail::zero_point(zeros, bits, row, g, n_groups);
    const float s = detail::load_scale(scales, scale_dtype, row * n_groups + g);
    // Exactly format.md: float32(q - z) * float32(s), one rounding to OUT.
    const float v = static_cast<float>(static_cast<int>(q) - static_cast<int>(z)) * s;
    detail::store_from_float<OUT>(out, i, v);
  }
}

}  // namespace

void dequantize(const QWeight& w, void* out, DType out_dtype, void* stream) {
  const int64_t total = w.n * w.k;
  if (total == 0) return;
  const unsigned grid = detail::grid_for(total, kThreads);
  cudaStream_t s = detail::as_stream(stream);
  switch (out_dtype) {
    case DType::f32:
      detail::launch("dequantize_kernel", dequantize_kernel<DType::f32>, grid, kThreads, 0, s, w.packed, w.scales, w.scale_dtype, w.zeros, w.bits, w.n, w.k, w.group_size, out);
      break;
    case DType::f16:
      detail::launch("dequantize_kernel", dequantize_kernel<DType::f16>, grid, kThreads, 0, s, w.packed, w.scales, w.scale_dtype, w.zeros, w.bits, w.n, w.k, w.group_size, out);
      break;
    case DType::bf16:
      detail::launch("dequantize_kernel", dequantize_kernel<DType::bf16>, grid, kThreads, 0, s, w.packed, w.scales, w.scale_dtype, w.zeros, w.bits, w.n, w.k, w.group_size, out);
      break;
    default:
      throw std::runtime_error("cat_kernels CUDA dequantize: unknown output dtype");
  }
}

}  // namespace cuda
}  // namespace cat
