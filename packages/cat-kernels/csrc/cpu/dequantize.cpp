#include "cat/ops.h"
#include "internal.h"
#include "threadpool.h"

namespace cat::cpu {

void dequantize(const QWeight& w, void* out, DType out_dtype) {
  if (w.n == 0 || w.k == 0) return;
  const detail::Kernels& kern = detail::active_kernels();
  parallel_for(ceil_div(w.n, kTileN), [&](int64_t t) { kern.dequant_tile(w, t, out, out_dtype); });
}

}  // namespace cat::cpu
