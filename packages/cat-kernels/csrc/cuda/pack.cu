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

// One thread builds one int32 word packed[t, w, r] of the [tiles, row_words, 16] view: word w
// of row n = 16 t + r's bit stream, i.e. stream bits [32 w, 32 w + 32), in which value v sits at
// [bits v, bits v + bits) (format.md). The codes it gathers are those with bits in that word;
// codes outside [0, n) x [0, k) are padding (0). Any out-of-range code lowers *first_bad to its
// linear index row * k + col: the minimum over all threads is the first bad code in row-major
// order, independent of scheduling.
__global__ void pack_kernel(const void* __restrict__ codes, int code_bytes, int64_t n, int64_t k,
                            int bits, int64_t row_words, int32_t* __restrict__ packed,
                            int64_t total_words, unsigned long long* __restrict__ first_bad) {
  const uint32_t limit = 1u << bits;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total_words;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int r = static_cast<int>(idx % kTileN);
    const int64_t rest = idx / kTileN;
    const int64_t w = rest % row_words;
    const int64_t t = rest / row_words;
    const int64_t row = t * kTileN + r;

    // For 2/4/8 bits every value lies in one word; a 3-bit value at stream position 30 or 31
    // mod 32 is split between two words, each thread writing its part.
    const int64_t v_begin = (32 * w) / bits;
    const int64_t v_last = min((32 * w + 31) / bits, k - 1);

    uint32_t word = 0;
    if (row < n) {
      for (int64_t v = v_begin; v <= v_last; ++v) {
        const int64_t lin = row * k + v;
        const int64_t q = read_code(codes, code_bytes, lin);
        if (q < 0 || q >= static_cast<int64_t>(limit)) {
          atomicMin(first_bad, static_cast<unsigned long long>(lin));
        }
        const uint32_t uq = static_cast<uint32_t>(q) & (limit - 1u);
        const int sh = static_cast<int>(bits * v - 32 * w);  // -2..31: negative for a straddler's tail
        word |= sh >= 0 ? uq << sh : uq >> (-sh);
      }
    }
    packed[idx] = static_cast<int32_t>(word);
  }
}

// One thread per code: codes[row, col] = value col of the row's stream.
__global__ void unpack_kernel(const int32_t* __restrict__ packed, int64_t n, int64_t k, int bits,
                              int64_t row_words, uint8_t* __restrict__ codes) {
  const int64_t total = n * k;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t row = i / k, col = i % k;
    const int32_t* base = packed + (row / kTileN) * row_words * kTileN + row % kTileN;
    codes[i] = static_cast<uint8_t>(detail::stream_value(base, col, bits));
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

PackStatus pack(const void* codes, int code_bytes, int64_t n, int64_t k, int bits, int64_t row_words,
                int32_t* packed, void* stream) {
  PackStatus status;
  const int64_t total = ceil_div(n, kTileN) * row_words * kTileN;
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
    detail::launch("pack_kernel", pack_kernel, detail::grid_for(total, kThreads), kThreads, 0, s, codes, code_bytes, n, k, bits, row_words, packed, total, first_bad);
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

void unpack(const int32_t* packed, int64_t n, int64_t k, int bits, int64_t row_words, uint8_t* codes,
            void* stream) {
  const int64_t total = n * k;
  if (total == 0) return;
  detail::launch("unpack_kernel", unpack_kernel, detail::grid_for(total, kThreads), kThreads, 0, detail::as_stream(stream), packed, n, k, bits, row_words, codes);
}

}  // namespace cuda
}  // namespace cat
