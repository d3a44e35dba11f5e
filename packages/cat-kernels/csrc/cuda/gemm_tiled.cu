// Tiled path of gemm (M > 8): tensor cores (WMMA) for fp16/bf16, fp32 FMA otherwise.
// Design notes: gemm.cu.
#include <mma.h>

#include <atomic>
#include <type_traits>

#include "gemm_common.cuh"

namespace cat {
namespace cuda {
namespace gemm_detail {
namespace {

// ------------------------------------------------------------------ tiled path, shared parts

// The CTA's output tile (rows m0.., columns n0..) and its split's k-steps [s_begin, s_end).
struct CtaTile {
  int64_t n0, m0;
  int split;
  int64_t s_begin, s_end;
};
__device__ __forceinline__ CtaTile cta_tile(const Args& a, int64_t m_base) {
  CtaTile t;
  t.n0 = int64_t(blockIdx.x) * kBN;
  t.m0 = m_base + int64_t(blockIdx.y) * kBM;
  t.split = blockIdx.z;
  const int64_t steps = ceil_div_dev(a.k, kBK);
  t.s_begin = int64_t(t.split) * a.per_split;
  t.s_end = min(t.s_begin + a.per_split, steps);
  return t;
}

// Dequantizes row (n0 + r) x block (b0 + bl) of W into 32 floats, r = tid % 64, bl = tid / 64:
// one thread per (row, block), threads with consecutive rows read consecutive words (64 bytes
// per 16 rows). Columns >= k and rows >= n give 0.
template <int BITS>
__device__ __forceinline__ void dequant_row_block(float (&wv)[32], const Args& a, int64_t row,
                                                  int64_t b) {
  if (row >= a.n || b >= a.n_blocks) {
#pragma unroll
    for (int c = 0; c < 32; ++c) wv[c] = 0.f;
    return;
  }
  const int64_t t = row / kTileN;
  const int r = static_cast<int>(row % kTileN);
  uint32_t w[BITS];
#pragma unroll
  for (int i = 0; i < BITS; ++i)
    w[i] = static_cast<uint32_t>(__ldg(a.packed + detail::word_index(t, b, i, r, a.n_blocks, BITS)));
  const int64_t g = (b * kBlockK) / a.group_size;
  const uint32_t z = detail::zero_point(a.zeros, BITS, row, g, a.n_groups);
  const float s = detail::load_scale(a.scales, a.scale_dtype, row * a.n_groups + g);
  const float zb = 8388608.f + static_cast<float>(z);
  const int64_t valid = a.k - b * kBlockK;  // columns of this block inside K (>= 1)
#pragma unroll
  for (int c = 0; c < 32; ++c) {
    const float v = detail::q_minus_z(detail::code_at<BITS>(w, c), zb) * s;
    wv[c] = c < valid ? v : 0.f;
  }
}

// ------------------------------------------------------------------ tiled path, tensor cores

// Two floats rounded (RNE) to T and packed into one 32-bit word, low half first.
template <typename T>
__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
  if constexpr (std::is_same<T, __half>::value) {
    const __half2 h = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&h);
  } else {
    const __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&h);
  }
}

// WMMA with this element type exists on the architecture being compiled.
template <typename T>
__host__ __device__ constexpr bool tc_supported() {
#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ < 800)
  return std::is_same<T, __half>::value;
#else
  return true;
#endif
}

constexpr int kLdT = kBK + 8;   // 72 elements: rows 144 B apart (16-byte multiple, spreads banks)
constexpr int kLdC = kBN + 4;   // 68 floats for the epilogue tile
constexpr int kTcSmemBytes = 2 * kBM * kLdT * 2;  // x tile + W tile, 16-bit: 18432 B
static_assert(kBM * kLdC * 4 <= kTcSmemBytes, "epilogue tile must fit in the operand buffers");

template <int BITS, typename T>
__global__ void __launch_bounds__(kTileThreads) gemm_tc_kernel(const Args a, int64_t m_base) {
  if constexpr (!tc_supported<T>()) {
    __trap();  // never launched: the host picks the FMA kernel for bf16 below sm_80
  } else {
    using namespace nvcuda;
    __shared__ __align__(128) unsigned char smem[kTcSmemBytes];
    T* xs = reinterpret_cast<T*>(smem);   // [kBM][kLdT], x tile, row-major (A)
    T* wsm = xs + kBM * kLdT;             // [kBN][kLdT], W tile = B^T, i.e. B col-major
    float* cs = reinterpret_cast<float*>(smem);  // [kBM][kLdC], epilogue (aliases both)

    const int tid = threadIdx.x, warp = tid / 32;
    const int wm = warp >> 1, wn = warp & 1;  // 2 x 2 warps, 32 x 32 outputs each
    const CtaTile ct = cta_tile(a, m_base);
    const int64_t n0 = ct.n0, m0 = ct.m0, s_begin = ct.s_begin, s_end = ct.s_end;
    const int split = ct.split;
    const T* x = static_cast<const T*>(a.x);
    // 8-element (16-byte) vector loads of x when every row start is 16-byte aligned.
    const bool xvec = (a.k % 8 == 0) && (reinterpret_cast<uintptr_t>(a.x) % 16 == 0);

    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][2];
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int jj = 0; jj < 2; ++jj) wmma::fill_fragment(acc[i][jj], 0.f);

    for (int64_t st = s_begin; st < s_end; ++st) {
      const int64_t k0 = st * kBK;
      __syncthreads();  // the previous step's fragments are loaded before we overwrite
      // x tile: 64 x 64, zero outside [m) x [k).
      if (xvec) {
#pragma unroll
        for (int it = 0; it < 4; ++it) {
          const int idx = tid + it * kTileThreads;  // 512 chunks of 8 elements
          const int r = idx >> 3, c = (idx & 7) * 8;
          uint4 v = make_uint4(0, 0, 0, 0);
          if (m0 + r < a.m && k0 + c < a.k)  // k % 8 == 0: the chunk is all in or all out
            v = __ldg(reinterpret_cast<const uint4*>(x + (m0 + r) * a.k + k0 + c));
          *reinterpret_cast<uint4*>(xs + r * kLdT + c) = v;
        }
      } else {
        for (int idx = tid; idx < kBM * kBK; idx += kTileThreads) {
          const int r = idx / kBK, c = idx % kBK;
          T v = T(0.f);
          if (m0 + r < a.m && k0 + c < a.k) v = x[(m0 + r) * a.k + k0 + c];
          xs[r * kLdT + c] = v;
        }
      }
      // W tile: 64 rows x 2 blocks, one (row, block) per thread, rounded once to T.
      {
        const int r = tid & 63, bl = tid >> 6;
        float wv[32];
        dequant_row_block<BITS>(wv, a, n0 + r, 2 * st + bl);
        uint4* dst = reinterpret_cast<uint4*>(wsm + r * kLdT + bl * 32);  // 144 r + 64 bl bytes
#pragma unroll
        for (int c = 0; c < 4; ++c) {
          const float* v = wv + 8 * c;
          dst[c] = make_uint4(pack2<T>(v[0], v[1]), pack2<T>(v[2], v[3]), pack2<T>(v[4], v[5]),
                              pack2<T>(v[6], v[7]));
        }
      }
      __syncthreads();
#pragma unroll
      for (int kk = 0; kk < kBK; kk += 16) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> fa[2];
        wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> fb[2];
#pragma unroll
        for (int i = 0; i < 2; ++i)
          wmma::load_matrix_sync(fa[i], xs + (wm * 32 + i * 16) * kLdT + kk, kLdT);
#pragma unroll
        for (int jj = 0; jj < 2; ++jj)
          wmma::load_matrix_sync(fb[jj], wsm + (wn * 32 + jj * 16) * kLdT + kk, kLdT);
#pragma unroll
        for (int i = 0; i < 2; ++i)
#pragma unroll
          for (int jj = 0; jj < 2; ++jj) wmma::mma_sync(acc[i][jj], fa[i], fb[jj], acc[i][jj]);
      }
    }

    __syncthreads();  // operand buffers are reused for the epilogue
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int jj = 0; jj < 2; ++jj)
        wmma::store_matrix_sync(cs + (wm * 32 + i * 16) * kLdC + wn * 32 + jj * 16, acc[i][jj], kLdC,
                                wmma::mem_row_major);
    __syncthreads();
    for (int idx = tid; idx < kBM * kBN; idx += kTileThreads) {
      const int r = idx / kBN, c = idx % kBN;
      if (m0 + r < a.m && n0 + c < a.n) store_result(a, split, m0 + r, n0 + c, cs[r * kLdC + c]);
    }
  }
}

// ------------------------------------------------------------------ tiled path, fp32 FMA

constexpr int kLdF = 68;  // floats per k-row of the transposed tiles
constexpr int kFmaSmemFloats = 2 * kBK * kLdF;

template <int BITS>
__global__ void __launch_bounds__(kTileThreads) gemm_fma_kernel(const Args a, int64_t m_base) {
  __shared__ __align__(16) float smem[kFmaSmemFloats];
  float* xt = smem;              // [kBK][kLdF]: xt[k][m] = x[m0 + m, k0 + k]
  float* wt = smem + kBK * kLdF; // [kBK][kLdF]: wt[k][n] = W[n0 + n, k0 + k]

  const int tid = threadIdx.x;
  const int tx = tid & 15, ty = tid >> 4;  // outputs: rows 8 ty .. 8 ty + 7, cols 4 tx .. 4 tx + 3
  const CtaTile ct = cta_tile(a, m_base);
  const int64_t n0 = ct.n0, m0 = ct.m0, s_begin = ct.s_begin, s_end = ct.s_end;
  const int split = ct.split;

  float acc[8][4];
#pragma unroll
  for (int i = 0; i < 8; ++i)
#pragma unroll
    for (int jj = 0; jj < 4; ++jj) acc[i][jj] = 0.f;

  for (int64_t st = s_begin; st < s_end; ++st) {
    const int64_t k0 = st * kBK;
    __syncthreads();
    for (int idx = tid; idx < kBM * kBK; idx += kTileThreads) {
      const int r = idx / kBK, c = idx % kBK;  // consecutive threads: consecutive k (coalesced)
      float v = 0.f;
      if (m0 + r < a.m && k0 + c < a.k) v = detail::load_scale(a.x, a.x_dtype, (m0 + r) * a.k + k0 + c);
      xt[c * kLdF + r] = v;
    }
    {
      const int r = tid & 63, bl = tid >> 6;
      float wv[32];
      dequant_row_block<BITS>(wv, a, n0 + r, 2 * st + bl);
#pragma unroll
      for (int c = 0; c < 32; ++c) wt[(bl * 32 + c) * kLdF + r] = wv[c];
    }
    __syncthreads();
#pragma unroll 4
    for (int kk = 0; kk < kBK; ++kk) {
      const float4 a0 = *reinterpret_cast<const float4*>(xt + kk * kLdF + 8 * ty);
      const float4 a1 = *reinterpret_cast<const float4*>(xt + kk * kLdF + 8 * ty + 4);
      const float4 bv = *reinterpret_cast<const float4*>(wt + kk * kLdF + 4 * tx);
      const float av[8] = {a0.x, a0.y, a0.z, a0.w, a1.x, a1.y, a1.z, a1.w};
      const float bw[4] = {bv.x, bv.y, bv.z, bv.w};
#pragma unroll
      for (int i = 0; i < 8; ++i)
#pragma unroll
        for (int jj = 0; jj < 4; ++jj) acc[i][jj] = fmaf(av[i], bw[jj], acc[i][jj]);
    }
  }

#pragma unroll
  for (int i = 0; i < 8; ++i) {
    const int64_t row = m0 + 8 * ty + i;
    if (row >= a.m) continue;
#pragma unroll
    for (int jj = 0; jj < 4; ++jj) {
      const int64_t col = n0 + 4 * tx + jj;
      if (col < a.n) store_result(a, split, row, col, acc[i][jj]);
    }
  }
}


// ------------------------------------------------------------------ host dispatch

template <int BITS>
void launch_tiled_bits(const Args& a, cudaStream_t s) {
  const bool tc = a.x_dtype == DType::f16 || (a.x_dtype == DType::bf16 && device_cc_major() >= 8);
  const int64_t m_tiles = ceil_div(a.m, kBM);
  const int64_t kMaxGridY = 65535;
  // M beyond 65535 * 64 rows: several launches, each covering up to 65535 row tiles.
  for (int64_t mt0 = 0; mt0 < m_tiles; mt0 += kMaxGridY) {
    const int64_t mts = std::min(kMaxGridY, m_tiles - mt0);
    const dim3 grid(static_cast<unsigned>(ceil_div(a.n, kBN)), static_cast<unsigned>(mts),
                    static_cast<unsigned>(a.splits));
    const int64_t m_base = mt0 * kBM;
    if (tc && a.x_dtype == DType::f16) {
      detail::launch("gemm_tc_kernel", gemm_tc_kernel<BITS, __half>, grid, kTileThreads, 0, s, a, m_base);
    } else if (tc) {
      detail::launch("gemm_tc_kernel", gemm_tc_kernel<BITS, __nv_bfloat16>, grid, kTileThreads, 0, s, a, m_base);
    } else {
      detail::launch("gemm_fma_kernel", gemm_fma_kernel<BITS>, grid, kTileThreads, 0, s, a, m_base);
    }
  }
}


}  // namespace

void launch_tiled(const Args& a, cudaStream_t s) {
  decode::dispatch_bits(a.bits, kGemmWhat, [&](auto bits) { launch_tiled_bits<decltype(bits)::value>(a, s); });
}

}  // namespace gemm_detail
}  // namespace cuda
}  // namespace cat
