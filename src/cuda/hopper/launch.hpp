// Declarations shared by the dispatcher (backend.cu), the Hopper kernel units, the GPU tests and the
// CUDA benchmark. Which family runs a call, and the schedule switches below: cuda/kernel_choice.hpp.
#pragma once

#include "common/params.hpp"

namespace flashsigmoid::cuda {

namespace hopper {
// Schedule switches of the Hopper forward, for the benchmark's same-process A/B runs (not part of the
// public API; the defaults are what every other caller gets; set per thread through KernelChoice).
//   persistent: grid of at most one CTA per SM walking its tiles (else one CTA per tile);
//   l2_grouping: causal longest-first order within groups of heads whose K/V fits in L2 (else across
//   every head); l2_bytes: the L2 size the groups are sized for (0: the device's; the tests set a tiny
//   one to get many groups from a small problem).
struct Schedule {
  bool persistent = true;
  bool l2_grouping = true;
  long long l2_bytes = 0;
};

// Defined (explicitly instantiated) in the generated hopper_fwd_hdim<D>_<dtype>.cu units, built only
// when the CUDA architectures include 90a (or 90). Dense and varlen problems with at least one key
// row (backend.cu's try_hopper_forward decides).
template <int D, class Element>
void run_fwd(const detail::AttnParams& p, const Schedule& schedule);

// Head dims the Hopper backward has (cmake/cuda_kernels.cmake builds its units for these).
constexpr bool has_hopper_backward(int D) { return D == 64 || D == 128; }

// Defined in the generated hopper_bwd_hdim<D>_<dtype>.cu units (has_hopper_backward's head dims, built
// with the forward's units). Dense and varlen problems with query and key rows, either mode (backend.cu's
// try_hopper_backward decides).
template <int D, class Element>
void run_bwd(const detail::BwdParams& p);
}  // namespace hopper

}  // namespace flashsigmoid::cuda
