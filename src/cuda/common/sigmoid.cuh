// Sigmoid on the special-function unit (MUFU), from the half logit h = s / 2 (the score
// transform is pre-scaled by 0.5, exactly, so the multiply by 0.5 is folded into its FMA).
//
// Default: sigmoid(s) = 0.5 + 0.5 * tanh(h), tanh.approx.f32 = one MUFU op per element (as
// softmax's ex2). FLASHSIGMOID_SIGMOID_EXP (CMake option of the same name) switches to
// 1 / (1 + 2^(-2h log2 e)): two MUFU ops (ex2, rcp) but a small *relative* error for tiny P,
// in case tanh.approx's error near saturation (P ~ 1/N) proves too large; the GPU test
// SigmoidMath.* measures both regimes.
#pragma once

namespace flashsigmoid::cuda {

__device__ __forceinline__ float tanh_approx(float x) {
  float y;
  asm("tanh.approx.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// -inf gives exactly 0 on both paths.
__device__ __forceinline__ float sigmoid_of_half_logit(float half_s) {
#if defined(FLASHSIGMOID_SIGMOID_EXP)
  return __fdividef(1.0f, 1.0f + __expf(-2.0f * half_s));
#else
  return fmaf(0.5f, tanh_approx(half_s), 0.5f);
#endif
}

}  // namespace flashsigmoid::cuda
