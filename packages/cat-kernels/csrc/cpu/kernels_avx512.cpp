// AVX-512 (F + BW + VL) kernels: one zmm register holds the 16 rows of a tile.
// Compiled with -mavx512f -mavx512bw -mavx512vl -mavx2 -mfma -mf16c; only called after the
// runtime check in isa.cpp.
#include <immintrin.h>

#include <cstdint>
#include <type_traits>
#include <utility>

#include "common.h"
#include "internal.h"

namespace cat::cpu::detail {
namespace {

#include "ops_avx512.h"
#include "kernels_impl.h"

}  // namespace

const Kernels kernels_avx512 = {Ops::kMB, &gemm_item<Ops>, &dequant_tile};

}  // namespace cat::cpu::detail
