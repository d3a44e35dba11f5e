// Device selection for CUDA builds. Kept out of csrc/cuda/ (the kernels) because it is binding
// plumbing: the binding calls it with the DLPack device id of the arrays.
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "cat/ops.h"

namespace cat::cuda {

static void check(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return;
  // Clear the runtime's last-error slot, or the next kernel's launch check would report this
  // failure as its own.
  (void)cudaGetLastError();
  throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(e));
}

void set_device(int device) { check(cudaSetDevice(device), "cudaSetDevice"); }

int get_device() {
  int d = 0;
  check(cudaGetDevice(&d), "cudaGetDevice");
  return d;
}

}  // namespace cat::cuda
