// pack / unpack on the device, and cuda::available().
//
// Neither is on a hot path (weights are packed once), so both kernels favour obviously-correct
// index arithmetic over bandwidth: one thread per packed word (pack) or per code (unpack), with
// 64-bit indices throughout (an [N, K] code matrix may exceed 2**31 elements).
#include "common.cuh"

namespace cat {
namespace cuda {

using detail::ceil_div_dev;

namespace {

constexpr int kThreads = 256;

// Reads code (n, col) of an [n, k] matrix of uint8 or int32 codes as a signed 64-bit value, so
// that negative int32 codes are reported as they are.
__device__ __forceinline__ int64_t read_code(const void* codes, int code_bytes, int64_t i) {
  if (code_bytes == 1) return static_cast<int64_t>(static_cast<const uint8_t*>(codes)[i]);
  return static_cast<int64_t>(static_cast<const int32_t*>(codes)[i]);
}

// One thread builds one int32 word packed[t, b, w, r]. The codes it gathers are those that the
// format places in word w (format.md "Packing rule"); codes outside [0, n) x [0, k) are padding
// (0). Any out-of-range code lowers *first_bad to its linear index n * k + col: the minimum over
// all threads is the first bad code in row-major order, independent of scheduling.
__global__ void pack_kernel(const void* __restrict__ codes, int code_bytes, int64_t n, int64_t k,
                            int bits, int32_t* __restrict__ packed, int64_t total_words,
                            unsigned long long* __restrict__ first_bad) {
  const int64_t n_blocks = ceil_div_dev(k, kBlockK);
  const uint32_t limit = 1u << bits;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total_words;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int r = static_cast<int>(idx % kTileN);
    int64_t rest = idx / kTileN;
    const int w = static_cast<int>(rest % bits);
    rest /= bits;
    const int64_t b = rest % n_blocks;
    const int64_t t = rest / n_blocks;
    const int64_t row = t * kTileN + r;

    // Which values v of the block have bits in this word, and where: the block is one stream
    // of 32 * bits bits (word w = stream bits [32 w, 32 w + 32)), value v at stream bits
    // [bits v, bits v + bits). For 2/4/8 bits every value lies in one word; for 3 bits values
    // 10 and 21 straddle two words and are split between them (format.md).
    const int v_begin = (32 * w) / bits;
    const int v_last = min((32 * w + 31) / bits, kBlockK - 1);

    uint32_t word = 0;
    if (row < n) {
      for (int v = v_begin; v <= v_last; ++v) {
        const int64_t col = b * kBlockK + v;
        if (col >= k) break;
        const int64_t lin = row * k + col;
        const int64_t q = read_code(codes, code_bytes, lin);
        if (q < 0 || q >= static_cast<int64_t>(limit)) {
          atomicMin(first_bad, static_cast<unsigned long long>(lin));
        }
        const uint32_t uq = static_cast<uint32_t>(q) & (limit - 1u);
        const int sh = bits * v - 32 * w;  // -2..31: negative for the tail of a straddling value
        word |= sh >= 0 ? uq << sh : uq >> (-sh);
      }
    }
    packed[idx] = static_cast<int32_t>(word);
  }
}

// One thread per code: codes[row, col] = q, decoded from the `bits` words of its block.
__global__ void unpack_kernel(const int32_t* __restrict__ packed, int64_t n, int64_t k, int bits,
                              uint8_t* __restrict__ codes) {
  const int64_t n_blocks = ceil_div_dev(k, kBlockK);
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
    codes[i] = static_cast<uint8_t>(detail::code_of(w, bits, static_cast<int>(col % kBlockK)));
  }
}

}  // namespace

bool available() {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();  // e.g. no driver: report "not available", leave no error behind
    return false;
  }
  return count > 0;
}

PackStatus pack(const void* codes, int code_bytes, int64_t n, int64_t k, int bits, int32_t* packed,
                void* stream) {
  PackStatus status;
  const int64_t total = packed_words(n, k, bits);
  if (total == 0) return status;
  cudaStream_t s = detail::as_stream(stream);

  // 8 bytes of device memory for the first bad index. pack synchronizes anyway (its answer must
  // reach the host), so a plain cudaMalloc/cudaFree pair costs nothing that matters here.
  unsigned long long* first_bad = nullptr;
  detail::check(cudaMalloc(&first_bad, sizeof(unsigned long long)), "pack (cudaMalloc)");
  unsigned long long host_bad = ~0ull;
  try {
    detail::check(cudaMemsetAsync(first_bad, 0xFF, sizeof(unsigned long long), s),
                  "pack (cudaMemsetAsync)");
    pack_kernel<<<detail::grid_for(total, kThreads), kThreads, 0, s>>>(codes, code_bytes, n, k, bits,
                                                                      packed, total, first_bad);
    detail::check_launch("pack_kernel");
    detail::check(cudaMemcpyAsync(&host_bad, first_bad, sizeof(host_bad), cudaMemcpyDeviceToHost, s),
                  "pack (cudaMemcpyAsync)");
    detail::check(cudaStreamSynchronize(s), "pack_kernel (cudaStreamSynchronize)");
    if (host_bad != ~0ull) {
      const int64_t lin = static_cast<int64_t>(host_bad);
      status.ok = false;
      status.row = lin / k;
      status.col = lin % k;
      if (code_bytes == 1) {
        uint8_t v = 0;
        detail::check(cudaMemcpy(&v, static_cast<const uint8_t*>(codes) + lin, 1,
                                 cudaMemcpyDeviceToHost),
                      "pack (read bad code)");
        status.value = v;
      } else {
        int32_t v = 0;
        detail::check(cudaMemcpy(&v, static_cast<const int32_t*>(codes) + lin, 4,
                                 cudaMemcpyDeviceToHost),
                      "pack (read bad code)");
        status.value = v;
      }
    }
  } catch (...) {
    cudaFree(first_bad);
    throw;
  }
  detail::check(cudaFree(first_bad), "pack (cudaFree)");
  return status;
}

void unpack(const int32_t* packed, int64_t n, int64_t k, int bits, uint8_t* codes, void* stream) {
  const int64_t total = n * k;
  if (total == 0) return;
  unpack_kernel<<<detail::grid_for(total, kThreads), kThreads, 0, detail::as_stream(stream)>>>(
      packed, n, k, bits, codes);
  detail::check_launch("unpack_kernel");
}

}  // namespace cuda
}  // namespace cat
