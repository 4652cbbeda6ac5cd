// Schedule switches of the Hopper forward, for the benchmark's same-process A/B runs (not part of the
// public API; the defaults are what every other caller gets; set per thread through
// cuda/kernel_choice.hpp).
#pragma once

namespace flashsigmoid::cuda::hopper {

//   persistent: grid of at most one CTA per SM walking its tiles (else one CTA per tile);
//   l2_grouping: causal longest-first order within groups of heads whose K/V fits in L2 (else across
//   every head); l2_bytes: the L2 size the groups are sized for (0: the device's; the tests set a tiny
//   one to get many groups from a small problem).
struct Schedule {
  bool persistent = true;
  bool l2_grouping = true;
  long long l2_bytes = 0;
};

}  // namespace flashsigmoid::cuda::hopper
