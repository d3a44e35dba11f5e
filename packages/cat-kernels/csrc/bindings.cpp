// Python binding: arrays arrive through DLPack (nanobind ndarray), get a structural re-check
// (the Python layer in cat_kernels/_checks.py already produced the friendly messages; this
// guards direct users of _C against crashes) and are handed to cat::cpu or cat::cuda.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "cat/ops.h"
#include "cpu/internal.h"
#include "cpu/threadpool.h"

namespace nb = nanobind;
using In = nb::ndarray<nb::ro>;
using Out = nb::ndarray<>;

#ifndef CAT_KERNELS_VERSION
#define CAT_KERNELS_VERSION "0.0.0"
#endif
#ifndef CAT_KERNELS_CUDA_ARCHS
#define CAT_KERNELS_CUDA_ARCHS ""
#endif

namespace {

constexpr int kCPU = nb::device::cpu::value, kCUDA = nb::device::cuda::value;

std::string dtype_name(const nb::dlpack::dtype& d) {
  const char* base = "unknown";
  switch (static_cast<nb::dlpack::dtype_code>(d.code)) {
    case nb::dlpack::dtype_code::Int: base = "int"; break;
    case nb::dlpack::dtype_code::UInt: base = "uint"; break;
    case nb::dlpack::dtype_code::Float: base = "float"; break;
    case nb::dlpack::dtype_code::Bfloat: base = "bfloat"; break;
    case nb::dlpack::dtype_code::Bool: return "bool";
    case nb::dlpack::dtype_code::Complex: base = "complex"; break;
    default: break;
  }
  std::string s = std::string(base) + std::to_string(d.bits);
  if (d.lanes != 1) s += "x" + std::to_string(d.lanes);
  return s;
}

template <class A>
bool c_contiguous(const A& a) {
  for (size_t i = 0; i < a.ndim(); ++i)
    if (a.shape(i) == 0) return true;  // empty arrays have arbitrary strides
  int64_t expect = 1;
  for (size_t i = a.ndim(); i-- > 0;) {
    if (a.shape(i) != 1 && a.stride(i) != expect) return false;
    expect *= static_cast<int64_t>(a.shape(i));
  }
  return true;
}

void require(bool ok, const std::string& msg) {
  if (!ok) throw nb::value_error(msg.c_str());
}

template <class A>
void check_array(const A& a, const char* name, const char* dtype, std::vector<int64_t> shape) {
  require(dtype_name(a.dtype()) == dtype,
          std::string(name) + ": expected dtype " + dtype + ", got " + dtype_name(a.dtype()));
  bool ok = a.ndim() == shape.size();
  for (size_t i = 0; ok && i < shape.size(); ++i) ok = static_cast<int64_t>(a.shape(i)) == shape[i];
  if (!ok) {
    std::string want = "(";
    for (size_t i = 0; i < shape.size(); ++i) want += (i ? ", " : "") + std::to_string(shape[i]);
    throw nb::value_error((std::string(name) + ": expected shape " + want + ")").c_str());
  }
  require(c_contiguous(a), std::string(name) + ": must be C-contiguous");
}

cat::DType float_dtype(const In& a, const char* name) {
  const std::string d = dtype_name(a.dtype());
  if (d == "float32") return cat::DType::f32;
  if (d == "float16") return cat::DType::f16;
  if (d == "bfloat16") return cat::DType::bf16;
  throw nb::type_error((std::string(name) + ": expected float32, float16 or bfloat16, got " + d).c_str());
}

struct Device {
  int type, id;
};

template <class A>
Device device_of(const A& a) {
  return {a.device_type(), a.device_id()};
}

void same_device(const Device& ref, const Device& d, const char* name) {
  require(ref.type == d.type && (ref.type == kCPU || ref.id == d.id),
          std::string(name) + ": must be on the same device as the other arrays");
}

void check_device_type(const Device& d) {
  require(d.type == kCPU || d.type == kCUDA,
          "arrays must live in CPU memory or on a CUDA device (DLPack device type " +
              std::to_string(d.type) + " is not supported)");
}

// Makes the arrays' CUDA device current for the duration of a call, then restores the caller's.
struct DeviceGuard {
  int prev = -1;
  explicit DeviceGuard(const Device& d) {
    if (d.type != kCUDA) return;
    prev = cat::cuda::get_device();
    if (prev != d.id) cat::cuda::set_device(d.id);
    else prev = -1;
  }
  ~DeviceGuard() {
    if (prev >= 0) {
      try {
        cat::cuda::set_device(prev);
      } catch (...) {
      }
    }
  }
};

int bits_of(const In& packed, const char* name) {
  require(packed.ndim() == 4, std::string(name) + ": expected a 4-D packed array");
  const int bits = static_cast<int>(packed.shape(2));
  require(bits == 2 || bits == 3 || bits == 4 || bits == 8,
          std::string(name) + ": shape[2] is the bit width and must be 2, 3, 4 or 8, got " +
              std::to_string(bits));
  return bits;
}

std::vector<int64_t> packed_shape(int64_t n, int64_t k, int bits) {
  return {cat::ceil_div(n, cat::kTileN), cat::ceil_div(k, cat::kBlockK), bits, cat::kTileN};
}

std::vector<int64_t> zeros_shape(int64_t n, int64_t n_groups, int bits) {
  return {cat::ceil_div(n, cat::kTileN), cat::zero_row_words(n_groups, bits), cat::kTileN};
}

// Validates packed/scales/zeros against each other and builds the QWeight.
cat::QWeight make_weight(const In& packed, const In& scales, const std::optional<In>& zeros,
                         int64_t group_size, int64_t k, Device* dev) {
  cat::QWeight w;
  w.bits = bits_of(packed, "packed");
  require(scales.ndim() == 2, "scales: expected a 2-D array [N, n_groups]");
  w.n = static_cast<int64_t>(scales.shape(0));
  const int64_t ng = static_cast<int64_t>(scales.shape(1));
  require(k > 0, "k must be positive");
  require(w.n > 0 && ng > 0, "scales: N and n_groups must be positive");
  if (group_size == -1) group_size = k;
  require(group_size > 0 && k % group_size == 0 && (group_size % 32 == 0 || group_size == k),
          "group_size must be -1 or a multiple of 32 that divides K");
  require(ng == k / group_size, "scales: expected shape[1] == K / group_size");
  w.k = k;
  w.group_size = group_size;
  w.scale_dtype = float_dtype(scales, "scales");
  check_array(packed, "packed", "int32", packed_shape(w.n, k, w.bits));
  require(c_contiguous(scales), "scales: must be C-contiguous");
  *dev = device_of(packed);
  check_device_type(*dev);
  same_device(*dev, device_of(scales), "scales");
  w.packed = static_cast<const int32_t*>(packed.data());
  w.scales = scales.data();
  if (zeros) {
    check_array(*zeros, "zeros", "int32", zeros_shape(w.n, ng, w.bits));
    same_device(*dev, device_of(*zeros), "zeros");
    w.zeros = static_cast<const int32_t*>(zeros->data());
  }
  return w;
}

// pack and unpack serve both arrays: `zero_layout` selects the zero points' shorter streams
// ([ceil(n/16), ceil(k*bits/32), 16]) over the weights' ([ceil(n/16), ceil(k/32), bits, 16]).
std::tuple<bool, int64_t, int64_t, int64_t> py_pack(const In& codes, int bits, const Out& out,
                                                    uintptr_t stream, bool zero_layout) {
  require(bits == 2 || bits == 3 || bits == 4 || bits == 8, "bits must be 2, 3, 4 or 8");
  require(codes.ndim() == 2, "codes: expected a 2-D array [N, K]");
  const std::string dt = dtype_name(codes.dtype());
  require(dt == "uint8" || dt == "int32", "codes: expected dtype uint8 or int32, got " + dt);
  require(c_contiguous(codes), "codes: must be C-contiguous");
  const int64_t n = codes.shape(0), k = codes.shape(1);
  check_array(out, "out", "int32", zero_layout ? zeros_shape(n, k, bits) : packed_shape(n, k, bits));
  const int64_t row_words = zero_layout ? cat::zero_row_words(k, bits) : cat::weight_row_words(k, bits);
  const Device d = device_of(codes);
  check_device_type(d);
  same_device(d, device_of(out), "out");
  const int cb = dt == "uint8" ? 1 : 4;
  cat::PackStatus st;
  if (n > 0 && k > 0) {
    nb::gil_scoped_release rel;
    DeviceGuard g(d);
    int32_t* dst = static_cast<int32_t*>(out.data());
    st = d.type == kCUDA ? cat::cuda::pack(codes.data(), cb, n, k, bits, row_words, dst, reinterpret_cast<void*>(stream))
                         : cat::cpu::pack(codes.data(), cb, n, k, bits, row_words, dst);
  }
  return {st.ok, st.row, st.col, st.value};
}

// bits < 0: read it from packed.shape[2] (weights); the zero layout has no bits dimension.
void py_unpack(const In& packed, int64_t n, int64_t k, int bits, const Out& out, uintptr_t stream,
               bool zero_layout) {
  require(n > 0 && k > 0, "n and k must be positive");
  if (zero_layout) {
    require(bits == 2 || bits == 3 || bits == 4 || bits == 8, "bits must be 2, 3, 4 or 8");
    check_array(packed, "zeros", "int32", zeros_shape(n, k, bits));
  } else {
    bits = bits_of(packed, "packed");
    check_array(packed, "packed", "int32", packed_shape(n, k, bits));
  }
  const int64_t row_words = zero_layout ? cat::zero_row_words(k, bits) : cat::weight_row_words(k, bits);
  check_array(out, "out", "uint8", {n, k});
  const Device d = device_of(packed);
  check_device_type(d);
  same_device(d, device_of(out), "out");
  nb::gil_scoped_release rel;
  DeviceGuard g(d);
  const int32_t* src = static_cast<const int32_t*>(packed.data());
  uint8_t* dst = static_cast<uint8_t*>(out.data());
  if (d.type == kCUDA)
    cat::cuda::unpack(src, n, k, bits, row_words, dst, reinterpret_cast<void*>(stream));
  else
    cat::cpu::unpack(src, n, k, bits, row_words, dst);
}

// A weight validated once and kept alive (the ndarrays hold the producers' DLPack capsules, so
// the memory cannot go away under us). Per call only x and out are checked, which is what makes
// a decode step (one small GEMV per linear, hundreds per token) cheap. `gemm_ptr` takes raw
// pointers for callers that already know x's layout (cat_kernels.PackedWeight checks a torch
// tensor through its attributes, a fraction of the cost of a DLPack export).
struct PyWeight {
  In packed, scales;
  std::optional<In> zeros;
  cat::QWeight w;
  Device dev{};

  PyWeight(const In& p, const In& s, const std::optional<In>& z, int64_t group_size, int64_t k)
      : packed(p), scales(s), zeros(z) {
    w = make_weight(packed, scales, zeros, group_size, k, &dev);
  }

  int64_t workspace_elems(int64_t m) const {
    if (dev.type != kCUDA || m <= 0) return 0;
    return cat::cuda::gemm_workspace_elems(m, w.n, w.k, w.bits, w.group_size);
  }

  void run(const void* x, cat::DType xdt, int64_t m, void* out, float* ws, int64_t ws_elems,
           uintptr_t stream) const {
    if (m == 0) return;
    if (dev.type == kCUDA) {
      const int64_t need = workspace_elems(m);
      if (need > 0 && (ws == nullptr || ws_elems < need))
        throw nb::value_error(("workspace: expected at least " + std::to_string(need) + " float32 elements").c_str());
      nb::gil_scoped_release rel;
      DeviceGuard g(dev);
      cat::cuda::gemm(x, xdt, m, w, out, ws, reinterpret_cast<void*>(stream));
      return;
    }
    nb::gil_scoped_release rel;
    cat::cpu::gemm(x, xdt, m, w, out);
  }

  void gemm(const In& x, const Out& out, const std::optional<Out>& workspace, uintptr_t stream) const {
    require(x.ndim() == 2, "x: expected a 2-D array [M, K]");
    const cat::DType xdt = float_dtype(x, "x");
    require(c_contiguous(x), "x: must be C-contiguous");
    const int64_t m = x.shape(0);
    require(static_cast<int64_t>(x.shape(1)) == w.k,
            "x: expected shape[1] == K = " + std::to_string(w.k) + ", got " + std::to_string(x.shape(1)));
    same_device(dev, device_of(x), "x");
    check_array(out, "out", dtype_name(x.dtype()).c_str(), {m, w.n});
    same_device(dev, device_of(out), "out");
    float* ws = nullptr;
    int64_t ws_elems = 0;
    if (workspace) {
      require(dtype_name(workspace->dtype()) == "float32" && c_contiguous(*workspace),
              "workspace: expected a C-contiguous float32 array");
      same_device(dev, device_of(*workspace), "workspace");
      ws = static_cast<float*>(workspace->data());
      ws_elems = static_cast<int64_t>(workspace->size());
    }
    run(x.data(), xdt, m, out.data(), ws, ws_elems, stream);
  }

  // dtype: 0 float32, 1 float16, 2 bfloat16. The caller guarantees that x ([m, k], C-contiguous)
  // and out ([m, n], same dtype) live on (device_type, device_id); those two are re-checked here.
  void gemm_ptr(uintptr_t x, int64_t m, int64_t k, int dtype, int device_type, int device_id,
                uintptr_t out, uintptr_t ws, int64_t ws_elems, uintptr_t stream) const {
    require(m >= 0, "x: M must be >= 0");
    require(k == w.k, "x: expected shape[1] == K = " + std::to_string(w.k) + ", got " + std::to_string(k));
    require(dtype >= 0 && dtype <= 2, "x: dtype code must be 0 (float32), 1 (float16) or 2 (bfloat16)");
    same_device(dev, Device{device_type, device_id}, "x");
    require(m == 0 || (x != 0 && out != 0), "x, out: null data pointer");
    const cat::DType xdt = dtype == 0 ? cat::DType::f32 : dtype == 1 ? cat::DType::f16 : cat::DType::bf16;
    run(reinterpret_cast<const void*>(x), xdt, m, reinterpret_cast<void*>(out),
        reinterpret_cast<float*>(ws), ws_elems, stream);
  }

  // Rows `ids` (int64 [n_ids], CPU) as float32 into out ([n_ids, k], CPU): table lookups from a
  // packed weight (an output head tied to the input embedding). The caller (PackedWeight) checks
  // dtypes, shapes and contiguity; every id is range-checked here before anything is read.
  void dequantize_rows_ptr(uintptr_t ids, int64_t n_ids, uintptr_t out) const {
    require(dev.type == kCPU, "dequantize_rows: the weight must be in CPU memory");
    require(n_ids >= 0 && (n_ids == 0 || (ids != 0 && out != 0)), "dequantize_rows: null data pointer");
    const int64_t* p = reinterpret_cast<const int64_t*>(ids);
    for (int64_t i = 0; i < n_ids; ++i)
      if (p[i] < 0 || p[i] >= w.n)
        throw nb::index_error(("ids: row " + std::to_string(p[i]) + " out of range [0, " + std::to_string(w.n) +
                               ")").c_str());
    nb::gil_scoped_release rel;
    cat::cpu::dequantize_rows(w, p, n_ids, reinterpret_cast<float*>(out));
  }

  void set_int8_x(bool on) {
    require(!on || dev.type == kCPU,
            "int8_activations: the int8-activation gemm runs on the CPU; the weight is on a CUDA device");
    w.int8_x = on;
  }

  void dequantize(const Out& out, uintptr_t stream) const {
    const std::string odt = dtype_name(out.dtype());
    require(odt == "float32" || odt == "float16" || odt == "bfloat16",
            "out: expected dtype float32, float16 or bfloat16, got " + odt);
    check_array(out, "out", odt.c_str(), {w.n, w.k});
    same_device(dev, device_of(out), "out");
    const cat::DType dt = odt == "float32" ? cat::DType::f32 : odt == "float16" ? cat::DType::f16 : cat::DType::bf16;
    nb::gil_scoped_release rel;
    DeviceGuard g(dev);
    if (dev.type == kCUDA) cat::cuda::dequantize(w, out.data(), dt, reinterpret_cast<void*>(stream));
    else cat::cpu::dequantize(w, out.data(), dt);
  }
};

// A Llama-family decoder over validated weights (cat_kernels.Decoder). It keeps every array and
// weight it was given alive; per step only the activations and the cache are looked at.
struct PyDecoder {
  cat::cpu::DecoderConfig c;
  std::vector<cat::cpu::DecoderLayer> layers;
  std::vector<nb::object> weights;  // the _Weight objects behind the layers' QWeights
  std::vector<In> arrays;           // norms, biases, inv_freq

  const float* keep_f32(const In& a, int64_t n, const std::string& name) {
    check_array(a, name.c_str(), "float32", {n});
    require(a.device_type() == kCPU, name + ": must be in CPU memory");
    arrays.push_back(a);
    return static_cast<const float*>(a.data());
  }

  PyDecoder(int64_t hidden, int64_t heads, int64_t kv_heads, int64_t head_dim, int64_t intermediate,
            double eps, double attn_scale, double rope_scale, const In& inv_freq, const In& final_norm) {
    require(hidden > 0 && heads > 0 && kv_heads > 0 && head_dim > 0 && intermediate > 0,
            "hidden, heads, kv_heads, head_dim and intermediate must be positive");
    require(heads % kv_heads == 0, "heads must be a multiple of kv_heads");
    require(head_dim % 2 == 0, "head_dim must be even (rotary embedding)");
    c.hidden = hidden, c.heads = heads, c.kv_heads = kv_heads, c.head_dim = head_dim;
    c.intermediate = intermediate;
    c.eps = static_cast<float>(eps), c.attn_scale = static_cast<float>(attn_scale);
    c.rope_scale = static_cast<float>(rope_scale);
    c.inv_freq = keep_f32(inv_freq, head_dim / 2, "inv_freq");
    c.final_norm = keep_f32(final_norm, hidden, "final_norm");
  }

  cat::cpu::DecoderLinear linear(const nb::object& obj, const std::optional<In>& bias, int64_t n, int64_t k,
                                 const std::string& name) {
    require(nb::isinstance<PyWeight>(obj), name + ": expected a cat_kernels PackedWeight");
    const PyWeight& pw = nb::cast<const PyWeight&>(obj);
    require(pw.dev.type == kCPU, name + ": the decoder runs on the CPU; the weight is on a CUDA device");
    require(pw.w.n == n && pw.w.k == k, name + ": expected a weight of shape [" + std::to_string(n) + ", " +
                                            std::to_string(k) + "], got [" + std::to_string(pw.w.n) + ", " +
                                            std::to_string(pw.w.k) + "]");
    weights.push_back(obj);
    cat::cpu::DecoderLinear l;
    l.w = pw.w;
    if (bias) l.bias = keep_f32(*bias, n, name + " bias");
    return l;
  }

  void add_layer(const In& in_norm, const In& post_norm, const std::optional<In>& q_norm,
                 const std::optional<In>& k_norm, const std::vector<nb::object>& w,
                 const std::vector<std::optional<In>>& bias) {
    require(w.size() == 7 && bias.size() == 7,
            "weights and biases: expected 7 each (q, k, v, o, gate, up, down)");
    const int64_t H = c.hidden, qn = c.heads * c.head_dim, kvn = c.kv_heads * c.head_dim, I = c.intermediate;
    const std::string at = "layer " + std::to_string(layers.size()) + " ";
    cat::cpu::DecoderLayer L;
    L.in_norm = keep_f32(in_norm, H, at + "input norm");
    L.post_norm = keep_f32(post_norm, H, at + "post-attention norm");
    if (q_norm) L.q_norm = keep_f32(*q_norm, c.head_dim, at + "q norm");
    if (k_norm) L.k_norm = keep_f32(*k_norm, c.head_dim, at + "k norm");
    L.q = linear(w[0], bias[0], qn, H, at + "q");
    L.k = linear(w[1], bias[1], kvn, H, at + "k");
    L.v = linear(w[2], bias[2], kvn, H, at + "v");
    L.o = linear(w[3], bias[3], H, qn, at + "o");
    L.gate = linear(w[4], bias[4], I, H, at + "gate");
    L.up = linear(w[5], bias[5], I, H, at + "up");
    L.down = linear(w[6], bias[6], H, I, at + "down");
    layers.push_back(L);
    set_int8_x(int8_x);
  }

  int64_t n_layers() const { return static_cast<int64_t>(layers.size()); }

  // Every linear of every layer (and of layers added later: add_layer copies the flag of the
  // weight it is given, so the flag is applied again there).
  bool int8_x = false;
  void set_int8_x(bool on) {
    int8_x = on;
    for (cat::cpu::DecoderLayer& L : layers)
      for (cat::cpu::DecoderLinear* l : {&L.q, &L.k, &L.v, &L.o, &L.gate, &L.up, &L.down}) l->w.int8_x = on;
  }

  void check_step(int64_t batch, int64_t m, int64_t pos, int64_t capacity) const {
    require(!layers.empty(), "the decoder has no layers");
    require(batch >= 1, "x: expected at least one sequence");
    require(m >= 1, "x: expected at least one token per sequence");
    require(pos >= 0, "pos must be >= 0");
    require(pos + m <= capacity, "kv: capacity " + std::to_string(capacity) + " is too small for positions up to " +
                                     std::to_string(pos + m));
  }

  // x, kv and out are float32, C-contiguous, in CPU memory, with the shapes of step(); the caller
  // (cat_kernels.Decoder) has checked them.
  // starts: 0 (none) or [batch] int64, each in [0, pos + m) (checked here: the kernel indexes with
  // it; rows before their sequence's start are padding and attend to nothing).
  void step_ptr(uintptr_t x, int64_t batch, int64_t m, int64_t pos, uintptr_t kv, int64_t capacity,
                uintptr_t out, uintptr_t starts) const {
    check_step(batch, m, pos, capacity);
    require(x != 0 && kv != 0 && out != 0, "x, kv, out: null data pointer");
    const int64_t* st = reinterpret_cast<const int64_t*>(starts);
    for (int64_t b = 0; st && b < batch; ++b)
      require(st[b] >= 0 && st[b] < pos + m, "starts: sequence " + std::to_string(b) + " starts at " +
                                                  std::to_string(st[b]) + ", expected 0 .. " + std::to_string(pos + m - 1));
    nb::gil_scoped_release rel;
    cat::cpu::decoder_step(c, layers.data(), n_layers(), reinterpret_cast<const float*>(x), batch, m, pos,
                           reinterpret_cast<float*>(kv), capacity, reinterpret_cast<float*>(out), st);
  }

  void step(const In& x, int64_t pos, const Out& kv, const Out& out, const std::optional<In>& starts) const {
    require(x.ndim() == 3, "x: expected a 3-D array [batch, tokens, hidden]");
    const int64_t batch = static_cast<int64_t>(x.shape(0)), m = static_cast<int64_t>(x.shape(1));
    check_array(x, "x", "float32", {batch, m, c.hidden});
    require(kv.ndim() == 6, "kv: expected a 6-D array [layers, 2, batch, kv_heads, capacity, head_dim]");
    const int64_t cap = static_cast<int64_t>(kv.shape(4));
    check_array(kv, "kv", "float32", {n_layers(), 2, batch, c.kv_heads, cap, c.head_dim});
    check_array(out, "out", "float32", {batch, c.hidden});
    for (auto [d, name] : {std::pair{device_of(x), "x"}, {device_of(kv), "kv"}, {device_of(out), "out"}})
      require(d.type == kCPU, std::string(name) + ": must be in CPU memory");
    uintptr_t st = 0;
    if (starts) {
      check_array(*starts, "starts", "int64", {batch});
      require(device_of(*starts).type == kCPU, "starts: must be in CPU memory");
      st = reinterpret_cast<uintptr_t>(starts->data());
    }
    step_ptr(reinterpret_cast<uintptr_t>(x.data()), batch, m, pos, reinterpret_cast<uintptr_t>(kv.data()), cap,
             reinterpret_cast<uintptr_t>(out.data()), st);
  }
};

// The one-off entry points validate a PyWeight and use it once.
void py_dequantize(const In& packed, const In& scales, const std::optional<In>& zeros, int64_t group_size,
                   int64_t k, const Out& out, uintptr_t stream) {
  PyWeight(packed, scales, zeros, group_size, k).dequantize(out, stream);
}

void py_gemm(const In& x, const In& packed, const In& scales, const std::optional<In>& zeros,
             int64_t group_size, const Out& out, const std::optional<Out>& workspace, uintptr_t stream,
             bool int8_activations) {
  require(x.ndim() == 2, "x: expected a 2-D array [M, K]");
  PyWeight pw(packed, scales, zeros, group_size, static_cast<int64_t>(x.shape(1)));
  pw.set_int8_x(int8_activations);
  pw.gemm(x, out, workspace, stream);
}

std::tuple<std::string, std::vector<int64_t>, bool, int, int> py_inspect(const In& a) {
  std::vector<int64_t> shape(a.ndim());
  for (size_t i = 0; i < a.ndim(); ++i) shape[i] = static_cast<int64_t>(a.shape(i));
  return {dtype_name(a.dtype()), shape, c_contiguous(a), a.device_type(), a.device_id()};
}

}  // namespace

NB_MODULE(_C, m) {
  m.doc() = "cat-kernels native module (private: use the cat_kernels package)";
  m.def("_inspect", &py_inspect, nb::arg("array"));
  m.def("_pack", &py_pack, nb::arg("codes"), nb::arg("bits"), nb::arg("out"), nb::arg("stream") = 0,
        nb::arg("zero_layout") = false);
  m.def("_unpack", &py_unpack, nb::arg("packed"), nb::arg("n"), nb::arg("k"), nb::arg("bits"), nb::arg("out"),
        nb::arg("stream") = 0, nb::arg("zero_layout") = false);
  m.def("_dequantize", &py_dequantize, nb::arg("packed"), nb::arg("scales"), nb::arg("zeros").none(),
        nb::arg("group_size"), nb::arg("k"), nb::arg("out"), nb::arg("stream") = 0);
  m.def("_gemm", &py_gemm, nb::arg("x"), nb::arg("packed"), nb::arg("scales"), nb::arg("zeros").none(),
        nb::arg("group_size"), nb::arg("out"), nb::arg("workspace").none() = nb::none(),
        nb::arg("stream") = 0, nb::arg("int8_activations") = false);
  nb::class_<PyWeight>(m, "_Weight")
      .def(nb::init<const In&, const In&, const std::optional<In>&, int64_t, int64_t>(), nb::arg("packed"),
           nb::arg("scales"), nb::arg("zeros").none(), nb::arg("group_size"), nb::arg("k"))
      .def("gemm", &PyWeight::gemm, nb::arg("x"), nb::arg("out"), nb::arg("workspace").none() = nb::none(),
           nb::arg("stream") = 0)
      .def("gemm_ptr", &PyWeight::gemm_ptr, nb::arg("x"), nb::arg("m"), nb::arg("k"), nb::arg("dtype"),
           nb::arg("device_type"), nb::arg("device_id"), nb::arg("out"), nb::arg("workspace") = 0,
           nb::arg("workspace_elems") = 0, nb::arg("stream") = 0)
      .def("dequantize", &PyWeight::dequantize, nb::arg("out"), nb::arg("stream") = 0)
      .def("dequantize_rows_ptr", &PyWeight::dequantize_rows_ptr, nb::arg("ids"), nb::arg("n_ids"), nb::arg("out"))
      .def("workspace_elems", &PyWeight::workspace_elems, nb::arg("m"))
      .def_prop_ro("n", [](const PyWeight& p) { return p.w.n; })
      .def_prop_ro("k", [](const PyWeight& p) { return p.w.k; })
      .def_prop_ro("bits", [](const PyWeight& p) { return p.w.bits; })
      .def_prop_ro("device_type", [](const PyWeight& p) { return p.dev.type; })
      .def_prop_ro("device_id", [](const PyWeight& p) { return p.dev.id; })
      .def_prop_rw("int8_activations", [](const PyWeight& p) { return p.w.int8_x; }, &PyWeight::set_int8_x);
  nb::class_<PyDecoder>(m, "_Decoder")
      .def(nb::init<int64_t, int64_t, int64_t, int64_t, int64_t, double, double, double, const In&, const In&>(),
           nb::arg("hidden"), nb::arg("heads"), nb::arg("kv_heads"), nb::arg("head_dim"), nb::arg("intermediate"),
           nb::arg("eps"), nb::arg("attn_scale"), nb::arg("rope_scale"), nb::arg("inv_freq"), nb::arg("final_norm"))
      .def("add_layer", &PyDecoder::add_layer, nb::arg("in_norm"), nb::arg("post_norm"), nb::arg("q_norm").none(),
           nb::arg("k_norm").none(), nb::arg("weights"), nb::arg("biases"))
      .def("step", &PyDecoder::step, nb::arg("x"), nb::arg("pos"), nb::arg("kv"), nb::arg("out"),
           nb::arg("starts").none() = nb::none())
      .def("step_ptr", &PyDecoder::step_ptr, nb::arg("x"), nb::arg("batch"), nb::arg("m"), nb::arg("pos"),
           nb::arg("kv"), nb::arg("capacity"), nb::arg("out"), nb::arg("starts") = 0)
      .def_prop_ro("n_layers", &PyDecoder::n_layers)
      .def_prop_rw("int8_activations", [](const PyDecoder& d) { return d.int8_x; },
                   [](PyDecoder& d, bool on) { d.set_int8_x(on); });
  m.def("_cuda_gemm_workspace_elems", [](int64_t m_, int64_t n, int64_t k, int bits, int64_t g) {
    return cat::cuda::gemm_workspace_elems(m_, n, k, bits, g);
  });
  m.def("_cuda_available", [] { return cat::cuda::available(); });
  m.def("_cuda_impl", [] { return cat::cuda::impl() == cat::cuda::Impl::legacy ? std::string("legacy") : std::string("v2"); });
  m.def("_set_cuda_impl", [](const std::string& name) {
    if (name.empty()) cat::cuda::set_impl(cat::cuda::Impl::from_env);
    else cat::cuda::set_impl(cat::cuda::parse_impl(name.c_str(), "impl"));
  }, nb::arg("name"));
  m.def("_isa", [] { return cat::cpu::isa(); });
  m.def("_int8_kernel", [](int bits) { return cat::cpu::detail::active_q8_kernel(bits) != nullptr; },
        nb::arg("bits"),
        "Whether int8_activations runs integer dot products for bits-bit weights on the active path.");
  m.def("_set_isa", [](const std::string& name) { cat::cpu::detail::set_isa(name.c_str()); },
        nb::arg("name"), "Force a CPU kernel path ('scalar', 'avx2', 'avx512', 'amx'); '' restores the default.");
  m.def("_available_isas", [] {
    std::vector<std::string> r;
    for (auto i : {cat::cpu::detail::Isa::scalar, cat::cpu::detail::Isa::avx2, cat::cpu::detail::Isa::avx512,
                   cat::cpu::detail::Isa::amx})
      if (cat::cpu::detail::isa_supported(i)) r.push_back(cat::cpu::detail::isa_name(i));
    return r;
  });
  m.def("_num_threads", [] { return cat::cpu::num_threads(); });
  m.def("_set_num_threads", [](int n) { cat::cpu::set_num_threads(n); }, nb::arg("n"));
#if defined(CAT_KERNELS_WITH_CUDA)
  m.attr("_cuda_built") = true;
#else
  m.attr("_cuda_built") = false;
#endif
#if defined(CAT_HAVE_TILED_V2)
  m.attr("_cuda_tiled_v2") = true;
#else
  m.attr("_cuda_tiled_v2") = false;
#endif
  m.attr("_version") = CAT_KERNELS_VERSION;
  m.attr("_cuda_archs") = CAT_KERNELS_CUDA_ARCHS;
}
