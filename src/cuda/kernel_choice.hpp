// Which CUDA kernel family runs a call: the one place that overrides the dispatcher's choice, for the
// GPU tests and the benchmark that check or time both families in one process. Not part of the
// public API; every other caller gets the defaults. Host code only (device code never includes it).
#pragma once

#include "cuda/decode/launch.hpp"
#include "cuda/hopper/schedule.hpp"

namespace flashsigmoid::cuda {

enum class KernelFamily {
  automatic,  // the Hopper kernels on sm_90 devices where built and covering the problem, else portable
  portable,   // the sm_80-instruction kernels on every device
};

struct KernelChoice {
  KernelFamily forward = KernelFamily::automatic;
  KernelFamily backward = KernelFamily::automatic;
  hopper::Schedule hopper_schedule;  // the Hopper forward's schedule switches (launch.hpp)
  decode::LaunchChoice decode;       // the KV-cache attention's launches (decode/launch.hpp)
};

// This thread's choice, read by every CUDA forward / backward call on the thread. Defined in backend.cu.
KernelChoice& kernel_choice();

// Sets this thread's choice for one scope, then restores the previous one.
class ScopedKernelChoice {
 public:
  explicit ScopedKernelChoice(const KernelChoice& choice) : saved_(kernel_choice()) { kernel_choice() = choice; }
  ~ScopedKernelChoice() { kernel_choice() = saved_; }
  ScopedKernelChoice(const ScopedKernelChoice&) = delete;
  ScopedKernelChoice& operator=(const ScopedKernelChoice&) = delete;

 private:
  KernelChoice saved_;
};

// The family that the last flashsigmoid::forward() on CUDA tensors ran in this thread: "hopper" or
// "portable" ("none" before the first). The tests and the benchmark report which kernel they measured.
const char* last_forward_kernel();
// The same for flashsigmoid::backward().
const char* last_backward_kernel();
// What the last flashsigmoid::forward_with_kvcache() on CUDA tensors ran in this thread: its split
// count and how the splits were added (for the benchmark's report and the tests).
decode::LaunchInfo last_kvcache_launch();

}  // namespace flashsigmoid::cuda
