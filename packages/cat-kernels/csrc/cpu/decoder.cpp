// One decoder step of a Llama-family transformer (Llama, Mistral, Qwen2, Qwen3) for one sequence,
// all of it here: RMSNorm, the seven packed linears of each layer (q/k/v and gate/up as one pool
// job each), rotary embedding, attention over the KV cache, SiLU-gated MLP, residuals, final
// norm. The format of the cache and the API: docs/decoder.md.
//
// Why it exists: a decode step of a small model costs ~25 ms in transformers' Python and aten ops
// while its packed weights need ~3 ms of DRAM time. Here a step is one call from Python, the
// gemms come back to back (so the pool's workers are still spinning when the next one starts and
// every gemm can use all cores), and nothing is allocated after the first step.
//
// Numerics follow transformers' eager float32 code op for op (RMSNorm computes
// w * (x * rsqrt(mean(x^2) + eps)); rotary cos/sin of position * inv_freq times the attention
// scaling; softmax in float32; silu(g) * u); the order of additions inside a reduction differs
// and exp is a polynomial within 2 ulp, so results agree to float32 rounding, not bit for bit.
#include <cmath>
#include <cstring>
#include <vector>

#include "cat/ops.h"
#include "threadpool.h"

#if defined(CAT_KERNELS_X86) && defined(__GNUC__) && !defined(__clang__)
#define CAT_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define CAT_CLONES
#endif

namespace cat::cpu {
namespace {

// Sum of p[0..n) in a fixed order (8 chains, then a fixed tree): the same result whichever thread
// computes it.
inline float sum8(const float* p, int64_t n) {
  float a[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t j = 0;
  for (; j + 8 <= n; j += 8)
    for (int u = 0; u < 8; ++u) a[u] += p[j + u];
  for (int u = 0; j < n; ++j, ++u) a[u] += p[j];
  return ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]));
}

inline float dot8(const float* a, const float* b, int64_t n) {
  float s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t j = 0;
  for (; j + 8 <= n; j += 8)
    for (int u = 0; u < 8; ++u) s[u] += a[j + u] * b[j + u];
  for (int u = 0; j < n; ++j, ++u) s[u] += a[j] * b[j];
  return ((s[0] + s[4]) + (s[2] + s[6])) + ((s[1] + s[5]) + (s[3] + s[7]));
}

// out = w * (x * rsqrt(mean(x^2) + eps)), the transformers LlamaRMSNorm in float32.
void rms_norm(const float* x, const float* w, int64_t n, float eps, float* out) {
  thread_local std::vector<float> sq;
  if (static_cast<int64_t>(sq.size()) < n) sq.resize(static_cast<size_t>(n));
  for (int64_t j = 0; j < n; ++j) sq[j] = x[j] * x[j];
  const float var = sum8(sq.data(), n) / static_cast<float>(n);
  const float r = 1.0f / std::sqrt(var + eps);
  for (int64_t j = 0; j < n; ++j) out[j] = w[j] * (x[j] * r);
}

// Rotates each head of x ([heads, head_dim]) by position `pos`: the halves (x1, x2) become
// (x1 c - x2 s, x2 c + x1 s) with c, s of pos * inv_freq, times the attention scaling.
void rope(float* x, int64_t heads, int64_t head_dim, const float* cos_, const float* sin_) {
  const int64_t half = head_dim / 2;
  for (int64_t h = 0; h < heads; ++h) {
    float* p = x + h * head_dim;
    for (int64_t i = 0; i < half; ++i) {
      const float x1 = p[i], x2 = p[i + half];
      p[i] = x1 * cos_[i] - x2 * sin_[i];
      p[i + half] = x2 * cos_[i] + x1 * sin_[i];
    }
  }
}

// exp(x) for float32 in straight-line code the compiler vectorizes (std::exp is a library call
// per value: at a few hundred cached positions the softmax's exps took half the attention time).
// Range reduction x = n ln2 + r with ln2 in two parts, a degree-6 polynomial for e^r on
// |r| <= ln2/2, and 2^n put in the exponent bits; within 2 ulp of the exact value over the
// clamped range, 0 below it (the clamp keeps 2^n a normal float).
inline float fast_exp(float x) {
  x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
  const float n = __builtin_roundevenf(x * 1.44269504088896341f);
  float r = x - n * 0.693145751953125f;
  r = r - n * 1.42860682030941723212e-6f;
  float p = 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  int32_t bits;
  const int32_t e = (static_cast<int32_t>(n) + 127) << 23;
  std::memcpy(&bits, &p, 4);
  bits += e - (127 << 23);
  float out;
  std::memcpy(&out, &bits, 4);
  return out;
}

// softmax(q K^T * scale) V over the first n cached positions of one KV head, for the `group`
// query heads that share it (q, o: [group, hd]; s: [group, n] scratch). Each key and value row
// is read once for all of them: at a few hundred positions the cache is as many bytes a step as
// the weights. Cloned per ISA: the baseline build of this file would run 4 lanes wide.
CAT_CLONES void attend_kv_head(const float* q, int64_t group, const float* K, const float* V, int64_t n,
                               int64_t hd, float scale, float* s, float* o) {
  for (int64_t t = 0; t < n; ++t)
    for (int64_t h = 0; h < group; ++h) s[h * n + t] = dot8(q + h * hd, K + t * hd, hd) * scale;
  for (int64_t h = 0; h < group; ++h) {
    float* sh = s + h * n;
    float mx = -INFINITY;
    for (int64_t t = 0; t < n; ++t) mx = sh[t] > mx ? sh[t] : mx;
    for (int64_t t = 0; t < n; ++t) sh[t] = fast_exp(sh[t] - mx);
    const float inv = 1.0f / sum8(sh, n);
    for (int64_t t = 0; t < n; ++t) sh[t] *= inv;
  }
  for (int64_t i = 0; i < group * hd; ++i) o[i] = 0.0f;
  for (int64_t t = 0; t < n; ++t) {
    const float* vp = V + t * hd;
    for (int64_t h = 0; h < group; ++h) {
      const float w = s[h * n + t];
      float* oh = o + h * hd;
      for (int64_t d = 0; d < hd; ++d) oh[d] += w * vp[d];
    }
  }
}

// silu(g) * u in place of g, for n values. Runs of 16 with a constant trip count: the gate/up
// job calls it on one tile's 16 values at a time, where a loop of unknown length ran its scalar
// tail (perf: 4.9% of a step's samples). Every value goes through the same operations either way.
CAT_CLONES void silu_mul(float* g, const float* u, int64_t n) {
  int64_t j = 0;
  for (; j + 16 <= n; j += 16)
    for (int l = 0; l < 16; ++l) g[j + l] = g[j + l] / (1.0f + fast_exp(-g[j + l])) * u[j + l];
  for (; j < n; ++j) g[j] = g[j] / (1.0f + fast_exp(-g[j])) * u[j];
}

void add_bias(float* y, const float* bias, int64_t m, int64_t n) {
  if (!bias) return;
  for (int64_t r = 0; r < m; ++r)
    for (int64_t j = 0; j < n; ++j) y[r * n + j] += bias[j];
}

// Below this many weights x rows a gemm of the step runs on the calling thread. Lower than
// gemm()'s own threshold: inside a step the workers are still spinning from the previous gemm, so
// waking them costs little.
constexpr int64_t kStepParallelMinWork = int64_t(1) << 16;
// Attention work (cached positions x head_dim x heads x rows) from which heads run on the pool.
constexpr int64_t kAttnParallelMinWork = int64_t(1) << 12;

void linear(const DecoderLinear& l, const float* x, int64_t m, float* y) {
  gemm(x, DType::f32, m, l.w, y, kStepParallelMinWork);
  add_bias(y, l.bias, m, l.w.n);
}

// Linears that read the same x (q/k/v, gate/up) as one job over the pool: a third of the
// dispatches, and the short k/v weights no longer split K into partial sums.
template <int N>
void linears(const DecoderLinear* const (&ls)[N], const float* x, int64_t m, float* const (&ys)[N]) {
  bool shared = true;
  for (int i = 1; i < N; ++i)
    shared = shared && ls[i]->w.k == ls[0]->w.k && ls[i]->w.group_size == ls[0]->w.group_size;
  if (!shared) {
    for (int i = 0; i < N; ++i) linear(*ls[i], x, m, ys[i]);
    return;
  }
  const QWeight* w[N];
  for (int i = 0; i < N; ++i) w[i] = &ls[i]->w;
  gemm_same_x(x, m, w, N, ys, kStepParallelMinWork);
  for (int i = 0; i < N; ++i) add_bias(ys[i], ls[i]->bias, m, ls[i]->w.n);
}

struct Buffers {
  std::vector<float> h, a, q, k, v, att, g, u, cs;
};

template <class T>
T* grow(std::vector<T>& v, int64_t n) {
  if (static_cast<int64_t>(v.size()) < n) v.resize(static_cast<size_t>(n));
  return v.data();
}

}  // namespace

void decoder_step(const DecoderConfig& c, const DecoderLayer* layers, int64_t n_layers, const float* x,
                  int64_t batch, int64_t m_seq, int64_t pos, float* kv, int64_t capacity, float* out,
                  const int64_t* starts) {
  if (m_seq <= 0 || batch <= 0) return;
  // Rows r = b * m_seq + i: sequence b's token at position pos + i. The products see all rows at
  // once; attention and the cache are per sequence.
  const int64_t m = batch * m_seq;
  const int64_t H = c.hidden, hd = c.head_dim, nh = c.heads, nkv = c.kv_heads, I = c.intermediate;
  const int64_t qn = nh * hd, kvn = nkv * hd, half = hd / 2, group = nh / nkv;
  thread_local Buffers b;
  float* h = grow(b.h, m * H);
  float* a = grow(b.a, m * H);
  float* q = grow(b.q, m * qn);
  float* k = grow(b.k, m * kvn);
  float* v = grow(b.v, m * kvn);
  float* att = grow(b.att, m * qn);
  float* g = grow(b.g, m * I);
  float* u = grow(b.u, m * I);
  float* cs = grow(b.cs, m * hd);  // per row: cos[half], sin[half]
  std::memcpy(h, x, sizeof(float) * m * H);

  for (int64_t r = 0; r < m; ++r) {
    const int64_t sb = r / m_seq, i = r % m_seq;
    const float p = static_cast<float>(pos + i - (starts ? starts[sb] : 0));
    for (int64_t i = 0; i < half; ++i) {
      const float f = p * c.inv_freq[i];
      cs[r * hd + i] = std::cos(f) * c.rope_scale;
      cs[r * hd + half + i] = std::sin(f) * c.rope_scale;
    }
  }
  const int64_t seq_stride = nkv * capacity * hd;  // kv: [layers, 2, batch, kv_heads, capacity, hd]
  const int64_t layer_stride = 2 * batch * seq_stride;
  const int64_t keys_total = pos + m_seq;
  // Attention items: one per (row, KV head), whose query heads are consecutive (transformers'
  // repeat_kv order) and read each key and value row once for all of them. With few such items
  // (one row, 3 KV heads on 2 threads) one thread would run two of three: then one item per query
  // head instead, each reading its KV head's rows (from L1/L2). A head's values are the same
  // either way.
  const int64_t heads_per_item = m * nkv < 4 * num_threads() ? 1 : group;
  const int64_t items_per_row = nh / heads_per_item;

  for (int64_t li = 0; li < n_layers; ++li) {
    const DecoderLayer& L = layers[li];
    float* kc = kv + li * layer_stride;
    float* vc = kc + batch * seq_stride;

    // attention
    for (int64_t r = 0; r < m; ++r) rms_norm(h + r * H, L.in_norm, H, c.eps, a + r * H);
    linears<3>({&L.q, &L.k, &L.v}, a, m, {q, k, v});
    for (int64_t r = 0; r < m; ++r) {
      if (L.q_norm)
        for (int64_t hh = 0; hh < nh; ++hh) rms_norm(q + r * qn + hh * hd, L.q_norm, hd, c.eps, q + r * qn + hh * hd);
      if (L.k_norm)
        for (int64_t hh = 0; hh < nkv; ++hh) rms_norm(k + r * kvn + hh * hd, L.k_norm, hd, c.eps, k + r * kvn + hh * hd);
      const int64_t sb = r / m_seq, i = r % m_seq;
      rope(q + r * qn, nh, hd, cs + r * hd, cs + r * hd + half);
      rope(k + r * kvn, nkv, hd, cs + r * hd, cs + r * hd + half);
      for (int64_t hh = 0; hh < nkv; ++hh) {
        const int64_t at = sb * seq_stride + (hh * capacity + pos + i) * hd;
        std::memcpy(kc + at, k + r * kvn + hh * hd, sizeof(float) * hd);
        std::memcpy(vc + at, v + r * kvn + hh * hd, sizeof(float) * hd);
      }
    }
    // Row r (sequence sb, cache index pos + i) sees its sequence's cache indices [start, pos + i].
    auto attend = [&](int64_t item) {
      const int64_t r = item / items_per_row, h0 = (item % items_per_row) * heads_per_item, kvh = h0 / group;
      const int64_t sb = r / m_seq, i = r % m_seq;
      const int64_t start = starts ? starts[sb] : 0;
      const int64_t at = sb * seq_stride + (kvh * capacity + start) * hd;
      thread_local std::vector<float> scores;  // per thread: heads x positions
      attend_kv_head(q + r * qn + h0 * hd, heads_per_item, kc + at, vc + at, pos + i + 1 - start, hd,
                     c.attn_scale, grow(scores, heads_per_item * keys_total), att + r * qn + h0 * hd);
    };
    if (keys_total * hd * nh * m >= kAttnParallelMinWork) parallel_for(m * items_per_row, attend);
    else for (int64_t i = 0; i < m * items_per_row; ++i) attend(i);
    linear(L.o, att, m, a);
    for (int64_t j = 0; j < m * H; ++j) h[j] += a[j];

    // MLP
    for (int64_t r = 0; r < m; ++r) rms_norm(h + r * H, L.post_norm, H, c.eps, a + r * H);
    if (!L.gate.bias && !L.up.bias && pair_combinable(L.gate.w, L.up.w)) {
      // Each work item gates the tile of rows it computed: no serial pass over g and u after the
      // job (3 us a layer on SmolLM2, with the pool's other threads waiting).
      gemm_pair_combine(a, m, L.gate.w, L.up.w, g, silu_mul, kStepParallelMinWork);
    } else {
      linears<2>({&L.gate, &L.up}, a, m, {g, u});
      silu_mul(g, u, m * I);
    }
    linear(L.down, g, m, a);
    for (int64_t j = 0; j < m * H; ++j) h[j] += a[j];
  }
  for (int64_t sb = 0; sb < batch; ++sb) rms_norm(h + ((sb + 1) * m_seq - 1) * H, c.final_norm, H, c.eps, out + sb * H);
}

}  // namespace cat::cpu
