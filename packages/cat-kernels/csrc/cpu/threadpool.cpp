#include "threadpool.h"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <exception>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#if defined(__linux__)
#include <pthread.h>
#include <sched.h>
#endif

namespace cat::cpu {
namespace {

int default_threads() {
  if (const char* env = std::getenv("CAT_KERNELS_NUM_THREADS"); env && *env) {
    char* end = nullptr;
    long v = std::strtol(env, &end, 10);
    if (end && *end == '\0' && v > 0) return static_cast<int>(v > 1024 ? 1024 : v);
  }
#if defined(__linux__)
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    int c = CPU_COUNT(&set);
    if (c > 0) return c;
  }
#endif
  unsigned hc = std::thread::hardware_concurrency();
  return hc ? static_cast<int>(hc) : 1;
}

thread_local bool t_in_pool = false;

// Workers spin this long for the next job before sleeping on the condition variable: gemm calls
// of a decode step come back to back and a futex wake-up costs tens of microseconds in a VM,
// more than a small gemm itself. Short enough not to matter to other work on the machine.
constexpr auto kSpin = std::chrono::microseconds(30);
// How long the caller spins for the workers to finish their last items before sleeping.
constexpr auto kDoneSpin = std::chrono::microseconds(200);

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

class Pool {
 public:
  explicit Pool(int threads) : threads_(threads < 1 ? 1 : threads) {
    for (int i = 1; i < threads_; ++i) workers_.emplace_back([this] { worker(); });
  }
  ~Pool() {
    {
      std::lock_guard<std::mutex> lk(mu_);
      stop_ = true;
      generation_.fetch_add(1, std::memory_order_release);
    }
    cv_.notify_all();
    for (auto& t : workers_) t.join();
  }
  int threads() const { return threads_; }

  void run(int64_t n, void (*fn)(void*, int64_t), void* ctx) {
    // One job at a time: concurrent callers (several Python threads with the GIL released)
    // queue here instead of oversubscribing the cores.
    std::lock_guard<std::mutex> call(call_mu_);
    bool wake;
    {
      std::lock_guard<std::mutex> lk(mu_);
      fn_ = fn;
      ctx_ = ctx;
      n_ = n;
      next_.store(0, std::memory_order_relaxed);
      open_ = true;
      active_.store(0, std::memory_order_relaxed);
      error_ = nullptr;
      generation_.fetch_add(1, std::memory_order_release);
      wake = sleepers_ > 0;
    }
    if (wake) cv_.notify_all();
    work();
    // Wait only for the workers that joined this job (they may still run an item); one that
    // wakes up later finds the job closed and goes back to waiting, so a slow wake-up never
    // delays the caller. The wait spins first: a joined worker is at most one item behind, and
    // sleeping on the condition variable costs a futex round trip (tens of microseconds in a
    // VM), more than a whole small gemm.
    {
      std::lock_guard<std::mutex> lk(mu_);
      open_ = false;  // from here on active_ only decreases
    }
    const auto t0 = std::chrono::steady_clock::now();
    for (int it = 0; active_.load(std::memory_order_acquire) != 0; ++it) {
      cpu_relax();
      if ((it & 63) == 63 && std::chrono::steady_clock::now() - t0 > kDoneSpin) break;
    }
    std::unique_lock<std::mutex> lk(mu_);
    done_cv_.wait(lk, [&] { return active_.load(std::memory_order_acquire) == 0; });
    fn_ = nullptr;
    if (error_) std::rethrow_exception(error_);
  }

 private:
  // Items are claimed in runs of consecutive indices, each a 1/(2T) share of what is left
  // (guided scheduling), not one at a time: a decode step's products have hundreds to thousands
  // of small items (a 16-row tile each), and every claim moves the counter's cache line between
  // cores. Runs also give each thread a long contiguous stretch of the weight to stream, while
  // the shrinking tail still balances the threads.
  void work() {
    t_in_pool = true;
    const int64_t n = n_, share = 2 * static_cast<int64_t>(threads_);
    try {
      int64_t i = next_.load(std::memory_order_relaxed);
      while (i < n) {
        int64_t take = (n - i) / share;
        if (take < 1) take = 1;
        if (!next_.compare_exchange_weak(i, i + take, std::memory_order_relaxed)) continue;  // i reloaded
        for (const int64_t end = i + take; i < end; ++i) fn_(ctx_, i);
        i = next_.load(std::memory_order_relaxed);
      }
    } catch (...) {
      std::lock_guard<std::mutex> lk(mu_);
      if (!error_) error_ = std::current_exception();
      next_.store(n_, std::memory_order_relaxed);  // stop handing out items
    }
    t_in_pool = false;
  }

  void worker() {
    uint64_t seen = 0;
    for (;;) {
      // Spin briefly on the generation counter, then sleep.
      const auto t0 = std::chrono::steady_clock::now();
      for (int it = 0; generation_.load(std::memory_order_acquire) == seen; ++it) {
        cpu_relax();
        if ((it & 63) == 63 && std::chrono::steady_clock::now() - t0 > kSpin) break;
      }
      {
        std::unique_lock<std::mutex> lk(mu_);
        if (generation_.load(std::memory_order_relaxed) == seen) {
          ++sleepers_;
          cv_.wait(lk, [&] { return generation_.load(std::memory_order_relaxed) != seen; });
          --sleepers_;
        }
        if (stop_) return;
        seen = generation_.load(std::memory_order_relaxed);
        if (!open_) continue;  // woke after the job was closed
        active_.fetch_add(1, std::memory_order_relaxed);
      }
      work();
      if (active_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
        // The caller may be asleep on done_cv_ (its spin ran out): wake it under the mutex, so
        // the wake-up cannot fall between its check of active_ and its wait.
        std::lock_guard<std::mutex> lk(mu_);
        done_cv_.notify_one();
      }
    }
  }

  const int threads_;
  std::vector<std::thread> workers_;
  std::mutex call_mu_, mu_;
  std::condition_variable cv_, done_cv_;
  void (*fn_)(void*, int64_t) = nullptr;
  void* ctx_ = nullptr;
  int64_t n_ = 0;
  std::atomic<int64_t> next_{0};
  std::atomic<uint64_t> generation_{0};
  bool open_ = false;
  std::atomic<int> active_{0};
  int sleepers_ = 0;
  bool stop_ = false;
  std::exception_ptr error_;
};

std::mutex g_mu;
Pool* g_pool = nullptr;  // leaked at exit: joining threads during interpreter teardown can hang
int g_requested = 0;

#if defined(__linux__)
// A forked child has no worker threads; make it build a fresh pool instead of waiting on
// threads that do not exist (the old one is leaked: its mutexes may be in any state).
void after_fork_child() { g_pool = nullptr; new (&g_mu) std::mutex(); }
bool g_atfork = (pthread_atfork(nullptr, nullptr, after_fork_child), true);
#endif

Pool& pool() {
  std::lock_guard<std::mutex> lk(g_mu);
  if (!g_pool) g_pool = new Pool(g_requested > 0 ? g_requested : default_threads());
  return *g_pool;
}

}  // namespace

void parallel_for_raw(int64_t n, void (*fn)(void*, int64_t), void* ctx) {
  if (n <= 0) return;
  if (n == 1 || t_in_pool) {
    for (int64_t i = 0; i < n; ++i) fn(ctx, i);
    return;
  }
  Pool& p = pool();
  if (p.threads() == 1) {
    for (int64_t i = 0; i < n; ++i) fn(ctx, i);
    return;
  }
  p.run(n, fn, ctx);
}

int num_threads() { return pool().threads(); }

void set_num_threads(int n) {
  Pool* old = nullptr;
  {
    std::lock_guard<std::mutex> lk(g_mu);
    g_requested = n;
    old = g_pool;
    g_pool = nullptr;
  }
  delete old;  // joins its workers; callers must not resize while a gemm is running
}

}  // namespace cat::cpu
