// Declarations shared by the dispatcher (backend.cu) and the per-head-dim kernel units.
#pragma once

#include <cuda_runtime.h>

#include "common/params.hpp"
#include "cuda/common/check.hpp"  // check_cuda

namespace flashsigmoid::cuda {

namespace portable {
// Defined (explicitly instantiated) in the generated fwd_hdim<D>_<dtype>.cu units.
template <int D, class Element>
void run_fwd(const detail::AttnParams& p);
// Defined in the generated bwd_hdim<D>_<dtype>.cu units.
template <int D, class Element>
void run_bwd(const detail::BwdParams& p);
}  // namespace portable

}  // namespace flashsigmoid::cuda
