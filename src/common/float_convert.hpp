// Host-side 16-bit float storage types and their conversions to/from float
// (round-to-nearest-even, subnormals, inf and NaN handled). Used by the CPU backend
// and by the test helpers; CUDA code uses cuda_fp16 / cuda_bf16 instead.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

namespace flashsigmoid::detail {

struct half_t {
  std::uint16_t bits;
};
struct bfloat16_t {
  std::uint16_t bits;
};

inline std::uint32_t float_bits(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}
inline float bits_float(std::uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

inline float to_float(bfloat16_t x) { return bits_float(std::uint32_t(x.bits) << 16); }

inline bfloat16_t to_bfloat16(float f) {
  const std::uint32_t u = float_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return {std::uint16_t((u >> 16) | 0x0040u)};  // quiet NaN
  const std::uint32_t rounded = u + 0x7fffu + ((u >> 16) & 1u);
  return {std::uint16_t(rounded >> 16)};
}

inline float to_float(half_t x) {
  const std::uint32_t sign = std::uint32_t(x.bits & 0x8000u) << 16;
  const std::uint32_t exp = (x.bits >> 10) & 0x1fu;
  const std::uint32_t mant = x.bits & 0x3ffu;
  if (exp == 0) {  // zero or subnormal: mant * 2^-24
    const float v = std::ldexp(static_cast<float>(mant), -24);
    return sign ? -v : v;
  }
  if (exp == 31) return bits_float(sign | 0x7f800000u | (mant << 13));
  return bits_float(sign | ((exp + 112u) << 23) | (mant << 13));
}

inline half_t to_half(float f) {
  std::uint32_t u = float_bits(f);
  const std::uint16_t sign = std::uint16_t((u >> 16) & 0x8000u);
  u &= 0x7fffffffu;
  if (u >= 0x7f800000u) return {std::uint16_t(sign | (u > 0x7f800000u ? 0x7e00u : 0x7c00u))};
  if (u >= 0x477ff000u) return {std::uint16_t(sign | 0x7c00u)};  // rounds to >= 65520: overflow
  if (u < 0x38800000u) {                                          // below 2^-14: half subnormal
    const float units = std::nearbyint(std::ldexp(bits_float(u), 24));  // RNE in units of 2^-24
    return {std::uint16_t(sign | static_cast<std::uint16_t>(units))};
  }
  // Normal: rebias the exponent (127 -> 15) and round the 13 dropped mantissa bits to nearest even.
  u += 0xc8000fffu + ((u >> 13) & 1u);
  return {std::uint16_t(sign | (u >> 13))};
}

// Generic load/store between a storage type and an accumulation type.
template <typename Acc>
inline Acc load_as(float x) { return static_cast<Acc>(x); }
template <typename Acc>
inline Acc load_as(double x) { return static_cast<Acc>(x); }
template <typename Acc>
inline Acc load_as(half_t x) { return static_cast<Acc>(to_float(x)); }
template <typename Acc>
inline Acc load_as(bfloat16_t x) { return static_cast<Acc>(to_float(x)); }

template <typename T>
struct StoreAs;
template <>
struct StoreAs<float> {
  template <typename Acc>
  static float from(Acc x) { return static_cast<float>(x); }
};
template <>
struct StoreAs<double> {
  template <typename Acc>
  static double from(Acc x) { return static_cast<double>(x); }
};
template <>
struct StoreAs<half_t> {
  template <typename Acc>
  static half_t from(Acc x) { return to_half(static_cast<float>(x)); }
};
template <>
struct StoreAs<bfloat16_t> {
  template <typename Acc>
  static bfloat16_t from(Acc x) { return to_bfloat16(static_cast<float>(x)); }
};

template <typename T, typename Acc>
inline T store_as(Acc x) { return StoreAs<T>::from(x); }

}  // namespace flashsigmoid::detail
