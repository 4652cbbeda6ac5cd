// Entry points of each backend. They receive already-validated parameters.
#pragma once

#include <vector>

#include "common/params.hpp"

namespace flashsigmoid::detail {

void cpu_forward(const AttnParams& p);
void cpu_backward(const BwdParams& p);
// Appends k_new / v_new (when given) into the cache, then attends. Inputs already validated.
void cpu_forward_kvcache(const KVCacheParams& p);

// Defined in src/cuda/ when the library is built with CUDA, else in src/cuda_disabled.cpp.
bool cuda_backend_built();
bool cuda_device_present();
std::vector<int> cuda_built_head_dims();
// Throws Error when this (dtype, head_dim, options) combination has no CUDA kernel.
void cuda_forward(const AttnParams& p);
void cuda_backward(const BwdParams& p);
void cuda_forward_kvcache(const KVCacheParams& p);

}  // namespace flashsigmoid::detail
