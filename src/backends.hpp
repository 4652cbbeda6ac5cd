// Entry points of each backend. They receive already-validated parameters.
#pragma once

#include <vector>

#include "common/params.hpp"

namespace flashsigmoid::detail {

void cpu_forward(const AttnParams& p);
void cpu_backward(const BwdParams& p);

// Defined in src/cuda/ when the library is built with CUDA, else in src/cuda_disabled.cpp.
bool cuda_backend_built();
bool cuda_device_present();
std::vector<int> cuda_built_head_dims();
// Throws Error when this (dtype, head_dim, options) combination has no CUDA kernel.
void cuda_forward(const AttnParams& p);
void cuda_backward(const BwdParams& p);

}  // namespace flashsigmoid::detail
