// A process-wide pool of worker threads for the CPU backend's parallel loops. Starting a thread costs
// tens of microseconds (40 on a 2-core VM), more than a small pass's work, and a call makes up to five
// passes. The workers sleep on a condition variable between loops. One loop runs on the pool at a
// time: a loop that finds it busy (another caller, or a loop started inside a task) starts its own
// threads instead. Workers are added as loops ask for more, up to one per other core; they are never
// joined (the pool lives until the process exits), and after fork() the child starts a new pool (the
// parent's threads do not exist there).
#include "cpu/thread_pool.hpp"

#include <pthread.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

namespace flashsigmoid::detail::cpu {
namespace {

void drain(std::atomic<std::int64_t>& next, std::int64_t num_tasks, TaskFn fn, void* ctx) {
  for (std::int64_t t = next.fetch_add(1); t < num_tasks; t = next.fetch_add(1)) fn(ctx, t);
}

void run_on_new_threads(std::int64_t num_tasks, int threads, TaskFn fn, void* ctx) {
  std::atomic<std::int64_t> next{0};
  std::vector<std::thread> pool;
  pool.reserve(threads - 1);
  for (int i = 1; i < threads; ++i) pool.emplace_back([&] { drain(next, num_tasks, fn, ctx); });
  drain(next, num_tasks, fn, ctx);
  for (auto& th : pool) th.join();
}

class Pool {
 public:
  // False when the pool is busy; the caller then runs the loop some other way.
  bool try_run(std::int64_t num_tasks, int threads, TaskFn fn, void* ctx) {
    // A flag, not a mutex: a loop started inside a task on this thread must see "busy", not lock twice.
    if (busy_.exchange(true, std::memory_order_acquire)) return false;
    struct Release {
      std::atomic<bool>& flag;
      ~Release() { flag.store(false, std::memory_order_release); }
    } release{busy_};
    // At most one worker per other core: more would only wait (the results do not depend on it).
    static const int kMaxWorkers = std::max(1, static_cast<int>(std::thread::hardware_concurrency())) - 1;
    threads = std::min(threads, kMaxWorkers + 1);
    if (threads < 2) return false;
    while (int(workers_.size()) < threads - 1) workers_.emplace_back([this] { work(); });
    {
      std::lock_guard<std::mutex> lock(m_);
      fn_ = fn;
      ctx_ = ctx;
      num_tasks_ = num_tasks;
      next_.store(0);
      helpers_ = threads - 1;  // workers that may join this loop
      ++generation_;
    }
    wake_.notify_all();
    drain(next_, num_tasks, fn, ctx);
    std::unique_lock<std::mutex> lock(m_);
    helpers_ = 0;  // the tasks are all taken: workers that have not joined yet stay out
    done_.wait(lock, [&] { return running_ == 0; });
    return true;
  }

 private:
  void work() {
    std::uint64_t seen = 0;
    std::unique_lock<std::mutex> lock(m_);
    for (;;) {
      wake_.wait(lock, [&] { return generation_ != seen; });
      seen = generation_;
      if (helpers_ == 0) continue;
      --helpers_;
      ++running_;
      const TaskFn fn = fn_;
      void* const ctx = ctx_;
      const std::int64_t num_tasks = num_tasks_;
      lock.unlock();
      drain(next_, num_tasks, fn, ctx);
      lock.lock();
      if (--running_ == 0) done_.notify_one();
    }
  }

  std::atomic<bool> busy_{false};  // set by the loop running on the pool
  std::mutex m_;     // guards the fields below and the wake / done waits
  std::condition_variable wake_, done_;
  std::uint64_t generation_ = 0;
  TaskFn fn_ = nullptr;
  void* ctx_ = nullptr;
  std::int64_t num_tasks_ = 0;
  std::atomic<std::int64_t> next_{0};
  int helpers_ = 0, running_ = 0;
  std::vector<std::thread> workers_;  // only the thread that set busy_ adds to it
};

// The pool, created on first use; a fork()ed child drops the parent's (leaked: its threads are gone
// and its mutexes may be held) and creates its own.
std::atomic<Pool*> g_pool{nullptr};
std::mutex g_create;

// fork() holds g_create, so that the child never inherits it locked mid-creation.
const bool g_fork_handlers = pthread_atfork([] { g_create.lock(); }, [] { g_create.unlock(); },
                                            [] {
                                              g_pool.store(nullptr);
                                              g_create.unlock();
                                            }) == 0;

Pool& pool() {
  Pool* p = g_pool.load(std::memory_order_acquire);
  if (p != nullptr) return *p;
  std::lock_guard<std::mutex> lock(g_create);
  p = g_pool.load(std::memory_order_acquire);
  if (p == nullptr) {
    p = new Pool;  // never deleted: its threads live until the process exits
    g_pool.store(p, std::memory_order_release);
  }
  return *p;
}

}  // namespace

void run_tasks(std::int64_t num_tasks, int threads, TaskFn fn, void* ctx) {
  if (num_tasks <= 0) return;
  threads = static_cast<int>(std::clamp<std::int64_t>(threads, 1, num_tasks));
  if (threads == 1) {
    for (std::int64_t t = 0; t < num_tasks; ++t) fn(ctx, t);
    return;
  }
  (void)g_fork_handlers;
  if (!pool().try_run(num_tasks, threads, fn, ctx)) run_on_new_threads(num_tasks, threads, fn, ctx);
}

}  // namespace flashsigmoid::detail::cpu
