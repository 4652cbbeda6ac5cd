// Declarations shared by the dispatcher (backend.cu) and the per-head-dim decode units.
#pragma once

#include "common/params.hpp"

namespace flashsigmoid::cuda::decode {

// How a call with several splits adds their fp32 partials.
enum class SplitSum {
  automatic,  // the heuristic's choice (launch.cuh)
  kernel,     // partials in a workspace, added by a second kernel (every architecture)
  cluster,    // sm_90: the splits of one (row block, sequence x kv head) form a thread-block cluster and
              // add their partials through distributed shared memory: no workspace, one kernel; up to
              // kMaxClusterSplits splits (more fall back to the kernel)
};

// The launch choices that the GPU tests and the benchmark may force (cuda::KernelChoice); every other
// caller gets the defaults.
struct LaunchChoice {
  SplitSum sum = SplitSum::automatic;
  // sm_90: the attention kernel launched as a programmatic dependent of the stream's previous kernel
  // (its launch and start overlap that kernel's tail; it waits for it before reading memory). Off
  // until timed on a GPU.
  bool dependent_launch = false;
};

// What a call ran: its split count and how the splits were added ("one split", "kernel", "cluster").
struct LaunchInfo {
  int splits = 0;
  const char* sum = "none";
};

// Appends k_new / v_new into the cache (when given), then attends; everything on p.stream.
// Defined (explicitly instantiated) in the generated decode_hdim<D>_<dtype>.cu units.
template <int D, class Element>
LaunchInfo run_kvcache(const detail::KVCacheParams& p, const LaunchChoice& choice);

}  // namespace flashsigmoid::cuda::decode
