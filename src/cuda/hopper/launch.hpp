// Declarations shared by the dispatcher (backend.cu), the Hopper kernel units, the GPU tests and the
// CUDA benchmark.
#pragma once

#include "common/params.hpp"

namespace flashsigmoid::cuda {

// The CUDA forward kernel that the last flashsigmoid::forward() on CUDA tensors ran in this thread:
// "hopper" or "portable" ("none" before the first). Defined in backend.cu; read by the GPU tests and
// the benchmark to report which kernel they measured.
const char* last_forward_kernel();

namespace hopper {
// Defined (explicitly instantiated) in the generated hopper_fwd_hdim<D>_<dtype>.cu units, built only
// when the CUDA architectures include 90a (or 90). Dense and varlen problems with at least one key
// row (backend.cu's try_hopper_forward decides).
template <int D, class Element>
void run_fwd(const detail::AttnParams& p);
}  // namespace hopper

}  // namespace flashsigmoid::cuda
