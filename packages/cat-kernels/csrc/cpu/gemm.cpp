// gemm driver: plans the K partition, converts x to float32, runs the work items on the pool
// and sums the split-K partials in a fixed order. The hot loop lives in kernels_impl.h.
//
// Determinism: the plan (splits, segments, row chunks of x) is a function of the shapes only.
// Every work item computes its partial sums the same way whichever thread runs it, and the
// partials of a tile are added in split order by whichever item finishes last, so results are
// bit-identical across calls and thread counts.
#include <atomic>
#include <cmath>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <vector>

#include "cat/ops.h"
#include "common.h"
#include "internal.h"
#include "threadpool.h"

namespace cat::cpu {
namespace {

constexpr int64_t kTargetItems = 32;   // enough work items to balance any realistic core count
constexpr int64_t kMinSplitBlocks = 4; // a split shorter than 128 columns costs more than it helps
constexpr int32_t kMaxSegBlocks = 16;  // scale/fold at least every 512 columns (keeps the
                                       // packed data of a segment in L1 while looping over x)
constexpr int64_t kMChunk = 64;        // rows of x per work item (multiple of every kMB)

struct Plan {
  int64_t splits = 1;
  std::vector<detail::Segment> segments;
  std::vector<int32_t> split_begin;
};

Plan make_plan(int64_t n, int64_t k, int64_t group_size) {
  Plan p;
  const int64_t tiles = ceil_div(n, kTileN), nb = ceil_div(k, kBlockK), ng = k / group_size;
  if (tiles < kTargetItems) {
    int64_t s = ceil_div(kTargetItems, tiles);
    int64_t cap = nb / kMinSplitBlocks;
    if (cap < 1) cap = 1;
    p.splits = s < cap ? s : cap;
  }
  auto group_end_block = [&](int64_t g) {
    return (g + 1) * group_size >= k ? nb : (g + 1) * group_size / kBlockK;
  };
  for (int64_t s = 0; s < p.splits; ++s) {
    int64_t b0, b1;
    if (ng >= p.splits) {  // split on group boundaries: segments never straddle a split
      const int64_t g0 = s * ng / p.splits, g1 = (s + 1) * ng / p.splits;
      b0 = g0 * group_size / kBlockK;
      b1 = group_end_block(g1 - 1);
    } else {
      b0 = s * nb / p.splits;
      b1 = (s + 1) * nb / p.splits;
    }
    p.split_begin.push_back(static_cast<int32_t>(p.segments.size()));
    for (int64_t b = b0; b < b1;) {
      const int64_t g = b * kBlockK / group_size;
      int64_t e = group_end_block(g);
      if (e > b1) e = b1;
      if (e > b + kMaxSegBlocks) e = b + kMaxSegBlocks;
      p.segments.push_back({static_cast<int32_t>(b), static_cast<int32_t>(e), static_cast<int32_t>(g)});
      b = e;
    }
  }
  p.split_begin.push_back(static_cast<int32_t>(p.segments.size()));
  return p;
}

void convert_row(const void* x, DType dt, int64_t offset, int64_t k, float* dst) {
  switch (dt) {
    case DType::f16: {
      const uint16_t* p = static_cast<const uint16_t*>(x) + offset;
      for (int64_t j = 0; j < k; ++j) dst[j] = detail::f16_to_f32(p[j]);
      break;
    }
    case DType::bf16: {
      const uint16_t* p = static_cast<const uint16_t*>(x) + offset;
      for (int64_t j = 0; j < k; ++j) dst[j] = detail::bf16_to_f32(p[j]);
      break;
    }
    default: {
      const float* p = static_cast<const float*>(x) + offset;
      for (int64_t j = 0; j < k; ++j) dst[j] = p[j];
    }
  }
}

// Plans depend on (n, k, group size) only; a decode step calls a handful of shapes over and over,
// so each calling thread keeps its last few plans.
const Plan& cached_plan(int64_t n, int64_t k, int64_t group_size) {
  struct Entry {
    int64_t n = -1, k = -1, g = -1;
    Plan plan;
  };
  constexpr int kEntries = 16;
  thread_local Entry cache[kEntries];
  thread_local int next_slot = 0;
  for (Entry& e : cache)
    if (e.n == n && e.k == k && e.g == group_size) return e.plan;
  Entry& e = cache[next_slot];
  next_slot = (next_slot + 1) % kEntries;
  e.n = -1;  // stays invalid if make_plan throws
  e.plan = make_plan(n, k, group_size);
  e.n = n, e.k = k, e.g = group_size;
  return e.plan;
}

// Per calling thread buffers, grown on demand and reused by later calls (no allocation, no
// zero-filling per call). Work items running on pool threads write into the caller's buffers.
struct Workspace {
  std::vector<float> xf, xs, xd, parts;
  std::vector<int32_t> xq;
  std::vector<uint16_t> xb;
  std::vector<int64_t> block_start;
  std::unique_ptr<std::atomic<int>[]> pending;
  int64_t pending_size = 0;
};

template <class T>
T* grow(std::vector<T>& v, int64_t n) {
  if (static_cast<int64_t>(v.size()) < n) v.resize(static_cast<size_t>(n));
  return v.data();
}

// Buffers above this many floats (a long prefill) are released when the call ends instead of
// being kept for the next call.
constexpr size_t kKeepFloats = size_t(1) << 22;  // 16 MB

struct TrimOnExit {
  Workspace& ws;
  ~TrimOnExit() {
    for (std::vector<float>* v : {&ws.xf, &ws.xs, &ws.xd, &ws.parts})
      if (v->size() > kKeepFloats) std::vector<float>().swap(*v);
    if (ws.xq.size() > kKeepFloats) std::vector<int32_t>().swap(ws.xq);
    if (ws.xb.size() > 2 * kKeepFloats) std::vector<uint16_t>().swap(ws.xb);
  }
};

// Below this many weights x rows of x a call runs on the calling thread only: waking the pool
// costs more than the second core gains (SmolLM2-135M decode: 576x576 = 0.33M).
constexpr int64_t kParallelMinWork = int64_t(1) << 20;
// Elements of x from which its conversion runs on the pool too (one item per row block).
constexpr int64_t kParallelMinConvert = int64_t(1) << 18;
// The same for the int8 rounding of x, which costs more per element than the float copy (at
// M=128, K=1536 it took ~0.13 ms on one thread beside a 0.6 ms product).
constexpr int64_t kParallelMinConvertQ8 = int64_t(1) << 15;

// Every item goes to the pool, which gives each thread a contiguous range of them
// (threadpool.cpp): a thread streams through adjacent tiles (interleaved tiles made the 2-thread
// gemms of a decode step 20% slower), and stealing at the end balances to one item.
template <class F>
void run_items(bool parallel, int64_t n, F&& f) {
  if (!parallel) {
    for (int64_t i = 0; i < n; ++i) f(i);
    return;
  }
  parallel_for(n, f);
}

// Item i of (tiles x row chunks) as its tile and first row. Tile-major keeps a thread on one
// tile's weights across the row chunks. The AMX path goes chunk-major: its bfloat16 pieces of x
// take 6 bytes a value against a weight's half byte, so a chunk of x stays in cache while the
// tiles stream past (tile-major re-read the whole x, megabytes, for every tile).
struct TileRows {
  int64_t t, m0;
};
inline TileRows item_at(int64_t i, int64_t tiles, int64_t mchunks, int64_t chunk, bool x_major) {
  return x_major ? TileRows{i % tiles, (i / tiles) * chunk} : TileRows{i / mchunks, (i % mchunks) * chunk};
}

// Rows of x per work item: kMChunk, or on the AMX path as many (64, 32 or 16) as keep a chunk's
// bfloat16 pieces within 1 MB, so that they stay in L2 while the tiles stream past (a 2048 x 8192
// product at M = 128 ran 0.7x the float32 matmul with 3 MB chunks).
int64_t rows_per_item(const detail::GemmPlan& gp) {
  int64_t r = kMChunk;
  if (gp.xb)
    while (r > kTileN && r * gp.kp * gp.xb_pieces * 2 > (int64_t{1} << 20)) r /= 2;
  return r;
}

// Sum of x[j0 .. j1) in a fixed order (8 interleaved partial sums, then a fixed tree), so the
// result never depends on threads; 8 chains instead of one dependent chain of adds.
float segment_sum(const float* p, int64_t j0, int64_t j1) {
  float a[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t j = j0;
  for (; j + 8 <= j1; j += 8)
    for (int u = 0; u < 8; ++u) a[u] += p[j + u];
  for (int u = 0; j < j1; ++j, ++u) a[u] += p[j];
  return ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]));
}

// Min work (weights x rows) from which a call uses the pool: the caller's, or the default.
inline int64_t min_work(int64_t parallel_min_work) {
  return parallel_min_work < 0 ? kParallelMinWork : parallel_min_work;
}

// Rows [16t, 16t + 16) of out ([m, n] of dtype dt) for rows m0 .. m0 + mc of x, from the S split
// partials of one (tile, m chunk) ([S][mc][16], split s at parts + s * stride), added in split
// order.
void store_tile(void* out, DType dt, int64_t n, int64_t t, int64_t m0, int64_t mc, const float* parts,
                int64_t S, int64_t stride) {
  const int rows = static_cast<int>(n - t * kTileN < kTileN ? n - t * kTileN : kTileN);
  if (dt == DType::f32 && S == 1) {  // a copy per row: the per-value dtype switch below cost
                                     // ~4% of a 128-token prefill (perf, session 22)
    float* o = static_cast<float*>(out) + m0 * n + t * kTileN;
    for (int64_t mi = 0; mi < mc; ++mi) std::memcpy(o + mi * n, parts + mi * kTileN, sizeof(float) * rows);
    return;
  }
  for (int64_t mi = 0; mi < mc; ++mi)
    for (int r = 0; r < rows; ++r) {
      float acc = parts[mi * kTileN + r];
      for (int64_t s = 1; s < S; ++s) acc += parts[s * stride + mi * kTileN + r];
      detail::store_from_f32(out, dt, (m0 + mi) * n + t * kTileN + r, acc);
    }
}

// The int8 rounding of a row for the float kernels (paths and widths without an integer kernel):
// each value becomes q * d, the x an integer kernel multiplies.
void round_int8(float* row, int64_t kp) {
  int8_t q[kBlockK];
  int32_t sum;
  for (int64_t b = 0; b < kp; b += kBlockK) {
    const float d = detail::quantize_block_q8(row + b, q, &sum);
    for (int j = 0; j < kBlockK; ++j) row[b + j] = static_cast<float>(q[j]) * d;
  }
}

// f(m0, mr) for every row block of m rows (detail::row_block with the kernel's largest block mb),
// on the pool when on_pool (one item per block), else in order on the calling thread.
template <class F>
void each_row_block(int64_t m, int64_t mb, bool on_pool, Workspace& ws, F&& f) {
  if (!on_pool) {
    for (int64_t m0 = 0, mr = 0; m0 < m; m0 += mr) {
      mr = detail::row_block(mb, m - m0);
      f(m0, mr);
    }
    return;
  }
  std::vector<int64_t>& starts = ws.block_start;
  starts.clear();
  for (int64_t m0 = 0; m0 < m; m0 += detail::row_block(mb, m - m0)) starts.push_back(m0);
  starts.push_back(m);
  parallel_for(static_cast<int64_t>(starts.size()) - 1, [&](int64_t bi) { f(starts[bi], starts[bi + 1] - starts[bi]); });
}

// x as zero-padded float32 (padded columns then contribute nothing), each row block stored
// interleaved (see detail::row_block), plus the sum of x over each segment of `plan` for the
// zero-point term of y = sum_g s * (sum x q - z * sum x). Serial unless x is large (prefill):
// next to the gemm it is cheap.
void convert_x(const void* x, DType x_dtype, int64_t m, int64_t k, const Plan& plan, bool parallel, bool int8,
               Workspace& ws, float** xf_out, float** xs_out) {
  const detail::Kernels& kern = detail::active_kernels();
  const int64_t kp = ceil_div(k, kBlockK) * kBlockK;
  const int64_t nseg = static_cast<int64_t>(plan.segments.size());
  float* xf = grow(ws.xf, m * kp);
  float* xs = grow(ws.xs, m * nseg);
  auto convert_block = [&](int64_t m0, int64_t mr) {
    thread_local std::vector<float> row_buf;
    float* dst = xf + m0 * kp;
    float* row = mr == 1 ? dst : grow(row_buf, kp);  // a block of one row is the row itself
    for (int64_t i = 0; i < mr; ++i) {
      const int64_t r = m0 + i;
      convert_row(x, x_dtype, r * k, k, row);
      for (int64_t j = k; j < kp; ++j) row[j] = 0.0f;
      if (int8) round_int8(row, kp);
      if (mr > 1)
        for (int64_t j = 0; j < kp; ++j) dst[j * mr + i] = row[j];
      for (int64_t si = 0; si < nseg; ++si) {
        const detail::Segment& sg = plan.segments[si];
        xs[r * nseg + si] = segment_sum(row, sg.b0 * kBlockK, sg.b1 * kBlockK);
      }
    }
  };
  each_row_block(m, kern.mb, parallel && m * kp >= kParallelMinConvert, ws, convert_block);
  *xf_out = xf;
  *xs_out = xs;
}

// x rounded to int8 (quantize_block_q8) for an integer kernel, in the column order it reads
// (Q8Kernel::quantize_row): each row block of mb rows is stored interleaved (GemmPlan::xq / xd),
// plus per segment the sum of d * (sum of the block's q), which the zero points multiply.
void convert_x_q8(const void* x, DType x_dtype, int64_t m, int64_t k, const Plan& plan, bool parallel,
                  const detail::Q8Kernel& q8, Workspace& ws, detail::GemmPlan* gp) {
  const auto quantize_row = q8.quantize_row;
  const int bits = gp->w.bits;
  const int64_t nb = ceil_div(k, kBlockK), kp = nb * kBlockK, kd = kp / 4;
  const int64_t nseg = static_cast<int64_t>(plan.segments.size());
  int32_t* xq = grow(ws.xq, m * kd);
  float* xd = grow(ws.xd, m * nb);
  float* xs = grow(ws.xs, m * nseg);
  auto convert_block = [&](int64_t m0, int64_t mr) {
    thread_local std::vector<float> row_buf, bsum_buf, d_buf;
    thread_local std::vector<int32_t> q_buf;
    float* row = grow(row_buf, kp);
    float* bsum = grow(bsum_buf, nb);
    float* dbuf = grow(d_buf, nb);
    int32_t* qd = grow(q_buf, kd);
    int8_t* q = reinterpret_cast<int8_t*>(qd);
    for (int64_t i = 0; i < mr; ++i) {
      const int64_t r = m0 + i;
      convert_row(x, x_dtype, r * k, k, row);
      for (int64_t j = k; j < kp; ++j) row[j] = 0.0f;
      quantize_row(row, nb, bits, q, dbuf, bsum);
      for (int64_t b = 0; b < nb; ++b) xd[m0 * nb + b * mr + i] = dbuf[b];
      for (int64_t j = 0; j < kd; ++j) xq[m0 * kd + j * mr + i] = qd[j];
      for (int64_t si = 0; si < nseg; ++si) {
        const detail::Segment& sg = plan.segments[si];
        float a = 0.0f;
        for (int32_t b = sg.b0; b < sg.b1; ++b) a += bsum[b];
        xs[r * nseg + si] = a;
      }
    }
  };
  each_row_block(m, q8.mb, parallel && m * kp >= kParallelMinConvertQ8, ws, convert_block);
  gp->xq = xq;
  gp->xd = xd;
  gp->xs = xs;
}

#if defined(CAT_KERNELS_X86)
// x as bfloat16 pieces for amx_gemm_item (kernels_amx.cpp): as many as x's dtype needs to be
// exact (bfloat16 1, float16 2, float32 3), rows padded to a multiple of 16 with zeros.
void convert_x_amx(const void* x, DType x_dtype, int64_t m, int64_t k, bool parallel, Workspace& ws,
                   detail::GemmPlan* gp) {
  const int64_t kp = ceil_div(k, kBlockK) * kBlockK, rows = ceil_div(m, kTileN) * kTileN;
  const int pieces = x_dtype == DType::bf16 ? 1 : x_dtype == DType::f16 ? 2 : 3;
  uint16_t* xb = grow(ws.xb, pieces * rows * kp);
  if (rows > m)  // padding rows lie among the last tile's rows: clear that tile
    for (int i = 0; i < pieces; ++i) std::memset(xb + (i * rows + rows - kTileN) * kp, 0, sizeof(uint16_t) * kTileN * kp);
  auto convert_block = [&](int64_t m0, int64_t mr) {
    thread_local std::vector<float> row_buf;
    float* row = grow(row_buf, kp);
    for (int64_t r = m0; r < m0 + mr; ++r) {
      convert_row(x, x_dtype, r * k, k, row);
      for (int64_t j = k; j < kp; ++j) row[j] = 0.0f;
      uint16_t* h = xb + (r & ~int64_t{15}) * kp + (r & 15) * kBlockK;  // see GemmPlan::xb
      detail::amx_split_row(row, kp, h, pieces > 1 ? h + rows * kp : nullptr, pieces > 2 ? h + 2 * rows * kp : nullptr);
    }
  };
  each_row_block(m, kTileN, parallel && m * kp >= kParallelMinConvert, ws, convert_block);
  gp->xb = xb;
  gp->xb_rows = rows;
  gp->xb_pieces = pieces;
}
#endif

// The work item function of a call, and x prepared for it: float32 for the float kernels, int8
// for QWeight::int8_x.
using ItemFn = void (*)(const detail::GemmPlan&, int64_t, int64_t, int64_t, int64_t, float*);

detail::GemmPlan gemm_plan(const QWeight& w, int64_t m, const Plan& plan) {
  detail::GemmPlan gp;
  gp.w = w;
  gp.m = m;
  gp.nb = ceil_div(w.k, kBlockK);
  gp.kp = gp.nb * kBlockK;
  gp.ng = w.k / w.group_size;
  gp.zw = zero_row_words(gp.ng, w.bits);
  gp.splits = plan.splits;
  gp.n_segments = static_cast<int64_t>(plan.segments.size());
  gp.segments = plan.segments.data();
  gp.split_begin = plan.split_begin.data();
  return gp;
}

// x converted for the kernels into gp's x fields; returns the work item function that reads them.
// mixed_bits: the x serves weights of several widths (gemm_same_x), whose int8 kernels may read
// x in different orders: the float kernels on the rounded x then serve them all.
ItemFn prepare_x(const void* x, DType x_dtype, int64_t m, int64_t k, bool int8_x, bool mixed_bits, const Plan& plan,
                 bool parallel, Workspace& ws, detail::GemmPlan* gp) {
  const detail::Q8Kernel* q8 = int8_x && !mixed_bits ? detail::active_q8_kernel(gp->w.bits) : nullptr;
#if defined(CAT_KERNELS_X86)
  if (!int8_x && m >= detail::kAmxMinRows && detail::active_isa() == detail::Isa::amx) {
    convert_x_amx(x, x_dtype, m, k, parallel, ws, gp);
    return detail::amx_gemm_item;
  }
#endif
  if (q8) {
    convert_x_q8(x, x_dtype, m, k, plan, parallel, *q8, ws, gp);
    return q8->gemm_item;
  }
  float *xf, *xs;
  convert_x(x, x_dtype, m, k, plan, parallel, int8_x, ws, &xf, &xs);
  gp->xf = xf;
  gp->xs = xs;
  return detail::active_kernels().gemm_item;
}

// Plans for `count` weights that read one float32 x (same K and group size), in gp[0..count), with
// x converted once for all of them; returns the work item function. The plan is that of a weight
// with enough tiles not to split K: its segments then depend on K and the group size only, so one
// converted x and one set of segment sums serve every weight.
ItemFn shared_x_plans(const float* x, int64_t m, const QWeight* const* w, int count, bool parallel, Workspace& ws,
                      detail::GemmPlan* gp) {
  const Plan& plan = cached_plan(kTargetItems * kTileN, w[0]->k, w[0]->group_size);
  bool mixed = false;
  for (int i = 1; i < count; ++i) mixed = mixed || w[i]->bits != w[0]->bits;
  gp[0] = gemm_plan(*w[0], m, plan);
  const ItemFn run = prepare_x(x, DType::f32, m, w[0]->k, w[0]->int8_x, mixed, plan, parallel, ws, &gp[0]);
  for (int i = 1; i < count; ++i) {
    gp[i] = gemm_plan(*w[i], m, plan);
    gp[i].xf = gp[0].xf, gp[i].xs = gp[0].xs, gp[i].xq = gp[0].xq, gp[i].xd = gp[0].xd;
    gp[i].xb = gp[0].xb, gp[i].xb_rows = gp[0].xb_rows, gp[i].xb_pieces = gp[0].xb_pieces;
  }
  return run;
}

}  // namespace

void gemm(const void* x, DType x_dtype, int64_t m, const QWeight& w, void* out, int64_t parallel_min_work) {
  if (m <= 0 || w.n <= 0) return;
  const int64_t n = w.n, k = w.k;
  const int64_t tiles = ceil_div(n, kTileN), nb = ceil_div(k, kBlockK), kp = nb * kBlockK;
  const Plan& plan = cached_plan(n, k, w.group_size);
  const bool parallel = n * kp * m >= min_work(parallel_min_work);
  thread_local Workspace ws;
  const TrimOnExit trim{ws};
  detail::GemmPlan gp = gemm_plan(w, m, plan);
  const ItemFn item = prepare_x(x, x_dtype, m, k, w.int8_x, false, plan, parallel, ws, &gp);
  const bool x_major = gp.xb != nullptr;
  const int64_t chunk = rows_per_item(gp);

  const int64_t S = plan.splits, mchunks = ceil_div(m, chunk);
  const int64_t mcmax = m < chunk ? m : chunk;
  const int64_t stride = mcmax * kTileN;  // floats per (tile, m chunk, split) partial
  auto finish = [&](int64_t t, int64_t m0, int64_t mc, const float* parts) {
    store_tile(out, x_dtype, n, t, m0, mc, parts, S, stride);
  };

  // Partials laid out [tile][m chunk][split][mc][16]; the item that completes a
  // (tile, m chunk) adds its S partials in split order.
  if (S == 1) {
    run_items(parallel, tiles * mchunks, [&](int64_t i) {
      const auto [t, m0] = item_at(i, tiles, mchunks, chunk, x_major);
      const int64_t mc = m - m0 < chunk ? m - m0 : chunk;
      alignas(64) thread_local float scratch[kMChunk * kTileN];  // stays in L1 of the runner
      item(gp, t, 0, m0, mc, scratch);
      finish(t, m0, mc, scratch);
    });
    return;
  }
  float* parts = grow(ws.parts, tiles * mchunks * S * stride);
  if (ws.pending_size < tiles * mchunks) {
    ws.pending.reset(new std::atomic<int>[tiles * mchunks]);
    ws.pending_size = tiles * mchunks;
  }
  std::atomic<int>* pending = ws.pending.get();
  for (int64_t i = 0; i < tiles * mchunks; ++i) pending[i].store(static_cast<int>(S), std::memory_order_relaxed);
  run_items(parallel, tiles * mchunks * S, [&](int64_t i) {
    const int64_t tm = i / S, s = i % S;
    const auto [t, m0] = item_at(tm, tiles, mchunks, chunk, x_major);
    const int64_t mc = m - m0 < chunk ? m - m0 : chunk;
    float* base = parts + tm * S * stride;
    item(gp, t, s, m0, mc, base + s * stride);
    if (pending[tm].fetch_sub(1, std::memory_order_acq_rel) == 1) finish(t, m0, mc, base);
  });
}

void gemm_same_x(const float* x, int64_t m, const QWeight* const* w, int count, float* const* out,
                 int64_t parallel_min_work) {
  if (m <= 0 || count <= 0) return;
  if (count > 8) throw std::invalid_argument("gemm_same_x: at most 8 weights");
  const int64_t kp = ceil_div(w[0]->k, kBlockK) * kBlockK;
  int64_t first_tile[9] = {0};
  int64_t weights_rows = 0;
  for (int i = 0; i < count; ++i) {
    first_tile[i + 1] = first_tile[i] + ceil_div(w[i]->n, kTileN);
    weights_rows += w[i]->n;
  }
  const bool parallel = weights_rows * kp * m >= min_work(parallel_min_work);
  thread_local Workspace ws;
  const TrimOnExit trim{ws};
  detail::GemmPlan gp[8];
  const ItemFn run = shared_x_plans(x, m, w, count, parallel, ws, gp);
  const int64_t chunk = rows_per_item(gp[0]), mchunks = ceil_div(m, chunk), items = first_tile[count] * mchunks;
  run_items(parallel, items, [&](int64_t item) {
    const auto [tile, m0] = item_at(item, first_tile[count], mchunks, chunk, gp[0].xb != nullptr);
    int wi = 0;
    while (tile >= first_tile[wi + 1]) ++wi;
    const int64_t t = tile - first_tile[wi];
    const int64_t mc = m - m0 < chunk ? m - m0 : chunk;
    alignas(64) thread_local float scratch[kMChunk * kTileN];
    run(gp[wi], t, 0, m0, mc, scratch);
    store_tile(out[wi], DType::f32, w[wi]->n, t, m0, mc, scratch, 1, 0);
  });
}

void gemm_pair_combine(const float* x, int64_t m, const QWeight& a, const QWeight& b, float* out,
                       void (*combine)(float*, const float*, int64_t), int64_t parallel_min_work) {
  if (!pair_combinable(a, b))
    throw std::invalid_argument("gemm_pair_combine: the two weights must have one shape, group size, width and x mode");
  if (m <= 0 || a.n <= 0) return;
  const int64_t n = a.n, kp = ceil_div(a.k, kBlockK) * kBlockK;
  const int64_t tiles = ceil_div(n, kTileN);
  const bool parallel = 2 * n * kp * m >= min_work(parallel_min_work);
  thread_local Workspace ws;
  const TrimOnExit trim{ws};
  // gemm_same_x's plans, so each value equals the one it computes.
  const QWeight* const w[2] = {&a, &b};
  detail::GemmPlan gp[2];
  const ItemFn run = shared_x_plans(x, m, w, 2, parallel, ws, gp);
  const detail::GemmPlan &ga = gp[0], &gb = gp[1];
  const int64_t chunk = rows_per_item(ga), mchunks = ceil_div(m, chunk);
  run_items(parallel, tiles * mchunks, [&](int64_t item) {
    const auto [t, m0] = item_at(item, tiles, mchunks, chunk, ga.xb != nullptr);
    const int64_t mc = m - m0 < chunk ? m - m0 : chunk;
    const int rows = static_cast<int>(n - t * kTileN < kTileN ? n - t * kTileN : kTileN);
    alignas(64) thread_local float sa[kMChunk * kTileN], sb[kMChunk * kTileN];
    run(ga, t, 0, m0, mc, sa);
    run(gb, t, 0, m0, mc, sb);
    combine(sa, sb, mc * kTileN);  // lanes past n (last tile) are combined, never stored
    for (int64_t mi = 0; mi < mc; ++mi)
      std::memcpy(out + (m0 + mi) * n + t * kTileN, sa + mi * kTileN, sizeof(float) * rows);
  });
}

}  // namespace cat::cpu
