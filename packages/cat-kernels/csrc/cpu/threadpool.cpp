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

// A job's items are split into one contiguous range per thread. Each thread claims runs from
// its own range (a quarter of what is left there per claim: an uncontended atomic on a cache
// line only it writes), then steals runs from the others' ranges when its own is empty, so
// uneven progress still balances. A decode step issues ~150 jobs of a few to a few dozen
// microseconds: what a job costs beyond its items is the cache lines that cross between cores,
// so a dispatch touches few of them (publish, join, done) and takes no mutex unless a thread
// sleeps.
struct alignas(64) Slot {
  std::atomic<int64_t> next{0};
  int64_t end = 0;
  std::atomic<int> busy{0};  // a worker is inside the job (or checking whether it may enter)
};

class Pool {
 public:
  explicit Pool(int threads) : threads_(threads < 1 ? 1 : threads), slots_(new Slot[threads_]) {
    for (int i = 1; i < threads_; ++i) workers_.emplace_back([this, i] { worker(i); });
  }
  ~Pool() {
    {
      std::lock_guard<std::mutex> lk(mu_);
      stop_.store(true, std::memory_order_seq_cst);
      generation_.fetch_add(1, std::memory_order_seq_cst);
    }
    cv_.notify_all();
    for (auto& t : workers_) t.join();
  }
  int threads() const { return threads_; }

  void run(int64_t n, void (*fn)(void*, int64_t), void* ctx) {
    // One job at a time: concurrent callers (several Python threads with the GIL released)
    // queue here instead of oversubscribing the cores.
    std::lock_guard<std::mutex> call(call_mu_);
    fn_ = fn;
    ctx_ = ctx;
    error_ = nullptr;
    for (int t = 0; t < threads_; ++t) {
      slots_[t].next.store(t * n / threads_, std::memory_order_relaxed);
      slots_[t].end = (t + 1) * n / threads_;
    }
    open_.store(true, std::memory_order_seq_cst);
    generation_.fetch_add(1, std::memory_order_seq_cst);
    if (sleepers_.load(std::memory_order_seq_cst) > 0) {
      // Under the mutex: a worker between its last check of the generation and its wait
      // holds it, so the notification cannot fall in between.
      std::lock_guard<std::mutex> lk(mu_);
      cv_.notify_all();
    }
    work(0);
    // Every item is claimed. Close the job, then wait for the workers inside it (each at most
    // one run behind). A worker that arrives later sees it closed and never touches it, so a
    // slow wake-up never delays the caller; one that checked before the close is seen busy
    // here (both sides store, then load, sequentially consistent).
    open_.store(false, std::memory_order_seq_cst);
    for (int t = 1; t < threads_; ++t) wait_idle(slots_[t]);
    fn_ = nullptr;
    if (error_) std::rethrow_exception(error_);
  }

 private:
  // A run from slot s's range: a quarter of what is left there, at least one item; false when
  // the range is empty.
  bool claim(Slot& s, int64_t* first, int64_t* count) {
    int64_t i = s.next.load(std::memory_order_relaxed);
    for (;;) {
      const int64_t left = s.end - i;
      if (left <= 0) return false;
      const int64_t take = left >= 8 ? left / 4 : 1;
      if (s.next.compare_exchange_weak(i, i + take, std::memory_order_relaxed)) {
        *first = i;
        *count = take;
        return true;
      }
    }
  }

  void work(int self) {
    t_in_pool = true;
    try {
      int64_t first, count;
      for (int k = 0; k < threads_; ++k) {
        Slot& s = slots_[(self + k) % threads_];  // own range first, then the others'
        while (claim(s, &first, &count))
          for (int64_t i = first; i < first + count; ++i) fn_(ctx_, i);
      }
    } catch (...) {
      {
        std::lock_guard<std::mutex> lk(mu_);
        if (!error_) error_ = std::current_exception();
      }
      for (int t = 0; t < threads_; ++t) slots_[t].next.store(slots_[t].end, std::memory_order_relaxed);
    }
    t_in_pool = false;
  }

  // The caller's wait for one worker to leave the job: spin first (a joined worker is at most one
  // run behind, and a futex round trip costs tens of microseconds in a VM), then sleep.
  void wait_idle(Slot& s) {
    const auto t0 = std::chrono::steady_clock::now();
    for (int it = 0; s.busy.load(std::memory_order_seq_cst) != 0; ++it) {
      cpu_relax();
      if ((it & 63) == 63 && std::chrono::steady_clock::now() - t0 > kDoneSpin) {
        std::unique_lock<std::mutex> lk(mu_);
        caller_sleeping_.store(true, std::memory_order_seq_cst);
        done_cv_.wait(lk, [&] { return s.busy.load(std::memory_order_seq_cst) == 0; });
        caller_sleeping_.store(false, std::memory_order_relaxed);
        return;
      }
    }
  }

  void worker(int self) {
    Slot& mine = slots_[self];
    uint64_t seen = 0;
    for (;;) {
      // Spin briefly on the generation counter, then sleep.
      const auto t0 = std::chrono::steady_clock::now();
      for (int it = 0; generation_.load(std::memory_order_acquire) == seen; ++it) {
        cpu_relax();
        if ((it & 63) == 63 && std::chrono::steady_clock::now() - t0 > kSpin) {
          std::unique_lock<std::mutex> lk(mu_);
          sleepers_.fetch_add(1, std::memory_order_seq_cst);
          cv_.wait(lk, [&] { return generation_.load(std::memory_order_seq_cst) != seen; });
          sleepers_.fetch_sub(1, std::memory_order_relaxed);
          break;
        }
      }
      if (stop_.load(std::memory_order_seq_cst)) return;
      seen = generation_.load(std::memory_order_acquire);
      mine.busy.store(1, std::memory_order_seq_cst);
      if (open_.load(std::memory_order_seq_cst)) work(self);
      mine.busy.store(0, std::memory_order_seq_cst);
      if (caller_sleeping_.load(std::memory_order_seq_cst)) {
        // The caller's spin ran out: wake it under the mutex, so the wake-up cannot fall
        // between its check of busy and its wait.
        std::lock_guard<std::mutex> lk(mu_);
        done_cv_.notify_all();
      }
    }
  }

  const int threads_;
  std::unique_ptr<Slot[]> slots_;
  std::vector<std::thread> workers_;
  std::mutex call_mu_, mu_;
  std::condition_variable cv_, done_cv_;
  void (*fn_)(void*, int64_t) = nullptr;
  void* ctx_ = nullptr;
  alignas(64) std::atomic<uint64_t> generation_{0};
  std::atomic<bool> open_{false};
  std::atomic<int> sleepers_{0};
  std::atomic<bool> caller_sleeping_{false}, stop_{false};
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
