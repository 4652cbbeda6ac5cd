// Sigmoid on the special-function unit (MUFU), from the half logit h = s / 2 (the score
// transform is pre-scaled by 0.5, exactly, so the multiply by 0.5 is folded into its FMA).
//
// tanh form: sigmoid(s) = 0.5 + 0.5 * tanh(h), tanh.approx.f32 = one MUFU op per element (as
// softmax's ex2). exp form: 1 / (1 + 2^(-2h log2 e)), two MUFU ops (ex2, rcp) but a small
// *relative* error for tiny P. kSigmoidExpForm below picks per input dtype; the GPU test
// SigmoidMath.* measures both forms per decade of P.
#pragma once

#include <type_traits>

#include <cutlass/numeric_types.h>

namespace flashsigmoid::cuda {

__device__ __forceinline__ float tanh_approx(float x) {
  float y;
  asm("tanh.approx.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// The two forms. -inf gives exactly 0 on both.
__device__ __forceinline__ float sigmoid_tanh_form(float half_s) { return fmaf(0.5f, tanh_approx(half_s), 0.5f); }
__device__ __forceinline__ float sigmoid_exp_form(float half_s) { return __fdividef(1.0f, 1.0f + __expf(-2.0f * half_s)); }

// Which form an input dtype gets. The error budget is the dtype's rounding of P (SPEC: at most 2x
// the error of a plain implementation that rounds an exact P to the dtype). With b = -log N most P
// are ~1/N, where tanh.approx's error relative to P reaches ~1 % (SigmoidMath.*, P in 1e-5..1e-3).
// In bf16 outputs that stays below the dtype's own rounding (every bf16 test passes at 2x plain);
// fp16 outputs measured 2.4-2.9x the plain error (P ~ 1e-4: N 2049 with ALiBi). fp16 therefore takes
// the exp form (relative error ~1e-6, two MUFU ops); bf16 keeps the tanh form.
// FLASHSIGMOID_SIGMOID_EXP gives every dtype the exp form.
template <class Element>
inline constexpr bool kSigmoidExpForm =
#if defined(FLASHSIGMOID_SIGMOID_EXP)
    true;
#else
    std::is_same_v<Element, cutlass::half_t>;
#endif

template <class Element>
__device__ __forceinline__ float sigmoid_of_half_logit(float half_s) {
  if constexpr (kSigmoidExpForm<Element>) {
    return sigmoid_exp_form(half_s);
  } else {
    return sigmoid_tanh_form(half_s);
  }
}

// 2 sigmoid(s), for a kernel that halves its result once at the end (the Hopper forward: O = P V
// accumulated from 2P, times 0.5 in the epilogue). Exactly twice the value above (scaling by 2 is
// exact in binary floating point), but the tanh form is then 1 + tanh(h): an add with an immediate,
// where 0.5 + 0.5 tanh(h) needs 0.5 in a register (an FMA takes one immediate), and the register
// allocator kept copies of it in the sigmoid loop.
template <class Element>
__device__ __forceinline__ float twice_sigmoid_of_half_logit(float half_s) {
  if constexpr (kSigmoidExpForm<Element>) {
    return __fdividef(2.0f, 1.0f + __expf(-2.0f * half_s));
  } else {
    return 1.0f + tanh_approx(half_s);
  }
}

}  // namespace flashsigmoid::cuda
