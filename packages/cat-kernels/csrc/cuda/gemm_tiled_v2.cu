// Tiled path v2 of gemm (M > 8): mma.sync m16n8k16 fed by a cp.async pipeline, each weight
// decoded once per CTA tile of up to 128 rows of x.
//
// CTA: 4 warps, 64 W rows (warp w owns packed tile n0 / 16 + w, i.e. two n8 mma fragments) x
// 16 MT rows of x (MT = 2, 4, 8 by M: 32, 64, 128 rows), k-steps of 64 columns (2 blocks).
// Per k-step, cp.async brings into one stage of a 3-4 stage ring: the x tile (16-byte chunks,
// XOR-swizzled so ldmatrix is conflict-free), the 4 tiles x 2 blocks of packed codes (an
// identity copy: they are contiguous per tile in global memory); the scales and zero points of
// the stage's 64 rows x 2 blocks are loaded into registers one k-step early and stored into the
// stage the next k-step (they are 2-byte values strided by n_groups, which cp.async cannot
// copy). Each warp decodes its 16 rows x 32 columns per block straight from the stage into mma
// B registers (prmt/lop3 into the mantissa of a 16-bit magic number, minus magic + z: exact
// integers q - z) and multiplies them with all MT A fragments (ldmatrix.x4).
//
// The numeric contract (docs/format.md): per group, the mma accumulates x * (q - z) in fp32
// (x exact in its 16-bit dtype, q - z exact); when a group ends, total += s * part in fp32. W
// is never rounded to 16 bits, so a finite weight never becomes inf, and the result does not
// depend on M. Bounds: x rows >= M and columns >= K are zero-filled by cp.async (src-size 0),
// packed tiles / blocks past the matrix likewise, blocks past K are skipped; only the
// epilogue checks (row < M, col < N).
//
// fp32 x, and GPUs below sm_80 (no cp.async, no m16n8k16), use the legacy kernels
// (gemm_tiled.cu) with the same split plan. All index arithmetic lives in tiled_v2_math.h and
// the decode in decode.h, which the host emulator (tests/emulator/) runs for every CTA.
//
// SASS: docs/sass_budget.md (tools/sass_budget.py) has, per instantiation, the main loop's
// instructions per weight (one k-step: 64 columns x 64 W rows, 32 weights per thread; the
// group-flush FFMAs, run once per group, count in full), registers and spills.
// Shared memory (dynamic): stages_for(MT) * stage_bytes(MT, bits), 23-63 KB.
#include <algorithm>
#include <atomic>

#include "gemm_common.cuh"
#include "tiled_v2_math.h"

namespace cat {
namespace cuda {
namespace gemm_detail {
namespace {

namespace tv2 = ::cat::tiled_v2;

// ------------------------------------------------------------------ PTX wrappers

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// cp.async of BYTES (16: .cg, L2 only; 4: .ca); src-size 0 writes zeros and reads nothing.
template <int BYTES>
__device__ __forceinline__ void cp_async(void* dst, const void* src, bool valid) {
  const int n = valid ? BYTES : 0;
  if constexpr (BYTES == 16) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src),
                 "r"(n));
  } else {
    asm volatile("cp.async.ca.shared.global [%0], [%1], %2, %3;\n" ::"r"(smem_addr(dst)), "l"(src),
                 "n"(BYTES), "r"(n));
  }
}
__device__ __forceinline__ void cp_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}

template <bool BF16>
__device__ __forceinline__ void mma16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                         uint32_t b1) {
  if constexpr (BF16) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
        "{%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
        "{%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

// ------------------------------------------------------------------ per-stage metadata

// The raw words of one (row, block)'s scale and zero point, loaded a k-step before they are
// decoded and stored (so the loads' latency overlaps a k-step of mma work).
struct RawMeta {
  uint32_t s, zlo, zhi;
  int zoff;
  bool valid;
};

template <int BITS>
__device__ __forceinline__ RawMeta load_meta(const Args& a, const tv2::MetaSrc& src) {
  RawMeta m{0u, 0u, 0u, src.zoff, src.valid};
  if (!src.valid) return m;
  if (a.scale_dtype == DType::f32)
    m.s = __ldg(static_cast<const uint32_t*>(a.scales) + src.scale);
  else
    m.s = __ldg(static_cast<const unsigned short*>(a.scales) + src.scale);
  if (a.zeros != nullptr) {
    m.zlo = static_cast<uint32_t>(__ldg(a.zeros + src.zlo));
    if (src.zhi >= 0) m.zhi = static_cast<uint32_t>(__ldg(a.zeros + src.zhi));
  }
  return m;
}

// Fallback copies, out of the main loop's code: x staged element by element (K % 8 != 0 or x not
// 16-byte aligned: zero outside M x K), packed codes in 4-byte cp.asyncs (packed not 16-byte
// aligned).
template <int MT>
__device__ __noinline__ void stage_x_slow(unsigned short* xs, const unsigned short* x, const Args& a,
                                          int64_t m0, int64_t k0, int tid) {
  for (int e = tid; e < 16 * MT * tv2::kBK; e += tv2::kThreads) {
    const int r = e / tv2::kBK, c = e % tv2::kBK;
    const int64_t row = m0 + r, col = k0 + c;
    xs[tv2::x_swizzle(r, c)] = (row < a.m && col < a.k) ? x[row * a.k + col] : (unsigned short)0;
  }
}
template <int BITS>
__device__ __noinline__ void stage_packed_slow(uint32_t* pk, const Args& a, int64_t tile0, int64_t step,
                                               int tid) {
  for (int u = tid; u < tv2::packed_units(BITS, 4); u += tv2::kThreads) {
    const tv2::PackedCopy p = tv2::packed_copy(u, 4, BITS, tile0, a.n_tiles, a.n_blocks);
    const bool ok = p.tile_ok && step * tv2::kBlocksPerStep + p.bl < a.n_blocks;
    cp_async<4>(pk + p.smem_word, ok ? a.packed + p.gmem_word0 + step * tv2::packed_step_words(BITS) : a.packed,
                ok);
  }
}

template <int BITS, bool BF16>
__device__ __forceinline__ void store_meta(const Args& a, const RawMeta& m, float* s_slot,
                                           uint32_t* z_slot) {
  float s = 0.f;
  uint32_t z = 0;
  if (m.valid) {
    s = decode::scale_from_raw(m.s, static_cast<int>(a.scale_dtype));
    z = a.zeros == nullptr ? (1u << (BITS - 1)) : decode::field(m.zlo, m.zhi, m.zoff, BITS);
  }
  *s_slot = s;
  *z_slot = decode::zero_operand<BITS, BF16>(z);
}

// ------------------------------------------------------------------ the kernel

template <int BITS, bool BF16, int MT>
__global__ void __launch_bounds__(tv2::kThreads) gemm_tiled_v2_kernel(const Args a, int64_t m_base) {
#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ < 800)
  __trap();  // never launched: the host picks the legacy kernels below sm_80
#else
  constexpr int S = tv2::stages_for(MT);
  constexpr int kStage = tv2::stage_bytes(MT, BITS);
  constexpr int kPackedOff = tv2::packed_off(MT);
  constexpr int kScaleOff = tv2::scale_off(MT, BITS);
  constexpr int kZeroOff = tv2::zero_off(MT, BITS);
  extern __shared__ __align__(128) unsigned char smem[];

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, t = lane & 3;
  const int64_t n0 = int64_t(blockIdx.x) * tv2::kBN;
  const int64_t tile0 = n0 / kTileN;
  const int64_t m0 = m_base + int64_t(blockIdx.y) * (16 * MT);
  const int split = blockIdx.z;
  const int64_t steps = ceil_div_dev(a.k, tv2::kBK);
  const int64_t s_begin = int64_t(split) * a.per_split;
  const int64_t nsteps = min(s_begin + a.per_split, steps) - s_begin;
  const int64_t b_end = min((s_begin + nsteps) * tv2::kBlocksPerStep, a.n_blocks);
  const unsigned short* x = static_cast<const unsigned short*>(a.x);
  const bool xvec = (a.k % 8 == 0) && (reinterpret_cast<uintptr_t>(a.x) % 16 == 0);
  const tv2::MetaSlot ms = tv2::meta_slot(tid);
  const bool fast = xvec && a.aligned16;

  // Per-thread copy sources, fixed for the whole k-loop: x chunk c = tid + i * kThreads is row
  // x_chunk(c).row (the column is the same for every i), packed unit u = tid + i * kThreads.
  constexpr int kXIters = tv2::x_chunks(MT) / tv2::kThreads;
  static_assert(tv2::x_chunks(MT) % tv2::kThreads == 0, "x chunks per thread");
  const tv2::XChunk xc0 = tv2::x_chunk(tid);
  const int64_t x_src0 = tv2::x_src0(tid, m0, a.k), x_stride = tv2::x_src_stride(a.k);
  uint32_t x_rows_ok = 0;  // bit i: chunk row of iteration i is < M
#pragma unroll
  for (int i = 0; i < kXIters; ++i)
    x_rows_ok |= uint32_t(m0 + tv2::x_chunk(tid + i * tv2::kThreads).row < a.m) << i;
  constexpr int kPUnits = tv2::packed_units(BITS, 16);
  constexpr int kPIters = (kPUnits + tv2::kThreads - 1) / tv2::kThreads;
  tv2::PackedCopy pc[kPIters];
#pragma unroll
  for (int i = 0; i < kPIters; ++i)
    pc[i] = tv2::packed_copy(min(tid + i * tv2::kThreads, kPUnits - 1), 16, BITS, tile0, a.n_tiles, a.n_blocks);

  // Copies of local k-step li into its slot (nothing past the split: an empty group is still
  // committed by the caller, so the wait count stays uniform).
  auto issue = [&](int64_t li) {
    if (li >= nsteps) return;
    unsigned char* st = smem + tv2::slot_of(li, S) * kStage;
    const int64_t step = s_begin + li, k0 = step * tv2::kBK;
    uint32_t* pk = reinterpret_cast<uint32_t*>(st + kPackedOff);
    if (fast) {
      const bool col_ok = k0 + xc0.col < a.k;  // K % 8 == 0: a chunk is all in or all out
#pragma unroll
      for (int i = 0; i < kXIters; ++i) {
        const tv2::XChunk q = tv2::x_chunk(tid + i * tv2::kThreads);
        const bool ok = col_ok && ((x_rows_ok >> i) & 1u);
        cp_async<16>(st + 2 * tv2::x_swizzle(q.row, q.col), ok ? x + x_src0 + i * x_stride + k0 : x, ok);
      }
#pragma unroll
      for (int i = 0; i < kPIters; ++i) {
        if (kPUnits % tv2::kThreads != 0 && tid + i * tv2::kThreads >= kPUnits) break;
        const bool ok = pc[i].tile_ok && step * tv2::kBlocksPerStep + pc[i].bl < a.n_blocks;
        cp_async<16>(pk + pc[i].smem_word,
                     ok ? a.packed + pc[i].gmem_word0 + step * tv2::packed_step_words(BITS) : a.packed, ok);
      }
    } else {
      stage_x_slow<MT>(reinterpret_cast<unsigned short*>(st), x, a, m0, k0, tid);
      stage_packed_slow<BITS>(pk, a, tile0, step, tid);
    }
  };
  // Metadata of local k-step li for this thread's (row, block): called for li = 0, 1, 2, ... in
  // order, so the group cursor advances by one k-step (2 blocks) per call.
  const int64_t meta_row_g = n0 + ms.row;
  const tv2::MetaRow mrow = tv2::meta_row(meta_row_g, a.n_groups, BITS);
  const bool meta_row_ok = meta_row_g < a.n;
  const int64_t bpg = decode::blocks_per_group(a.group_size, a.n_blocks);
  tv2::GroupCursor mcur;
  mcur.start(s_begin * tv2::kBlocksPerStep + ms.bl, bpg);
  auto meta_of = [&](int64_t li) {
    const int64_t b = (s_begin + li) * tv2::kBlocksPerStep + ms.bl;
    const RawMeta m = load_meta<BITS>(a, tv2::meta_src(mrow, meta_row_ok, b, mcur.g, b_end, BITS));
    for (int i = 0; i < tv2::kBlocksPerStep; ++i) mcur.next();
    return m;
  };
  auto put_meta = [&](int64_t li, const RawMeta& m) {
    if (li >= nsteps) return;
    unsigned char* st = smem + tv2::slot_of(li, S) * kStage;
    const int i = ms.bl * tv2::kBN + ms.row;
    store_meta<BITS, BF16>(a, m, reinterpret_cast<float*>(st + kScaleOff) + i,
                           reinterpret_cast<uint32_t*>(st + kZeroOff) + i);
  };
  tv2::GroupCursor cur;  // the compute's block
  cur.start(s_begin * tv2::kBlocksPerStep, bpg);

  // Prologue: steps 0 .. S-2 in flight; metadata of 0 .. S-3 stored, of S-2 in registers.
#pragma unroll
  for (int li = 0; li < S - 1; ++li) {
    issue(li);
    cp_commit();
    if (li < S - 2) put_meta(li, meta_of(li));
  }
  RawMeta pending = meta_of(S - 2);

  // The thread's accumulators: M fragment mf, N fragment f, element e (tv2::c_pos places them).
  float acc[MT][2][4], part[MT][2][4];
  auto each_acc = [](auto&& visit) {
#pragma unroll
    for (int mf = 0; mf < MT; ++mf)
#pragma unroll
      for (int f = 0; f < 2; ++f)
#pragma unroll
        for (int e = 0; e < 4; ++e) visit(mf, f, e);
  };
  each_acc([&](int mf, int f, int e) { acc[mf][f][e] = part[mf][f][e] = 0.f; });

  for (int64_t li = 0; li < nsteps; ++li) {
    cp_wait<S - 2>();  // step li has landed (this thread's copies) ...
    __syncthreads();   // ... everyone's, and step li - 1's slot is free
    put_meta(li + S - 2, pending);
    issue(li + S - 1);
    cp_commit();
    pending = meta_of(li + S - 1);

    const unsigned char* st = smem + tv2::slot_of(li, S) * kStage;
    const unsigned short* xs = reinterpret_cast<const unsigned short*>(st);
    const uint32_t* pk = reinterpret_cast<const uint32_t*>(st + kPackedOff);
    const float* ss = reinterpret_cast<const float*>(st + kScaleOff);
    const uint32_t* zs = reinterpret_cast<const uint32_t*>(st + kZeroOff);
#pragma unroll
    for (int bl = 0; bl < tv2::kBlocksPerStep; ++bl) {
      const int64_t b = (s_begin + li) * tv2::kBlocksPerStep + bl;
      if (b >= b_end) break;  // uniform: the last step of K may hold one block
      const uint32_t* blk = pk + tv2::packed_word(warp, bl, 0, 0, BITS);
      uint32_t bf[2][4];
#pragma unroll
      for (int f = 0; f < 2; ++f) {
        const int r = tv2::b_row(lane, f);
        const uint32_t zop = zs[bl * tv2::kBN + warp * 16 + r];
#pragma unroll
        for (int j = 0; j < 4; ++j) bf[f][j] = decode::tiled_decode<BITS, BF16>(blk, r, j, t, zop);
      }
#pragma unroll
      for (int h = 0; h < 2; ++h) {
#pragma unroll
        for (int mf = 0; mf < MT; ++mf) {
          const tv2::XAddr xa = tv2::ldsm_a(lane, mf, bl * 2 + h);
          uint32_t af[4];
          ldsm_x4(af, xs + tv2::x_swizzle(xa.row, xa.col));
#pragma unroll
          for (int f = 0; f < 2; ++f) mma16816<BF16>(part[mf][f], af, bf[f][2 * h], bf[f][2 * h + 1]);
        }
      }
      const bool flush = tv2::flush_after(cur, b, b_end);
      cur.next();
      if (flush) {
        float s[2][2];
#pragma unroll
        for (int f = 0; f < 2; ++f)
#pragma unroll
          for (int e = 0; e < 2; ++e) s[f][e] = ss[bl * tv2::kBN + tv2::c_pos(lane, warp, 0, f, e).col];
        each_acc([&](int mf, int f, int e) {
          acc[mf][f][e] = fmaf(s[f][e & 1], part[mf][f][e], acc[mf][f][e]);
          part[mf][f][e] = 0.f;
        });
      }
    }
  }
  cp_wait<0>();  // no copy may outlive the CTA's shared memory

  each_acc([&](int mf, int f, int e) {
    const tv2::CPos p = tv2::c_pos(lane, warp, mf, f, e);
    const int64_t row = m0 + p.row, col = n0 + p.col;
    if (row < a.m && col < a.n) store_result(a, split, row, col, acc[mf][f][e]);
  });
#endif
}

// ------------------------------------------------------------------ host dispatch


template <int BITS, bool BF16, int MT>
void launch_v2(const Args& a, cudaStream_t s) {
  constexpr int bytes = tv2::smem_bytes(MT, BITS);
  auto kernel = gemm_tiled_v2_kernel<BITS, BF16, MT>;
  // The opt-in above 48 KB is per device; setting it is cheap but not free, so once per device.
  static std::atomic<bool> opted[64];
  int dev = 0;
  detail::check(cudaGetDevice(&dev), "gemm (cudaGetDevice)");
  if (dev < 0 || dev >= 64 || !opted[dev].load(std::memory_order_relaxed)) {
    detail::check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes),
                  "gemm_tiled_v2 (cudaFuncSetAttribute)");
    if (dev >= 0 && dev < 64) opted[dev].store(true, std::memory_order_relaxed);
  }
  const int64_t bm = 16 * MT;
  const int64_t m_tiles = ceil_div(a.m, bm);
  const int64_t kMaxGridY = 65535;
  for (int64_t mt0 = 0; mt0 < m_tiles; mt0 += kMaxGridY) {
    const int64_t mts = std::min(kMaxGridY, m_tiles - mt0);
    const dim3 grid(static_cast<unsigned>(ceil_div(a.n, tv2::kBN)), static_cast<unsigned>(mts),
                    static_cast<unsigned>(a.splits));
    detail::launch("gemm_tiled_v2_kernel", kernel, grid, dim3(tv2::kThreads), bytes, s, a, mt0 * bm);
  }
}

template <int BITS, bool BF16>
void launch_v2_mt(const Args& a, cudaStream_t s) {
  switch (tv2::mt_for(a.m)) {
    case 2: launch_v2<BITS, BF16, 2>(a, s); break;
    case 4: launch_v2<BITS, BF16, 4>(a, s); break;
    default: launch_v2<BITS, BF16, 8>(a, s); break;
  }
}

}  // namespace

void launch_tiled_v2(const Args& a, cudaStream_t s) {
  // fp32 activations (no 16-bit tensor-core input) and pre-Ampere GPUs: the legacy kernels,
  // which take the same plan units (64-column k-steps per split).
  if (a.x_dtype == DType::f32 || device_cc_major() < 8) {
    launch_tiled(a, s);
    return;
  }
  decode::dispatch_bits_bf16(a.bits, a.x_dtype == DType::bf16, kGemmWhat, [&](auto bits, auto bf16) {
    launch_v2_mt<decltype(bits)::value, decltype(bf16)::value>(a, s);
  });
}

}  // namespace gemm_detail
}  // namespace cuda
}  // namespace cat
