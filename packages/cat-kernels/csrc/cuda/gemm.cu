// gemm: y[M, N] = x[M, K] @ dequantize(W)[N, K]^T, accumulated in float32, y in x's dtype.
//
// Two paths behind one entry point, both split-K. Which kernels run is chosen per call by
// cat::cuda::impl() (CAT_KERNELS_CUDA_IMPL / cat_kernels.set_cuda_impl): v2 (default) or legacy.
//
//  * v2 GEMV (M <= 8, float16/bfloat16 x, sm_80+, K % 32 == 0, aligned arrays): gemv_v2.cu, a
//    tensor-core GEMV on exact (q - z) pairs; its arithmetic is gemv_arith.h (host-tested). It
//    reduces its own split-K partials (last CTA per tile, counters after the partials in the
//    workspace). Other GEMV calls take the legacy GEMV below.
//  * v2 tiled (M > 8): gemm_tiled_v2.cu (mma.sync + cp.async; CAT_HAVE_TILED_V2 tells bindings it is built).
//
// The legacy kernels, kept selectable until a GPU run has verified v2:
//
//  * GEMV path (M <= 8, decode): purely bandwidth-bound, so the goal is to stream `packed` once,
//    fully coalesced, with many bytes in flight. A CTA is 4 warps; warp w owns one tile of 16
//    weight rows. Lane (j = lane % 4, o = lane / 4) owns rows 4j..4j+3 of the tile and blocks
//    o, o+8, o+16, ... of the CTA's K range. For each block it does `bits` 128-bit loads of
//    packed[t, b, w, 4j..4j+3] -- the four lanes with the same o read one 64-byte segment, so
//    every sector fetched is fully used -- and keeps M x 4 float accumulators. The x rows of the
//    CTA's K range are staged once in shared memory as float (zero beyond K and beyond M), 36
//    floats per block so that the 8 blocks a warp reads at once hit 8 disjoint bank quads.
//    Weights are dequantized exactly as format.md says, w = float(q - z) * s in fp32 (no
//    rounding to a 16-bit type), then y += x * w. At the end the 8 lanes that share rows are
//    summed with a fixed butterfly.
//
//  * Tiled path (M > 8, prefill): CTA tile 64 (M) x 64 (N) x 64 (K), 128 threads. Every k-step
//    the x tile and the dequantized W tile (one (row, 32-column block) per thread: `bits` words,
//    one scale, one zero) go to shared memory, then
//      - fp16 / bf16 x: tensor cores through WMMA 16x16x16 (fp32 accumulate), 2x2 fragments per
//        warp. W is rounded once to x's dtype, which is exactly dequantize(W, dtype=x.dtype).
//        bf16 needs sm_80; on sm_75 bf16 falls back to the FMA kernel.
//      - fp32 x: fp32 FMA, 8 x 4 outputs per thread (W stays fp32, no TF32).
//    No cp.async pipeline yet: correctness first.
//
// Split-K and determinism: the number of K partitions (`gemm_splits`) is a function of
// (M, N, K) only. With one partition the kernels write y directly; otherwise partition s writes
// its fp32 partial sums to workspace[s, :, :] and `reduce_kernel` adds partitions 0, 1, 2, ...
// in that order and rounds once to y's dtype (the v2 GEMV does the same in-kernel; its atomic only
// counts arrivals). No value is ever added atomically, so every call on a given GPU
// returns bit-identical results.
//
// Padding: padded rows (n >= N) are never stored; padded columns (k >= K, only possible with
// group_size = -1) meet x = 0 (x is zero-extended when staged, never read out of bounds), and
// the tiled path also zeroes the weights there (so an overflowing 16-bit weight cannot make
// 0 * inf = NaN).
//
// Files: gemm.cu (this: plans, split-K reduction, entry points), gemv_v2.cu + gemv_arith.h (v2
// GEMV), gemv.cu (legacy GEMV), gemm_tiled.cu (legacy tiled), gemm_common.cuh (what they share). The kernels live in separate
// translation units so that a parallel build compiles them concurrently.
#include <algorithm>
#include <atomic>

#include "gemm_common.cuh"
#include "tiled_v2_math.h"

namespace cat {
namespace cuda {

using namespace gemm_detail;

namespace {

struct Plan {
  int splits = 1;
  int64_t per_split = 0;  // GEMV: 32-column blocks per split; tiled: 64-column k-steps per split
};

Plan gemv_plan(int64_t m, int64_t n, int64_t k) {
  // gemv_arith.h holds the arithmetic (host-tested, including the shared-memory cap).
  const gemv::LegacyPlan lp = gemv::legacy_plan(m, n, k);
  Plan p;
  p.per_split = lp.per_split;
  p.splits = lp.splits;
  return p;
}

Plan tiled_plan(int64_t m, int64_t n, int64_t k) {
  const int64_t steps = ceil_div(k, kBK);
  const int64_t ctas = ceil_div(n, kBN) * ceil_div(m, kBM);
  int64_t want = ceil_div(kTileTargetCtas, ctas);
  want = std::min<int64_t>(want, std::max<int64_t>(1, steps / 4));  // >= 4 k-steps per split
  want = std::min<int64_t>(want, kMaxSplits);
  want = std::max<int64_t>(want, 1);
  const int64_t spk = ceil_div(steps, want);
  Plan p;
  p.per_split = spk;
  p.splits = static_cast<int>(ceil_div(steps, spk));
  return p;
}

// M > 8 in v2 mode: gemm_tiled_v2.cu with its own plan (tiled_v2_math.h).
bool tiled_v2_selected() { return impl() == Impl::v2; }

Plan plan_for(int64_t m, int64_t n, int64_t k) {
  if (m > kGemvMaxM && tiled_v2_selected()) {
    const tiled_v2::Plan p = tiled_v2::plan(m, n, k);
    return Plan{p.splits, p.per_split};
  }
  return m <= kGemvMaxM ? gemv_plan(m, n, k) : tiled_plan(m, n, k);
}

// ------------------------------------------------------------------ split-K reduction

// y[i] = round(ws[0, i] + ws[1, i] + ... + ws[splits-1, i]), always in this order.
template <DType OUT>
__global__ void reduce_kernel(const float* __restrict__ ws, int splits, int64_t mn, void* out) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < mn;
       i += int64_t(gridDim.x) * blockDim.x) {
    float v = ws[i];
    for (int s = 1; s < splits; ++s) v += ws[int64_t(s) * mn + i];
    detail::store_from_float<OUT>(out, i, v);
  }
}



// The v2 GEMV's workspace: [splits, m, n] fp32 partials, then one uint32 counter per tile.
int64_t v2_workspace_elems(int64_t m, int64_t n, int64_t k, int64_t group_size) {
  const gemv::Plan p = gemv::plan(n, k, group_size);
  return p.splits > 1 ? int64_t(p.splits) * m * n + ceil_div(n, kTileN) : 0;
}

bool aligned8(const void* p) { return reinterpret_cast<uintptr_t>(p) % 8 == 0; }

}  // namespace

namespace gemm_detail {

// Compute capability major of the current device, cached per device (cudaDeviceGetAttribute is
// cheap, but gemm is called per layer per token). Shared by every dispatch.
int device_cc_major() {
  static std::atomic<int> cache[64];  // major + 1; 0 = not looked up yet
  int dev = 0;
  detail::check(cudaGetDevice(&dev), "gemm (cudaGetDevice)");
  if (dev >= 0 && dev < 64) {
    const int v = cache[dev].load(std::memory_order_relaxed);
    if (v > 0) return v - 1;
  }
  int major = 0;
  detail::check(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev),
                "gemm (cudaDeviceGetAttribute)");
  if (dev >= 0 && dev < 64) cache[dev].store(major + 1, std::memory_order_relaxed);
  return major;
}

}  // namespace gemm_detail

int gemm_splits(int64_t m, int64_t n, int64_t k, int bits, int64_t group_size) {
  (void)bits;
  if (m <= 0 || n <= 0 || k <= 0) return 1;
  if (m <= kGemvMaxM && impl() == Impl::v2) return gemv::plan(n, k, group_size).splits;
  return plan_for(m, n, k).splits;
}

// Enough for whichever path gemm() picks (it may fall back to the legacy GEMV for float32 x,
// GPUs below sm_80 or unaligned arrays, which the caller sizing the workspace cannot know).
int64_t gemm_workspace_elems(int64_t m, int64_t n, int64_t k, int bits, int64_t group_size) {
  if (m <= 0 || n <= 0 || k <= 0) return 0;
  const Plan p = plan_for(m, n, k);
  int64_t elems = p.splits > 1 ? int64_t(p.splits) * m * n : 0;
  (void)bits;
  if (m <= kGemvMaxM && impl() == Impl::v2) elems = std::max(elems, v2_workspace_elems(m, n, k, group_size));
  return elems;
}

void gemm(const void* x, DType x_dtype, int64_t m, const QWeight& w, void* out, float* workspace,
          void* stream) {
  cudaStream_t s = detail::as_stream(stream);
  if (m <= 0 || w.n <= 0) return;
  if (w.k <= 0) {  // empty sum
    const size_t elem = x_dtype == DType::f32 ? 4 : 2;
    detail::check(cudaMemsetAsync(out, 0, size_t(m) * w.n * elem, s), "gemm (cudaMemsetAsync)");
    return;
  }
  const bool v2 = impl() == Impl::v2;

  Args a;
  a.x = x;
  a.x_dtype = x_dtype;
  a.m = m;
  a.n = w.n;
  a.k = w.k;
  a.packed = w.packed;
  a.scales = w.scales;
  a.scale_dtype = w.scale_dtype;
  a.zeros = w.zeros;
  a.bits = w.bits;
  a.group_size = w.group_size;
  a.n_groups = w.n_groups();
  a.n_blocks = ceil_div(w.k, kBlockK);
  a.n_tiles = ceil_div(w.n, kTileN);
  a.aligned16 = reinterpret_cast<uintptr_t>(w.packed) % 16 == 0 &&
                (w.zeros == nullptr || reinterpret_cast<uintptr_t>(w.zeros) % 16 == 0);
  a.out = out;
  a.ws = workspace;

  // v2 GEMV: 16-bit x on sm_80+, K % 32 == 0, x 16-byte and codes / zero points 8-byte aligned
  // (128- and 64-bit loads, no bounds checks in the loop). Otherwise (float32 x, older GPUs,
  // odd K with a whole-row group, unaligned views) the legacy GEMV, which meets the same numeric
  // contract (docs/format.md) at lower speed.
  if (v2 && m <= kGemvMaxM && x_dtype != DType::f32 && gemv::v2_shape_ok(w.k) &&
      w.n * w.n_groups() < (int64_t(1) << 31) &&
      reinterpret_cast<uintptr_t>(x) % 16 == 0 && aligned8(w.packed) &&
      (w.zeros == nullptr || aligned8(w.zeros)) && device_cc_major() >= 8) {
    a.v2 = gemv::plan(w.n, w.k, w.group_size);
    a.splits = a.v2.splits;
    a.per_split = 0;
    if (a.v2.splits > 1) {
      if (workspace == nullptr)
        throw std::runtime_error("cat_kernels CUDA gemm: split-K needs a workspace (gemm_workspace_elems)");
      // The counters sit after the partials; each is reset by the CTA that finishes its tile,
      // but a fresh workspace holds garbage, so zero them (a few hundred bytes) on the stream.
      a.counters = reinterpret_cast<uint32_t*>(workspace + int64_t(a.v2.splits) * m * w.n);
      detail::check(cudaMemsetAsync(a.counters, 0, size_t(a.n_tiles) * sizeof(uint32_t), s),
                    "gemm (cudaMemsetAsync counters)");
    }
    launch_gemv_v2(a, s);
    return;
  }

  const Plan p = plan_for(m, w.n, w.k);
  if (p.splits > 1 && workspace == nullptr)
    throw std::runtime_error("cat_kernels CUDA gemm: split-K needs a workspace (gemm_workspace_elems)");
  a.splits = p.splits;
  a.per_split = p.per_split;

  if (m <= kGemvMaxM)
    launch_gemv(a, s);
  else if (tiled_v2_selected())
    launch_tiled_v2(a, s);  // fp32 x and GPUs below sm_80 go on to launch_tiled, same plan
  else
    launch_tiled(a, s);

  if (p.splits > 1) {
    const int64_t mn = m * w.n;
    const int threads = 256;
    const unsigned grid = detail::grid_for(mn, threads);
    switch (x_dtype) {
      case DType::f16:
        detail::launch("reduce_kernel", reduce_kernel<DType::f16>, grid, threads, 0, s, workspace, p.splits, mn, out);
        break;
      case DType::bf16:
        detail::launch("reduce_kernel", reduce_kernel<DType::bf16>, grid, threads, 0, s, workspace, p.splits, mn, out);
        break;
      default:
        detail::launch("reduce_kernel", reduce_kernel<DType::f32>, grid, threads, 0, s, workspace, p.splits, mn, out);
        break;
    }
  }
}

}  // namespace cuda
}  // namespace cat
