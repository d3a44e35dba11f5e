// cat::cuda::* for builds without CUDA (CAT_KERNELS_CUDA=OFF): reachable only with CUDA arrays,
// which such a build cannot handle.
#include <stdexcept>

#include "cat/ops.h"

namespace cat::cuda {
namespace {
[[noreturn]] void no_cuda() {
  throw std::runtime_error(
      "cat-kernels was built without CUDA (CAT_KERNELS_CUDA=OFF); reinstall it on a machine "
      "with the CUDA toolkit (nvcc) to use CUDA arrays");
}
}  // namespace

bool available() { return false; }
void set_device(int) { no_cuda(); }
int get_device() { no_cuda(); }
PackStatus pack(const void*, int, int64_t, int64_t, int, int64_t, int32_t*, void*) { no_cuda(); }
void unpack(const int32_t*, int64_t, int64_t, int, int64_t, uint8_t*, void*) { no_cuda(); }
void dequantize(const QWeight&, void*, DType, void*) { no_cuda(); }
int gemm_splits(int64_t, int64_t, int64_t, int, int64_t) { no_cuda(); }
int64_t gemm_workspace_elems(int64_t, int64_t, int64_t, int, int64_t) { no_cuda(); }
void gemm(const void*, DType, int64_t, const QWeight&, void*, float*, void*) { no_cuda(); }

}  // namespace cat::cuda
