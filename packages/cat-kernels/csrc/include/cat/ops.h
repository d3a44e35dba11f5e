// The boundary between the binding (bindings.cpp) and the device implementations
// (cpu/*.cpp, cuda/*.cu). Everything here is plain C++: raw pointers, sizes, enums.
// The binding validates every argument (shapes, dtypes, devices, contiguity, group size)
// before calling in, so implementations may assume well-formed input, except for the
// *values* of codes, which only a pass over the data can check (pack reports them).
//
// The packed layout is specified in docs/format.md; the constants below are its parameters.
#pragma once

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <stdexcept>
#include <string>

namespace cat {

constexpr int kTileN = 16;   // rows per tile
constexpr int kBlockK = 32;  // columns per block; a block of one row takes `bits` words

enum class DType : int { f32 = 0, f16 = 1, bf16 = 2 };

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Both packed arrays are one little-endian bit stream per row (value v at stream bits
// [bits v, bits v + bits)), cut into int32 words, word w of the 16 rows of a tile side by side
// (docs/format.md). They differ only in the stream's length in words:
// weights: `bits` words per block of 32 columns, so blocks of 32 codes start on a word boundary;
inline int64_t weight_row_words(int64_t k, int bits) { return ceil_div(k, kBlockK) * bits; }
// zero points: as few words as hold the row (a 3-bit row of 9 groups takes one word, not three).
inline int64_t zero_row_words(int64_t n_groups, int bits) { return ceil_div(n_groups * bits, 32); }

// Number of int32 words in a packed [n, k] weight matrix.
inline int64_t packed_words(int64_t n, int64_t k, int bits) {
  return ceil_div(n, kTileN) * weight_row_words(k, bits) * kTileN;
}

// Result of pack: the first code that was out of range, if any.
struct PackStatus {
  bool ok = true;
  int64_t row = -1, col = -1;
  int64_t value = 0;
};

// Everything gemm and dequantize need about a quantized weight.
struct QWeight {
  const int32_t* packed = nullptr;  // [ceil(n/16), ceil(k/32), bits, 16]
  const void* scales = nullptr;     // [n, n_groups], dtype scale_dtype
  DType scale_dtype = DType::f32;
  const int32_t* zeros = nullptr;   // [ceil(n/16), zero_words(), 16]; nullptr = symmetric
  int bits = 4;
  int64_t n = 0, k = 0;
  int64_t group_size = 0;           // resolved: k when the user passed -1
  // A call option carried with the weight: gemm with x rounded to int8 per block of 32 columns
  // (x ~= d * q, d = max|x| / 127 per block) and integer dot products (docs/format.md, "int8
  // activations"). CPU only.
  bool int8_x = false;
  int64_t n_groups() const { return k / group_size; }
  int64_t zero_words() const { return zero_row_words(n_groups(), bits); }
};

// ---------------------------------------------------------------- CPU
namespace cpu {
// codes: [n, k] row-major; code_bytes = 1 (uint8) or 4 (int32). packed: [ceil(n/16), row_words,
// 16] (row_words = weight_row_words or zero_row_words: the same rule serves both arrays).
PackStatus pack(const void* codes, int code_bytes, int64_t n, int64_t k, int bits, int64_t row_words,
                int32_t* packed);
void unpack(const int32_t* packed, int64_t n, int64_t k, int bits, int64_t row_words, uint8_t* codes);
// out: [n, k] row-major, dtype out_dtype.
void dequantize(const QWeight& w, void* out, DType out_dtype);
// Rows ids[0..n_ids) (each in [0, n)) of the dequantized weight as float32: out [n_ids, k].
void dequantize_rows(const QWeight& w, const int64_t* ids, int64_t n_ids, float* out);
// x: [m, k] row-major, dtype x_dtype; out: [m, n] row-major, dtype x_dtype. Products of fewer
// than parallel_min_work weights x rows run on the calling thread (-1: the default threshold).
void gemm(const void* x, DType x_dtype, int64_t m, const QWeight& w, void* out,
          int64_t parallel_min_work = -1);

// The products of one float32 x [m, k] with `count` (<= 8) weights of the same k and group size,
// as one parallel job (out[i]: [m, w[i]->n] float32). Each weight's K is summed in one split,
// so results may differ from gemm()'s (which splits K for short weights) by float rounding.
void gemm_same_x(const float* x, int64_t m, const QWeight* const* w, int count, float* const* out,
                 int64_t parallel_min_work = -1);

// y_a = x a^T and y_b = x b^T for two weights of one layout (pair_combinable: n, k, group size,
// bits, x mode), each tile of both computed by one work item, which then calls
// combine(ya, yb, count) on that tile's values for its rows of x ([rows of x][16], in place in
// ya; lanes past n are combined too but not stored) and stores ya into out [m, a.n]: the gate/up
// product and the SiLU gating of an MLP as one pool job, without a serial pass over the
// intermediate after it. Values equal gemm_same_x's for the two weights.
inline bool pair_combinable(const QWeight& a, const QWeight& b) {
  return a.n == b.n && a.k == b.k && a.group_size == b.group_size && a.bits == b.bits && a.int8_x == b.int8_x;
}
void gemm_pair_combine(const float* x, int64_t m, const QWeight& a, const QWeight& b, float* out,
                       void (*combine)(float* ya, const float* yb, int64_t count), int64_t parallel_min_work = -1);

// One decoder step of a Llama-family model (decoder.cpp). Everything float32 except the packed
// weights' scales; pointers of the norms/biases that a model lacks are null.
struct DecoderLinear {
  QWeight w;
  const float* bias = nullptr;  // [w.n]
};
struct DecoderLayer {
  const float* in_norm = nullptr;    // [hidden]
  const float* post_norm = nullptr;  // [hidden]
  const float* q_norm = nullptr;     // [head_dim] (Qwen3) or null
  const float* k_norm = nullptr;     // [head_dim] (Qwen3) or null
  DecoderLinear q, k, v, o, gate, up, down;
};
struct DecoderConfig {
  int64_t hidden = 0, heads = 0, kv_heads = 0, head_dim = 0, intermediate = 0;
  float eps = 1e-6f, attn_scale = 1.0f, rope_scale = 1.0f;
  const float* inv_freq = nullptr;    // [head_dim / 2]
  const float* final_norm = nullptr;  // [hidden]
};
// x: [batch, m, hidden], the embeddings of each sequence's tokens at positions pos .. pos + m - 1
// (every sequence at the same positions); kv: [layers, 2, batch, kv_heads, capacity, head_dim]
// (keys then values), positions < pos already filled, pos + m <= capacity; out: [batch, hidden],
// the final-normed hidden state of each sequence's last row. starts: [batch] or null (all 0):
// sequence b's first valid cache index (left padding): its rows attend to [starts[b], pos + i]
// and are rotated as position pos + i - starts[b]; starts[b] < pos + m (rows before it are
// padding: they attend to nothing).
void decoder_step(const DecoderConfig& c, const DecoderLayer* layers, int64_t n_layers, const float* x,
                  int64_t batch, int64_t m, int64_t pos, float* kv, int64_t capacity, float* out,
                  const int64_t* starts = nullptr);
// "scalar", "avx2", "avx512" or "amx" (avx512 plus AMX tiles for float-x products of many rows):
// the code path gemm/dequantize use on this CPU.
std::string isa();
}  // namespace cpu

// ---------------------------------------------------------------- CUDA
// Every function runs on `stream` (a cudaStream_t, 0 = legacy default stream) of the device
// that owns the pointers (the binding makes that device current). Errors are thrown as
// std::runtime_error with the CUDA error string.
namespace cuda {
bool available();  // built with CUDA and a device is visible
// Added for the binding (note to the lead / CUDA engineer): the binding makes the DLPack
// device of the arrays current with set_device before calling the functions below, and
// restores the previous one (get_device) afterwards. Both are implemented in
// csrc/cuda_device.cpp (CUDA builds) and csrc/cuda_stub.cpp (CPU-only builds), NOT in
// csrc/cuda/*.cu: do not define them there.
void set_device(int device);
int get_device();
// Pack on the device; returns the first out-of-range code (this synchronizes the stream,
// since the answer must reach the host).
PackStatus pack(const void* codes, int code_bytes, int64_t n, int64_t k, int bits, int64_t row_words,
                int32_t* packed, void* stream);
void unpack(const int32_t* packed, int64_t n, int64_t k, int bits, int64_t row_words, uint8_t* codes,
            void* stream);
void dequantize(const QWeight& w, void* out, DType out_dtype, void* stream);
// How many K partitions gemm uses for this problem, and the float32 workspace it needs
// (elements; 0 when splits == 1). Depends only on the shapes, so results are reproducible.
int gemm_splits(int64_t m, int64_t n, int64_t k, int bits, int64_t group_size);
int64_t gemm_workspace_elems(int64_t m, int64_t n, int64_t k, int bits, int64_t group_size);
// workspace: float32, gemm_workspace_elems(...) elements, allocated by the caller (so that the
// caller's allocator, e.g. torch's caching allocator and CUDA graphs, owns the memory). It holds
// the split-K partial sums and, for the v2 GEMV, per-tile arrival counters that the call zeroes
// on entry and its last CTA per tile resets: one workspace must not be shared by calls that can
// run at the same time (on different streams, or graphs replayed concurrently). Calls ordered on
// one stream may reuse it.
void gemm(const void* x, DType x_dtype, int64_t m, const QWeight& w, void* out, float* workspace,
          void* stream);

// Which CUDA gemm kernels run: v2 (the default) or legacy (the kernels before issue 15), until a
// GPU run has verified v2 (docs/format.md "Choosing the CUDA kernels"). The first call reads
// the environment variable CAT_KERNELS_CUDA_IMPL ("v2" or "legacy"; unset = v2); set_impl
// overrides it for the process (Impl::from_env: read the variable again on the next call).
enum class Impl : int { from_env = -1, legacy = 0, v2 = 1 };
inline std::atomic<int>& impl_state() {
  static std::atomic<int> state{-1};
  return state;
}
inline Impl parse_impl(const char* name, const char* what) {
  const std::string v = name ? name : "";
  if (v.empty() || v == "v2") return Impl::v2;
  if (v == "legacy") return Impl::legacy;
  throw std::invalid_argument(std::string(what) + ": expected \"v2\" or \"legacy\", got \"" + v + "\"");
}
inline Impl impl() {
  int v = impl_state().load(std::memory_order_relaxed);
  if (v < 0) {
    v = static_cast<int>(parse_impl(std::getenv("CAT_KERNELS_CUDA_IMPL"), "CAT_KERNELS_CUDA_IMPL"));
    impl_state().store(v, std::memory_order_relaxed);
  }
  return static_cast<Impl>(v);
}
inline void set_impl(Impl i) { impl_state().store(static_cast<int>(i), std::memory_order_relaxed); }
}  // namespace cuda

}  // namespace cat
