// Plumbing shared by the CPU driver code (compiled for the baseline ISA) and the per-ISA kernel
// translation units. Only POD types live here: a non-inline helper instantiated in an AVX-512
// file could otherwise be picked by the linker for a baseline caller and fault on AVX2 CPUs.
#pragma once

#include <cstdint>

#include "cat/ops.h"

namespace cat::cpu::detail {

// amx: the avx512 kernels, plus AMX-BF16 tiles for float x products of kAmxMinRows rows or more
// (kernels_amx.cpp).
enum class Isa : int { scalar = 0, avx2 = 1, avx512 = 2, amx = 3 };

// Blocks [b0, b1) of the row, all inside group g. A segment is the unit after which the
// accumulated dot products are scaled and folded into the output.
struct Segment {
  int32_t b0, b1, g;
};

// One gemm call, shared by all work items. Work item (tile t, split s) covers rows
// [16t, 16t+16) and the segments split_begin[s] .. split_begin[s+1]-1.
struct GemmPlan {
  QWeight w;
  int64_t m = 0;
  int64_t nb = 0;        // blocks of 32 columns per row = ceil(k / 32)
  int64_t kp = 0;        // padded row length of xf = 32 * nb
  int64_t ng = 0;        // groups per row
  int64_t zw = 0;        // words per row of the packed zero points = ceil(ng * bits / 32)
  int64_t splits = 1;
  int64_t n_segments = 0;
  const float* xf = nullptr;        // [m, kp] x as float32, zero-padded
  const float* xs = nullptr;        // [m, n_segments] sum of x over each segment (int8 x: of
                                    // d * sum q over the segment's blocks)
  // int8 x (QWeight::int8_x): codes q, 4 per int32 (in the kernel's column order, see
  // Q8Kernel::quantize_row), and per block of 32 columns
  // the scale d (x ~= d * q), each row block of the q8 kernel's mb rows interleaved like xf:
  // dword j of row m0 + i at xq[m0 * kp / 4 + j * mr + i], block b at xd[m0 * nb + b * mr + i].
  const int32_t* xq = nullptr;
  const float* xd = nullptr;
  // AMX (amx_gemm_item): x as xb_pieces bfloat16 pieces (kernels_amx.cpp), each piece
  // [xb_rows / 16][nb][16][32] (rows m .. xb_rows, a multiple of 16, zero): the tile of rows
  // 16 u .. 16 u + 16 and block b of piece i is the 1 KB at xb + ((i * xb_rows + 16 u) * nb + 16 b) * 32,
  // so a tile load reads contiguous memory (rows kp apart would all fall into a few cache sets).
  const uint16_t* xb = nullptr;
  int64_t xb_rows = 0;
  int xb_pieces = 0;
  const Segment* segments = nullptr;
  const int32_t* split_begin = nullptr;  // [splits + 1]
};

// Rows of x are processed in blocks of row_block(kMB, rows left) rows (kMB, then powers of
// two); the driver stores each block interleaved ([kp][rows]) so the kernel can broadcast
// x[m, k] from constant offsets. Both sides must use this same rule.
static inline int64_t row_block(int64_t mb, int64_t rows_left) {
  int64_t b = mb;
  while (b > rows_left) b >>= 1;
  return b;
}

struct Kernels {
  int mb;  // the kernel's largest row block (kMB)
  // Writes the [m_count, 16] float32 partial result of work item (tile, split, rows
  // m0 .. m0+m_count-1 of x) to `part`.
  void (*gemm_item)(const GemmPlan& plan, int64_t tile, int64_t split, int64_t m0, int64_t m_count,
                    float* part);
  // Dequantizes rows [16t, 16t+16) into out ([n, k], dtype out_dtype).
  void (*dequant_tile)(const QWeight& w, int64_t tile, void* out, DType out_dtype);
};

// The gemm with int8 x (QWeight::int8_x): its own row block and work item, same contract as
// Kernels::gemm_item over the xq / xd / xs of the plan.
struct Q8Kernel {
  int mb;
  unsigned bits_mask;  // bit b set: handles b-bit weights
  void (*gemm_item)(const GemmPlan& plan, int64_t tile, int64_t split, int64_t m0, int64_t m_count,
                    float* part);
  // Rounds nb blocks of 32 floats of one row as quantize_block_q8 (common.h) does, bit for bit:
  // the scales into d[b], d[b] * (sum of the block's codes) into bsum[b], the codes into q in the
  // order the kernel reads them for `bits`-bit weights (a permutation within each block).
  void (*quantize_row)(const float* row, int64_t nb, int bits, int8_t* q, float* d, float* bsum);
};

extern const Kernels kernels_scalar;
#if defined(CAT_KERNELS_X86)
extern const Kernels kernels_avx2;
extern const Kernels kernels_avx512;
extern const Q8Kernel q8_avx2;
extern const Q8Kernel q8_avx512_vnni;
#endif

Isa active_isa();                    // throws if CAT_KERNELS_ISA names an unusable path
const Kernels& active_kernels();
// The int8 kernel for `bits`-bit weights on the active path: AVX-512 VNNI + VBMI + VBMI2 (every
// width) on the avx512 path when the CPU has them, AVX2 (2, 4 and 8 bits) on the avx2 path and on
// avx512 CPUs without VNNI; else null: the float kernels then run on x rounded to int8 and back
// (same values, float arithmetic).
const Q8Kernel* active_q8_kernel(int bits);
// The AMX path (Isa::amx): work item of a float-x product over GemmPlan::xb, and the split of
// one zero-padded float32 row of kp columns into its bfloat16 pieces (l / r may be null: fewer
// pieces). Only called when active_isa() is amx.
#if defined(CAT_KERNELS_X86)
void amx_gemm_item(const GemmPlan& plan, int64_t tile, int64_t split, int64_t m0, int64_t m_count, float* part);
// h / l / r point at the row's first value in its pieces' layout (GemmPlan::xb).
void amx_split_row(const float* row, int64_t kp, uint16_t* h, uint16_t* l, uint16_t* r);
#endif
// Fewest rows of float x that the amx path multiplies on tiles (fewer take the avx512 kernels).
constexpr int64_t kAmxMinRows = 16;
const char* isa_name(Isa isa);
bool isa_supported(Isa isa);
// "" = back to CAT_KERNELS_ISA / best available; otherwise a name (throws if unusable).
void set_isa(const char* name);

}  // namespace cat::cpu::detail
