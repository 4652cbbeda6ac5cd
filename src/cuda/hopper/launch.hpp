// Declarations shared by the dispatcher (backend.cu), the Hopper kernel units and the GPU tests.
// Which family runs a call: cuda/kernel_choice.hpp.
#pragma once

#include "common/params.hpp"
#include "cuda/hopper/schedule.hpp"
#include "generated/hopper_head_dims.hpp"  // has_hopper_forward, has_hopper_backward: the built head dims

namespace flashsigmoid::cuda::hopper {

// Defined (explicitly instantiated) in the generated hopper_fwd_hdim<D>_<dtype>.cu units, built only
// when the CUDA architectures include 90a (or 90), for has_hopper_forward's head dims. Dense and varlen
// problems with at least one key row (backend.cu's try_hopper_forward decides).
template <int D, class Element>
void run_fwd(const detail::AttnParams& p, const Schedule& schedule);

// Defined in the generated hopper_bwd_hdim<D>_<dtype>.cu units, for has_hopper_backward's head dims.
// Dense and varlen problems with query and key rows, either mode (backend.cu's try_hopper_backward
// decides).
template <int D, class Element>
void run_bwd(const detail::BwdParams& p);

}  // namespace flashsigmoid::cuda::hopper
