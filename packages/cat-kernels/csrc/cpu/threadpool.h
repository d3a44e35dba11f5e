// A small persistent pool of std::threads. OpenMP is avoided on purpose: its runtime clashes
// with the one torch ships (two libgomp/libiomp copies in one process), and vendoring one is
// not worth it for a handful of parallel loops.
#pragma once

#include <cstdint>
#include <type_traits>

namespace cat::cpu {

// Runs fn(ctx, i) for i in [0, n) on the pool; the calling thread takes part. Items are handed
// out dynamically, so callers must make each item's result independent of which thread runs it
// (the kernels do: that is what makes the results independent of the thread count).
void parallel_for_raw(int64_t n, void (*fn)(void* ctx, int64_t i), void* ctx);

// The same for any callable fn(int64_t), without a std::function (no allocation, no copy).
template <class F>
inline void parallel_for(int64_t n, F&& fn) {
  using Fn = std::remove_reference_t<F>;
  parallel_for_raw(
      n, [](void* c, int64_t i) { (*static_cast<Fn*>(c))(i); },
      const_cast<void*>(static_cast<const void*>(&fn)));
}

// Number of threads parallel_for uses (workers + caller).
int num_threads();
// Resizes the pool; n <= 0 restores the default (CAT_KERNELS_NUM_THREADS, else the number of
// CPUs this process may run on).
void set_num_threads(int n);

}  // namespace cat::cpu
