// Declarations shared by the dispatcher (backend.cu) and the per-head-dim decode units.
#pragma once

#include "common/params.hpp"

namespace flashsigmoid::cuda::decode {

// The launch choices that the GPU tests and the benchmark may force (cuda::KernelChoice); every other
// caller gets the defaults.
struct LaunchChoice {
  // sm_90: the attention kernel launched as a programmatic dependent of the stream's previous kernel
  // (its launch and start overlap that kernel's tail; it waits for it before reading memory).
  bool dependent_launch = true;
};

// What a call ran: its split count, how the splits were added ("one split", "kernel") and whether the
// attention was launched as a programmatic dependent.
struct LaunchInfo {
  int splits = 0;
  const char* sum = "none";
  bool dependent = false;
};

// Appends k_new / v_new into the cache (when given), then attends; everything on p.stream.
// Defined (explicitly instantiated) in the generated decode_hdim<D>_<dtype>.cu units.
template <int D, class Element>
LaunchInfo run_kvcache(const detail::KVCacheParams& p, const LaunchChoice& choice);

}  // namespace flashsigmoid::cuda::decode
