// Sigmoid from FMA / integer instructions only, no special-function unit (MUFU). At head dim 64
// the Hopper forward's MUFU time (one tanh.approx per score) is about its tensor-core time, so a
// kernel can move part of each tile's sigmoids onto the FMA pipes (FLASHSIGMOID_SIGMOID_FMA_EVERY,
// a tuning option). Host and device: tests/cpp/sigmoid_fma_test.cpp measures its error on the CPU.
//
// sigmoid(2h) = 1 / (1 + 2^x), x = -2h log2(e): 2^x as 2^round(x) (exponent bits) times a
// degree-4 polynomial for 2^f, f in [-0.5, 0.5]; the reciprocal from a bit-trick estimate and
// two Newton steps. About 18 FMA/ALU instructions; error 1.4e-5 absolute, 6.3e-5 relative.
#pragma once

#include <cstdint>
#include <cstring>

#include "common/score_transform.hpp"  // FS_HD

namespace flashsigmoid::detail {

FS_HD std::int32_t float_bits(float x) {
#if defined(__CUDA_ARCH__)
  return __float_as_int(x);
#else
  std::int32_t i;
  std::memcpy(&i, &x, sizeof(i));
  return i;
#endif
}

FS_HD float bits_float(std::int32_t i) {
#if defined(__CUDA_ARCH__)
  return __int_as_float(i);
#else
  float x;
  std::memcpy(&x, &i, sizeof(x));
  return x;
#endif
}

// h = s / 2 (the kernels' pre-scaled logit); returns sigmoid(s).
FS_HD float sigmoid_of_half_logit_fma(float h) {
  constexpr float kRound = 12582912.0f;  // 1.5 * 2^23: x + kRound holds round(x) in its low bits
  float x = h * -2.8853900817779268f;    // -2h log2(e)
  x = x < -64.0f ? -64.0f : (x > 64.0f ? 64.0f : x);  // sigmoid is 0 or 1 to fp32 beyond
  const float t = x + kRound;
  const float f = x - (t - kRound);      // in [-0.5, 0.5]
  // 2^f = e^(f ln 2), Taylor to degree 4: relative error < 5e-5 on [-0.5, 0.5].
  float p = 0.0096181291f;               // (ln 2)^4 / 24
  p = p * f + 0.0555041087f;             // (ln 2)^3 / 6
  p = p * f + 0.2402265070f;             // (ln 2)^2 / 2
  p = p * f + 0.6931471806f;             // ln 2
  p = p * f + 1.0f;
  const float e = bits_float(float_bits(p) + ((float_bits(t) - float_bits(kRound)) << 23));  // 2^x
  const float d = 1.0f + e;
  float r = bits_float(0x7EF311C3 - float_bits(d));  // 1/d within about 5 % (one step: 2.6e-3)
  r = r * (2.0f - d * r);                            // Newton: the relative error squares
  r = r * (2.0f - d * r);
  return r;
}

}  // namespace flashsigmoid::detail
