// Declarations shared by the dispatcher (backend.cu) and the per-head-dim decode units.
#pragma once

#include "common/params.hpp"

namespace flashsigmoid::cuda::decode {

// Appends k_new / v_new into the cache (when given), then attends; everything on p.stream.
// Defined (explicitly instantiated) in the generated decode_hdim<D>_<dtype>.cu units.
template <int D, class Element>
void run_kvcache(const detail::KVCacheParams& p);

}  // namespace flashsigmoid::cuda::decode
