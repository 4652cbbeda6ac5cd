// Sigmoid on the special-function unit: sigmoid(s) = 0.5 + 0.5 * tanh(0.5 * s).
// tanh.approx.f32 is one MUFU op (as softmax's ex2), against ex2 + rcp for 1 / (1 + e^-s).
#pragma once

namespace flashsigmoid::cuda {

__device__ __forceinline__ float tanh_approx(float x) {
  float y;
  asm("tanh.approx.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// Takes the half logit (0.5 * s): the score transform is pre-scaled by 0.5 (exact), so the
// whole sigmoid is one FMA (in the transform), one MUFU and one FMA. -inf gives exactly 0.
__device__ __forceinline__ float sigmoid_of_half_logit(float half_s) {
  return fmaf(0.5f, tanh_approx(half_s), 0.5f);
}

}  // namespace flashsigmoid::cuda
