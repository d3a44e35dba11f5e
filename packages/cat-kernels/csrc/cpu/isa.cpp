// Run-time choice of the kernel path. The .so is built for the baseline x86-64 ISA; the AVX2
// and AVX-512 kernels live in their own translation units and are reached only through the
// table returned here, after the CPU said it supports them.
#include <atomic>
#include <cstdlib>
#if defined(CAT_KERNELS_X86)
#include <cpuid.h>
#endif
#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif
#include <stdexcept>
#include <string>

#include "internal.h"

namespace cat::cpu {
namespace detail {
namespace {

std::atomic<int> g_isa{-1};  // -1 = not resolved yet

bool parse(const std::string& s, Isa* out) {
  if (s == "scalar") *out = Isa::scalar;
  else if (s == "avx2") *out = Isa::avx2;
  else if (s == "avx512") *out = Isa::avx512;
  else if (s == "amx") *out = Isa::amx;
  else return false;
  return true;
}

Isa best() {
  if (isa_supported(Isa::amx)) return Isa::amx;
  if (isa_supported(Isa::avx512)) return Isa::avx512;
  if (isa_supported(Isa::avx2)) return Isa::avx2;
  return Isa::scalar;
}

std::string available_list() {
  std::string s = "scalar";
  if (isa_supported(Isa::avx2)) s += ", avx2";
  if (isa_supported(Isa::avx512)) s += ", avx512";
  if (isa_supported(Isa::amx)) s += ", amx";
  return s;
}

Isa resolve(const std::string& name, const char* what) {
  if (name.empty()) return best();
  Isa isa;
  if (!parse(name, &isa))
    throw std::invalid_argument(std::string(what) + "='" + name +
                                "' is not a kernel path; expected one of scalar, avx2, avx512, amx");
  if (!isa_supported(isa))
    throw std::runtime_error(std::string(what) + "='" + name +
                             "' is not supported by this CPU (or build); available: " + available_list());
  return isa;
}

// AMX-TILE and AMX-BF16 in CPUID, the tile state enabled by the OS (XCR0 bits 17-18), and this
// process granted it: Linux hands the 8 KB tile state to a process only on request.
bool amx_ready() {
#if defined(CAT_KERNELS_X86) && defined(__linux__)
  static const bool ready = [] {
    unsigned a, b, c, d;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
    if (!(d >> 22 & 1u) || !(d >> 24 & 1u)) return false;   // AMX-BF16, AMX-TILE
    if (!__get_cpuid(1, &a, &b, &c, &d) || !(c >> 27 & 1u)) return false;  // OSXSAVE
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    if ((lo >> 17 & 3u) != 3u) return false;
    constexpr int kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
    return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
  }();
  return ready;
#else
  return false;
#endif
}

}  // namespace

bool isa_supported(Isa isa) {
  switch (isa) {
    case Isa::scalar: return true;
#if defined(CAT_KERNELS_X86)
    case Isa::avx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
             __builtin_cpu_supports("f16c");
    case Isa::avx512:
      return isa_supported(Isa::avx2) && __builtin_cpu_supports("avx512f") &&
             __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");
    case Isa::amx:
      return isa_supported(Isa::avx512) && amx_ready();
#endif
    default: return false;
  }
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::avx2: return "avx2";
    case Isa::avx512: return "avx512";
    case Isa::amx: return "amx";
    default: return "scalar";
  }
}

Isa active_isa() {
  int v = g_isa.load(std::memory_order_acquire);
  if (v < 0) {
    // Not cached when invalid: every call reports the bad environment variable.
    const char* env = std::getenv("CAT_KERNELS_ISA");
    v = static_cast<int>(resolve(env ? env : "", "CAT_KERNELS_ISA"));
    g_isa.store(v, std::memory_order_release);
  }
  return static_cast<Isa>(v);
}

void set_isa(const char* name) {
  if (!name || !*name) {
    g_isa.store(-1, std::memory_order_release);
    return;
  }
  g_isa.store(static_cast<int>(resolve(name, "isa")), std::memory_order_release);
}

namespace {
bool vnni_supported() {
#if defined(CAT_KERNELS_X86)
  return isa_supported(Isa::avx512) && __builtin_cpu_supports("avx512vnni") &&
         __builtin_cpu_supports("avx512vbmi") && __builtin_cpu_supports("avx512vbmi2");
#else
  return false;
#endif
}
}  // namespace

const Q8Kernel* active_q8_kernel(int bits) {
  const Q8Kernel* k = nullptr;
#if defined(CAT_KERNELS_X86)
  const Isa isa = active_isa();
  const bool avx512 = isa == Isa::avx512 || isa == Isa::amx;
  if (avx512 && vnni_supported()) k = &q8_avx512_vnni;
  else if (avx512 || isa == Isa::avx2) k = &q8_avx2;
#endif
  return k && (k->bits_mask >> bits & 1u) ? k : nullptr;
}

const Kernels& active_kernels() {
  switch (active_isa()) {
#if defined(CAT_KERNELS_X86)
    case Isa::amx:
    case Isa::avx512: return kernels_avx512;
    case Isa::avx2: return kernels_avx2;
#endif
    default: return kernels_scalar;
  }
}

}  // namespace detail

std::string isa() { return detail::isa_name(detail::active_isa()); }

}  // namespace cat::cpu
