// GEMV path of gemm (M <= 8). Design notes: gemm.cu.
#include "gemm_common.cuh"

namespace cat {
namespace cuda {
namespace gemm_detail {
namespace {

// ------------------------------------------------------------------ GEMV path

// One word of four consecutive rows (p = &word[4j] of a tile's 16): a 128-bit load when the
// array is 16-byte aligned (then so is p: 16-row words are 64 bytes, 4j words 16j bytes).
__device__ __forceinline__ void load_row_quad(uint32_t (&out)[4], const int32_t* __restrict__ p,
                                              bool aligned16) {
  if (aligned16) {
    const uint4 v = __ldg(reinterpret_cast<const uint4*>(p));
    out[0] = v.x;
    out[1] = v.y;
    out[2] = v.z;
    out[3] = v.w;
  } else {
#pragma unroll
    for (int i = 0; i < 4; ++i) out[i] = static_cast<uint32_t>(__ldg(p + i));
  }
}

// Words w = 0..BITS-1 of block b for the four rows 4j..4j+3 of tile t: out[i][w] is row 4j+i.
template <int BITS>
__device__ __forceinline__ void load_quad(uint32_t (&out)[4][BITS], const int32_t* __restrict__ base,
                                          int64_t t, int64_t b, int j, int64_t n_blocks,
                                          bool aligned16) {
#pragma unroll
  for (int w = 0; w < BITS; ++w) {
    uint32_t v[4];
    load_row_quad(v, base + detail::word_index(t, b, w, 4 * j, n_blocks, BITS), aligned16);
#pragma unroll
    for (int i = 0; i < 4; ++i) out[i][w] = v[i];
  }
}

template <int BITS, int MT>
__global__ void __launch_bounds__(kGemvThreads) gemv_kernel(const Args a) {
  extern __shared__ float4 smem_f4[];
  float* xs = reinterpret_cast<float*>(smem_f4);  // [MT][per_split * kXStride]
  const int64_t x_stride_m = a.per_split * kXStride;

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int j = lane & 3;   // row quad within the tile
  const int o = lane >> 2;  // block offset within a step of 8 blocks
  const int64_t t = int64_t(blockIdx.x) * kGemvWarps + warp;
  const int split = blockIdx.y;
  const int64_t b_begin = int64_t(split) * a.per_split;
  const int nb = static_cast<int>(min(a.per_split, a.n_blocks - b_begin));
  const bool tile_ok = t < a.n_tiles;

  // Issue the first weight loads before staging x, so both latencies overlap.
  uint32_t cur[4][BITS];
  int bl = o;
  if (tile_ok && bl < nb) load_quad<BITS>(cur, a.packed, t, b_begin + bl, j, a.n_blocks, a.aligned16);

  // Stage x[0:MT, 32*b_begin : 32*(b_begin+nb)] as float; rows >= m and columns >= k are 0.
  {
    const int cols = nb * kBlockK;
    const int64_t k0 = b_begin * kBlockK;
    for (int idx = threadIdx.x; idx < MT * cols; idx += kGemvThreads) {
      const int mm = idx / cols, c = idx - mm * cols;
      const int64_t kk = k0 + c;
      float v = 0.f;
      if (mm < a.m && kk < a.k) v = detail::load_scale(a.x, a.x_dtype, int64_t(mm) * a.k + kk);
      xs[mm * x_stride_m + (c >> 5) * kXStride + (c & 31)] = v;
    }
  }
  __syncthreads();
  if (!tile_ok) return;  // no barrier below this point

  float acc[MT][4];
#pragma unroll
  for (int mm = 0; mm < MT; ++mm)
#pragma unroll
    for (int i = 0; i < 4; ++i) acc[mm][i] = 0.f;

  float s[4] = {0.f, 0.f, 0.f, 0.f}, zb[4] = {0.f, 0.f, 0.f, 0.f};
  int64_t g_prev = -1;

  for (; bl < nb; bl += 8) {
    // Prefetch the next block of this lane while the current one is computed.
    uint32_t nxt[4][BITS];
    if (bl + 8 < nb) load_quad<BITS>(nxt, a.packed, t, b_begin + bl + 8, j, a.n_blocks, a.aligned16);

    const int64_t b = b_begin + bl;
    const int64_t g = (b * kBlockK) / a.group_size;  // a block never straddles two groups
    if (g != g_prev) {
      g_prev = g;
      uint32_t zq[4] = {1u << (BITS - 1), 1u << (BITS - 1), 1u << (BITS - 1), 1u << (BITS - 1)};
      if (a.zeros != nullptr) {
        // Group g's zero point of rows 4j..4j+3: one 128-bit load of word (BITS g) / 32 of the
        // rows' zero streams, plus the next word when a 3-bit zero straddles two words.
        const int64_t pos = g * BITS;
        const int off = static_cast<int>(pos & 31);
        const int64_t zw = ceil_div_dev(a.n_groups * BITS, 32);
        const int32_t* zp = a.zeros + (t * zw + (pos >> 5)) * kTileN + 4 * j;
        uint32_t lo[4], hi[4] = {0u, 0u, 0u, 0u};
        load_row_quad(lo, zp, a.aligned16);
        if (off + BITS > 32) load_row_quad(hi, zp + kTileN, a.aligned16);
#pragma unroll
        for (int i = 0; i < 4; ++i) zq[i] = __funnelshift_r(lo[i], hi[i], off) & ((1u << BITS) - 1u);
      }
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int64_t row = t * kTileN + 4 * j + i;
        // Padded rows get s = 0 (their codes are 0 too): never read scales out of bounds.
        s[i] = row < a.n ? detail::load_scale(a.scales, a.scale_dtype, row * a.n_groups + g) : 0.f;
        zb[i] = 8388608.f + static_cast<float>(zq[i]);
      }
    }

    const float* xb = xs + bl * kXStride;
#pragma unroll
    for (int c4 = 0; c4 < 8; ++c4) {
      float4 xv[MT];
#pragma unroll
      for (int mm = 0; mm < MT; ++mm)
        xv[mm] = *reinterpret_cast<const float4*>(xb + mm * x_stride_m + 4 * c4);
#pragma unroll
      for (int cc = 0; cc < 4; ++cc) {
        const int c = 4 * c4 + cc;
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const float w = detail::q_minus_z(detail::code_at<BITS>(cur[i], c), zb[i]) * s[i];
#pragma unroll
          for (int mm = 0; mm < MT; ++mm) {
            const float xval = cc == 0 ? xv[mm].x : cc == 1 ? xv[mm].y : cc == 2 ? xv[mm].z : xv[mm].w;
            acc[mm][i] = fmaf(xval, w, acc[mm][i]);
          }
        }
      }
    }

    if (bl + 8 < nb) {
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int w = 0; w < BITS; ++w) cur[i][w] = nxt[i][w];
    }
  }

  // Sum over the 8 lanes (o = 0..7) that hold the same rows: a fixed butterfly, deterministic.
#pragma unroll
  for (int mm = 0; mm < MT; ++mm)
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      float v = acc[mm][i];
      v += __shfl_xor_sync(0xffffffffu, v, 4);
      v += __shfl_xor_sync(0xffffffffu, v, 8);
      v += __shfl_xor_sync(0xffffffffu, v, 16);
      acc[mm][i] = v;
    }
  if (o == 0) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int64_t row = t * kTileN + 4 * j + i;
      if (row >= a.n) continue;
#pragma unroll
      for (int mm = 0; mm < MT; ++mm)
        if (mm < a.m) store_result(a, split, mm, row, acc[mm][i]);
    }
  }
}


template <int BITS>
void launch_gemv_bits(const Args& a, cudaStream_t s) {
  const dim3 grid(static_cast<unsigned>(ceil_div(a.n_tiles, kGemvWarps)), static_cast<unsigned>(a.splits));
  const int mt = gemv_bucket(a.m);
  const size_t smem = size_t(mt) * a.per_split * kXStride * sizeof(float);
  switch (mt) {
    case 1: detail::launch("gemv_kernel", gemv_kernel<BITS, 1>, grid, kGemvThreads, smem, s, a); break;
    case 2: detail::launch("gemv_kernel", gemv_kernel<BITS, 2>, grid, kGemvThreads, smem, s, a); break;
    case 4: detail::launch("gemv_kernel", gemv_kernel<BITS, 4>, grid, kGemvThreads, smem, s, a); break;
    default: detail::launch("gemv_kernel", gemv_kernel<BITS, 8>, grid, kGemvThreads, smem, s, a); break;
  }
}


}  // namespace

void launch_gemv(const Args& a, cudaStream_t s) {
  decode::dispatch_bits(a.bits, kGemmWhat, [&](auto bits) { launch_gemv_bits<decltype(bits)::value>(a, s); });
}

}  // namespace gemm_detail
}  // namespace cuda
}  // namespace cat
