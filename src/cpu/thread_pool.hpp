// The CPU backend's worker threads (one process-wide pool; see thread_pool.cpp).
#pragma once

#include <cstdint>

namespace flashsigmoid::detail::cpu {

using TaskFn = void (*)(void* ctx, std::int64_t task) noexcept;

// Runs fn(ctx, task) for task in [0, num_tasks) on `threads` threads (the caller one of them); tasks
// are taken in order from a shared counter. Returns when every task has run.
void run_tasks(std::int64_t num_tasks, int threads, TaskFn fn, void* ctx);

}  // namespace flashsigmoid::detail::cpu
