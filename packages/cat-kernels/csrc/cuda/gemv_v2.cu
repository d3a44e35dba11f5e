// GEMV path v2 of gemm (M <= 8, float16 / bfloat16 x, sm_80+): tensor-core GEMV, memory-bound
// by construction. The lane layout and the split plan are in gemv_arith.h, the decode in decode.h
// (both shared with the host emulator); this file is the CUDA around them.
//
// Per block of 32 columns a lane does one or two 64-bit loads of codes (its 8 codes of two rows),
// one 128-bit load of x (8 columns of one x row, L1-resident), 2 x (shifts + 4 LOP3 + 4 fma2)
// to turn the 16 codes into exact (q - z) half2 pairs, 4 byte permutes for the x pairs and two
// mma.m16n8k16 (fp32 accumulate). The scale is applied once per group (y += s * D), the zero
// point rides in the fma2's bias. Codes and x are prefetched one step (1, 2 or 4 blocks, the
// unit) ahead, scales and zero points one group ahead.
//
// Numerics (docs/format.md "Numeric contract"): x enters the mma exactly (it is already 16-bit),
// (q - z) is an exact small integer in x's type, products are exact in fp32 and accumulate in
// fp32; W is never rounded to 16 bits, so a weight beyond 65504 cannot become inf.
//
// Split-K: warps of a CTA split the tile's K range and are summed in warp order through shared
// memory; CTAs of one tile (a.v2.splits > 1) write fp32 partials to the workspace and the last to
// arrive (a per-tile atomic counter) adds them in split order, rounds once, and resets its
// counter. Deterministic: the plan depends on the shapes only, every sum has a fixed order.
#include "gemm_common.cuh"

namespace cat {
namespace cuda {
namespace gemm_detail {
namespace {

#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ >= 800)
#define CAT_V2_DEVICE 1
#else
#define CAT_V2_DEVICE 0
#endif

template <bool BF16>
__device__ __forceinline__ uint32_t hfma2(uint32_t a, uint32_t b, uint32_t c) {
  uint32_t d = 0;
#if CAT_V2_DEVICE
  if constexpr (BF16)
    asm("fma.rn.bf16x2 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
  else
    asm("fma.rn.f16x2 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
#endif
  return d;
}

// Two floats rounded to x's 16-bit type, `lo` in the low half.
template <bool BF16>
__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
  uint32_t d = 0;
#if CAT_V2_DEVICE
  if constexpr (BF16)
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(d) : "f"(hi), "f"(lo));
  else
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(d) : "f"(hi), "f"(lo));
#endif
  return d;
}

// d += A (16 x 16, row-major fragments a0..a3) * B (16 x 8, b0 b1), fp32 accumulate.
template <bool BF16>
__device__ __forceinline__ void mma(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                    uint32_t b0, uint32_t b1) {
#if CAT_V2_DEVICE
  if constexpr (BF16)
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
  else
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
#endif
}

// One step (U blocks) of the lane's codes (rows 2g, 2g+1 of its words: one 64-bit load each)
// and x (8 columns of one row: one 128-bit load). All blocks are real and full (K % 32 == 0).
template <int BITS, int U>
__device__ __forceinline__ void load_step(uint2 (&w)[U][gemv::lane_words<BITS>()], uint4 (&xv)[U],
                                          const int32_t* __restrict__ w0,
                                          const int32_t* __restrict__ w1,
                                          const uint16_t* __restrict__ xp) {
#pragma unroll
  for (int u = 0; u < U; ++u) {
    w[u][0] = __ldg(reinterpret_cast<const uint2*>(w0 + u * BITS * kTileN));
    if constexpr (gemv::lane_words<BITS>() == 2)
      w[u][1] = __ldg(reinterpret_cast<const uint2*>(w1 + u * BITS * kTileN));
    xv[u] = __ldg(reinterpret_cast<const uint4*>(xp + u * kBlockK));
  }
}

// One block: decode the lane's 16 codes to exact (q - z) pairs, pair x the same way, 2 mmas.
template <int BITS, bool BF16>
__device__ __forceinline__ void block_mma(float (&d)[4], const uint2 (&w)[gemv::lane_words<BITS>()],
                                          const uint4& xv, int c, const uint32_t (&bias)[2][4],
                                          const float (&zb)[2]) {
  constexpr int NW = gemv::lane_words<BITS>();
  uint32_t hA[4], hB[4];
  if constexpr (decode::f32_route<BITS, BF16>()) {
    uint32_t fA[8], fB[8];
    decode::gemv_decode_f32(w[0].x, w[NW - 1].x, fA);
    decode::gemv_decode_f32(w[0].y, w[NW - 1].y, fB);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const decode::PairInfo pi = decode::pair_info<BITS, BF16>(j);
      hA[j] = pack2<BF16>(__uint_as_float(fA[pi.lo]) - zb[0], __uint_as_float(fA[pi.hi]) - zb[0]);
      hB[j] = pack2<BF16>(__uint_as_float(fB[pi.lo]) - zb[1], __uint_as_float(fB[pi.hi]) - zb[1]);
    }
  } else {
    decode::gemv_decode<BITS, BF16>(w[0].x, w[NW - 1].x, c, hA);
    decode::gemv_decode<BITS, BF16>(w[0].y, w[NW - 1].y, c, hB);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const decode::PairInfo pi = decode::pair_info<BITS, BF16>(j);
      const uint32_t mult = decode::pow2_neg_bits<BF16>(pi.plo) | decode::pow2_neg_bits<BF16>(pi.phi) << 16;
      hA[j] = hfma2<BF16>(hA[j], mult, bias[0][j]);
      hB[j] = hfma2<BF16>(hB[j], mult, bias[1][j]);
    }
  }
  const uint32_t xr[4] = {xv.x, xv.y, xv.z, xv.w};
  uint32_t xp[4];
#pragma unroll
  for (int j = 0; j < 4; ++j) xp[j] = decode::x_pair<BITS, BF16>(xr, j);
#pragma unroll
  for (int sl = 0; sl < 2; ++sl) {
    uint32_t av[4], bv[2];
    gemv::mma_operands(hA, hB, xp, sl, av, bv);
    mma<BF16>(d, av[0], av[1], av[2], av[3], bv[0], bv[1]);
  }
}

template <bool BF16>
__device__ __forceinline__ void store_y(void* out, int64_t i, float v) {
  if constexpr (BF16)
    static_cast<__nv_bfloat16*>(out)[i] = __float2bfloat16_rn(v);
  else
    static_cast<__half*>(out)[i] = __float2half_rn(v);
}

template <int BITS, bool BF16, int U>
__global__ void __launch_bounds__(32 * gemv::kMaxWarps) gemv_v2_kernel(const Args a) {
#if CAT_V2_DEVICE
  constexpr int NW = gemv::lane_words<BITS>();
  __shared__ float4 red[gemv::kMaxWarps][32];

  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int c = gemv::lane_quad(lane), r0 = gemv::lane_row0(lane);
  const int64_t t = blockIdx.x;
  const int split = blockIdx.y;
  const gemv::Plan& p = a.v2;
  int64_t b, b1;
  gemv::chunk_range(p, int64_t(split) * p.warps + warp, b, b1);

  float acc[4] = {0.f, 0.f, 0.f, 0.f};
  if (b < b1) {
    // x rows >= M: the lane feeds a copy of row M-1 (finite, its outputs are never stored)
    const int64_t xm = min(int64_t(lane >> 2), a.m - 1);
    const uint16_t* xp = static_cast<const uint16_t*>(a.x) + xm * a.k + gemv::lane_col(b, lane, 0);
    const int32_t* wt = a.packed + (t * a.n_blocks + b) * BITS * kTileN + r0;
    const int32_t* w0 = wt + gemv::lane_word<BITS>(c, 0) * kTileN;
    const int32_t* w1 = wt + gemv::lane_word<BITS>(c, 1) * kTileN;
    constexpr int kStepWords = U * BITS * kTileN;

    uint2 wA[U][NW], wB[U][NW];
    uint4 xA[U], xB[U];
    load_step<BITS, U>(wA, xA, w0, w1, xp);

    // Groups: the current one ends before block gnext. Its scales and zero points were fetched
    // (raw) one group ahead and are converted when it starts. Rows past N read row N-1's (their
    // codes are padding and their outputs are never stored).
    const int64_t row0 = t * kTileN + r0;
    const int64_t rA = min(row0, a.n - 1), rB = min(row0 + 1, a.n - 1);
    const bool s32 = a.scale_dtype == DType::f32, sbf = a.scale_dtype == DType::bf16;
    // n_blocks from k, not a.n_blocks: the same value, in the form ptxas schedules this kernel best
    const int64_t bpg64 = decode::blocks_per_group(a.group_size, decode::cdiv(a.k, kBlockK));
    const int bpg = static_cast<int>(min(bpg64, int64_t(1) << 30));
    int bi = static_cast<int>(b);
    const int bend = static_cast<int>(b1);
    int g = static_cast<int>(b / bpg64);
    int gnext = static_cast<int>(min((int64_t(g) + 1) * bpg64, b1));
    // scale element indices fit 32 bits (n * n_groups < 2^31 is checked by gemm()); one address
    // per row serves both scale widths
    const char* sbase = static_cast<const char*>(a.scales);
    const uint32_t es = s32 ? 4u : 2u;
    uint32_t siA = static_cast<uint32_t>(rA * a.n_groups), siB = static_cast<uint32_t>(rB * a.n_groups);
    // opaque to the optimizer: keep them in registers instead of recomputing them (64-bit
    // compares and multiplies) at every group inside the loop
    asm volatile("" : "+r"(siA), "+r"(siB));
    const int32_t* zrow = a.zeros == nullptr ? nullptr
                          : a.zeros + t * decode::zero_row_words(a.n_groups, BITS) * kTileN + r0;
    uint32_t sr[2], zr[2];
    auto fetch = [&](int gg) {
      const char* pA = sbase + size_t(siA + uint32_t(gg)) * es;
      const char* pB = sbase + size_t(siB + uint32_t(gg)) * es;
      if (s32) {
        sr[0] = __ldg(reinterpret_cast<const unsigned*>(pA));
        sr[1] = __ldg(reinterpret_cast<const unsigned*>(pB));
      } else {
        sr[0] = __ldg(reinterpret_cast<const unsigned short*>(pA));
        sr[1] = __ldg(reinterpret_cast<const unsigned short*>(pB));
      }
      if (zrow == nullptr) {
        zr[0] = zr[1] = 1u << (BITS - 1);
      } else {
        const int pos = gg * BITS, off = pos & 31;
        const uint2 lo = __ldg(reinterpret_cast<const uint2*>(zrow + (pos >> 5) * kTileN));
        uint2 hi = lo;
        if (BITS == 3 && off > 29) hi = __ldg(reinterpret_cast<const uint2*>(zrow + ((pos >> 5) + 1) * kTileN));
        zr[0] = decode::field(lo.x, hi.x, off, BITS);
        zr[1] = decode::field(lo.y, hi.y, off, BITS);
      }
    };
    auto to_float = [&](uint32_t r) {
      return s32 ? __uint_as_float(r)
                 : sbf ? __uint_as_float(r << 16) : __half2float(__ushort_as_half(static_cast<unsigned short>(r)));
    };
    fetch(g);
    float s0 = 0.f, s1 = 0.f, zb[2] = {0.f, 0.f};
    uint32_t bias[2][4];
    auto setup = [&]() {
      s0 = to_float(sr[0]);
      s1 = to_float(sr[1]);
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        if constexpr (decode::f32_route<BITS, BF16>()) {
          zb[i] = 8388608.f + static_cast<float>(zr[i]);
        } else {
#pragma unroll
          for (int j = 0; j < 4; ++j) bias[i][j] = decode::bias_bits<BITS, BF16>(j, zr[i]);
        }
      }
      if (gnext < bend) fetch(g + 1);  // the next group's, ahead
    };
    setup();

    float d[4] = {0.f, 0.f, 0.f, 0.f};
    // One step: prefetch the next U blocks into (wn, xn), compute (wc, xc); at a group's end
    // apply its scale and set up the next. Two calls per trip swap the buffers without copies.
    auto step = [&](uint2 (&wc)[U][NW], uint4 (&xc)[U], uint2 (&wn)[U][NW], uint4 (&xn)[U]) {
      const bool more = bi + U < bend;
      w0 += kStepWords;
      w1 += kStepWords;
      xp += U * kBlockK;
      if (more) load_step<BITS, U>(wn, xn, w0, w1, xp);
#pragma unroll
      for (int u = 0; u < U; ++u) block_mma<BITS, BF16>(d, wc[u], xc[u], c, bias, zb);
      bi += U;
      if (more && bi == gnext) {
        acc[0] = fmaf(s0, d[0], acc[0]);
        acc[1] = fmaf(s0, d[1], acc[1]);
        acc[2] = fmaf(s1, d[2], acc[2]);
        acc[3] = fmaf(s1, d[3], acc[3]);
        d[0] = d[1] = d[2] = d[3] = 0.f;
        ++g;
        gnext = min(gnext + bpg, bend);
        setup();
      }
      return more;
    };
    while (step(wA, xA, wB, xB) && step(wB, xB, wA, xA)) {
    }
    acc[0] = fmaf(s0, d[0], acc[0]);
    acc[1] = fmaf(s0, d[1], acc[1]);
    acc[2] = fmaf(s1, d[2], acc[2]);
    acc[3] = fmaf(s1, d[3], acc[3]);
  }

  // Sum the CTA's warps in warp order.
  red[warp][lane] = make_float4(acc[0], acc[1], acc[2], acc[3]);
  __syncthreads();
  if (warp != 0) return;
  float v[4] = {0.f, 0.f, 0.f, 0.f};
  for (int w = 0; w < p.warps; ++w) {
    const float4 r = red[w][lane];
    v[0] += r.x;
    v[1] += r.y;
    v[2] += r.z;
    v[3] += r.w;
  }
  const int64_t tile0 = t * kTileN;
  if (p.splits == 1) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int64_t row = tile0 + gemv::out_row(lane, i), m = gemv::out_m(lane, i);
      if (row < a.n && m < a.m) store_y<BF16>(a.out, m * a.n + row, v[i]);
    }
    return;
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int64_t row = tile0 + gemv::out_row(lane, i), m = gemv::out_m(lane, i);
    if (row < a.n && m < a.m) a.ws[(int64_t(split) * a.m + m) * a.n + row] = v[i];
  }
  __threadfence();  // the partials are visible device-wide before this CTA is counted
  __syncwarp();
  unsigned prev = 0;
  if (lane == 0) prev = atomicAdd(a.counters + t, 1u);
  prev = __shfl_sync(0xffffffffu, prev, 0);
  if (prev != static_cast<unsigned>(p.splits - 1)) return;
  __threadfence();
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int64_t row = tile0 + gemv::out_row(lane, i), m = gemv::out_m(lane, i);
    if (row >= a.n || m >= a.m) continue;
    float sum = 0.f;
    for (int sp = 0; sp < p.splits; ++sp) sum += __ldcg(a.ws + (int64_t(sp) * a.m + m) * a.n + row);
    store_y<BF16>(a.out, m * a.n + row, sum);
  }
  if (lane == 0) a.counters[t] = 0u;  // ready for the next call (graph replays included)
#else
  (void)a;
  __trap();  // never launched below sm_80: gemm() picks the legacy kernel there
#endif
}

template <int BITS, bool BF16>
void launch_v2_typed(const Args& a, cudaStream_t s) {
  const dim3 grid(static_cast<unsigned>(a.n_tiles), static_cast<unsigned>(a.v2.splits));
  const dim3 block(32u * static_cast<unsigned>(a.v2.warps));
  switch (a.v2.unit) {
    case 4: detail::launch("gemv_v2_kernel", gemv_v2_kernel<BITS, BF16, 4>, grid, block, 0, s, a); break;
    case 2: detail::launch("gemv_v2_kernel", gemv_v2_kernel<BITS, BF16, 2>, grid, block, 0, s, a); break;
    default: detail::launch("gemv_v2_kernel", gemv_v2_kernel<BITS, BF16, 1>, grid, block, 0, s, a); break;
  }
}

}  // namespace

void launch_gemv_v2(const Args& a, cudaStream_t s) {
  if (a.x_dtype != DType::f16 && a.x_dtype != DType::bf16)
    throw std::runtime_error("cat_kernels CUDA gemm: the v2 GEMV takes float16 or bfloat16 x");
  decode::dispatch_bits_bf16(a.bits, a.x_dtype == DType::bf16, kGemmWhat, [&](auto bits, auto bf16) {
    launch_v2_typed<decltype(bits)::value, decltype(bf16)::value>(a, s);
  });
}

}  // namespace gemm_detail
}  // namespace cuda
}  // namespace cat
