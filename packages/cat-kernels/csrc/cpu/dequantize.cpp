#include "cat/ops.h"
#include "common.h"
#include "internal.h"
#include "threadpool.h"

namespace cat::cpu {

void dequantize(const QWeight& w, void* out, DType out_dtype) {
  if (w.n == 0 || w.k == 0) return;
  const detail::Kernels& kern = detail::active_kernels();
  parallel_for(ceil_div(w.n, kTileN), [&](int64_t t) { kern.dequant_tile(w, t, out, out_dtype); });
}

void dequantize_rows(const QWeight& w, const int64_t* ids, int64_t n_ids, float* out) {
  const int64_t nb = ceil_div(w.k, kBlockK), ng = w.n_groups(), zw = w.zero_words();
  for (int64_t i = 0; i < n_ids; ++i) {
    const int64_t row = ids[i], t = row / kTileN;
    const int r = static_cast<int>(row % kTileN);
    // A row's codes are one stream (docs/format.md): block b's value v is stream value 32 b + v.
    const int32_t* stream = w.packed + t * nb * w.bits * kTileN + r;
    float* dst = out + i * w.k;
    for (int64_t g = 0; g < ng; ++g) {
      const float s = detail::load_as_f32(w.scales, w.scale_dtype, row * ng + g);
      const float z = static_cast<float>(detail::zero_point(w.zeros, zw, t, g, r, w.bits));
      for (int64_t kk = g * w.group_size; kk < (g + 1) * w.group_size; ++kk)
        dst[kk] = (static_cast<float>(detail::decode_stream(stream, kk, w.bits)) - z) * s;
    }
  }
}

}  // namespace cat::cpu
