// The backward's probability -> dscore step, shared by every CUDA backward: dS = dP * P * (1 - P),
// and the fp32 fragment scaling of dK / dQ.
#pragma once

#include <cute/tensor.hpp>

namespace flashsigmoid::cuda {

// dS = dP * P * (1 - P), in place in acc_dp (masked: P = 0, so dS = 0 exactly). Returns the sum of
// this thread's dS when kSum (the d(bias) term), else 0.
template <bool kSum, class AccDP, class AccP>
__device__ __forceinline__ float probs_to_dscores(AccDP& acc_dp, const AccP& acc_p) {
  float sum = 0.0f;
  CUTE_UNROLL
  for (int i = 0; i < cute::size(acc_dp); ++i) {
    const float pr = acc_p(i);
    acc_dp(i) = acc_dp(i) * pr * (1.0f - pr);
    if constexpr (kSum) sum += acc_dp(i);
  }
  return sum;
}

template <class Acc>
__device__ __forceinline__ void scale_fragment(Acc& acc, float s) {
  CUTE_UNROLL
  for (int i = 0; i < cute::size(acc); ++i) acc(i) *= s;
}

}  // namespace flashsigmoid::cuda
