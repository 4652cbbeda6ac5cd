// The shared test helpers: dtype conversions, the guarded host buffer, rel_l2.
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <limits>
#include <random>

#include "reference/testing.hpp"

namespace {

using flashsigmoid::DType;
using namespace flashsigmoid::testing;

TEST(Conversions, HalfRoundTripsEveryValue) {
  for (std::uint32_t h = 0; h < 0x10000; ++h) {
    const float f = half_to_float(static_cast<std::uint16_t>(h));
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(half_to_float(float_to_half(f)))) << std::hex << h;
    } else {
      EXPECT_EQ(float_to_half(f), h) << std::hex << h;
    }
  }
}

TEST(Conversions, HalfValues) {
  EXPECT_EQ(half_to_float(0x3c00), 1.0f);
  EXPECT_EQ(half_to_float(0xc000), -2.0f);
  EXPECT_EQ(half_to_float(0x7bff), 65504.0f);
  EXPECT_EQ(half_to_float(0x0001), std::ldexp(1.0f, -24));  // smallest subnormal
  EXPECT_EQ(half_to_float(0x03ff), std::ldexp(1023.0f, -24));
  EXPECT_EQ(half_to_float(0x0400), std::ldexp(1.0f, -14));  // smallest normal
  EXPECT_TRUE(std::isinf(half_to_float(0x7c00)));
  // Round to nearest, ties to even.
  EXPECT_EQ(float_to_half(1.0f + std::ldexp(1.0f, -11)), 0x3c00);      // tie -> even (down)
  EXPECT_EQ(float_to_half(1.0f + 3 * std::ldexp(1.0f, -11)), 0x3c02);  // tie -> even (up)
  EXPECT_EQ(float_to_half(1.0f + std::ldexp(1.2f, -11)), 0x3c01);      // above the tie
  EXPECT_EQ(float_to_half(65519.0f), 0x7bff);
  EXPECT_EQ(float_to_half(65520.0f), 0x7c00);  // overflow to inf
  EXPECT_EQ(float_to_half(-1e6f), 0xfc00);
  // Subnormals.
  EXPECT_EQ(float_to_half(std::ldexp(1.0f, -24)), 0x0001);
  EXPECT_EQ(float_to_half(std::ldexp(1.0f, -25)), 0x0000);        // tie -> even (zero)
  EXPECT_EQ(float_to_half(std::ldexp(3.0f, -26)), 0x0001);        // 0.75 units
  EXPECT_EQ(float_to_half(std::ldexp(3.0f, -25)), 0x0002);        // 1.5 units: tie -> even
  EXPECT_EQ(float_to_half(std::ldexp(1023.5f, -24)), 0x0400);     // tie -> even: rounds into the normals
  EXPECT_EQ(float_to_half(-std::ldexp(5.0f, -24)), 0x8005);
  EXPECT_EQ(float_to_half(1e-10f), 0x0000);
  EXPECT_EQ(float_to_half(-0.0f), 0x8000);
  EXPECT_TRUE(std::isnan(half_to_float(float_to_half(std::numeric_limits<float>::quiet_NaN()))));
}

TEST(Conversions, Bfloat16) {
  for (std::uint32_t h = 0; h < 0x10000; ++h) {
    const float f = bf16_to_float(static_cast<std::uint16_t>(h));
    if (!std::isnan(f)) {
      EXPECT_EQ(float_to_bf16(f), h) << std::hex << h;
    }
  }
  EXPECT_EQ(float_to_bf16(1.0f), 0x3f80);
  EXPECT_EQ(float_to_bf16(1.0f + std::ldexp(1.0f, -8)), 0x3f80);      // tie -> even (down)
  EXPECT_EQ(float_to_bf16(1.0f + 3 * std::ldexp(1.0f, -8)), 0x3f82);  // tie -> even (up)
  EXPECT_EQ(float_to_bf16(1.0f + std::ldexp(1.5f, -8)), 0x3f81);
  EXPECT_EQ(float_to_bf16(std::numeric_limits<float>::max()), 0x7f80);  // rounds to inf
  EXPECT_TRUE(std::isnan(bf16_to_float(float_to_bf16(std::numeric_limits<float>::quiet_NaN()))));
  EXPECT_TRUE(std::isnan(bf16_to_float(float_to_bf16(std::bit_cast<float>(0x7f800001u)))));  // NaN stays NaN
}

// Rounding checked by its definition: the result is a nearest representable value, and on a
// tie the one with an even last mantissa bit. Random floats over the whole range of each
// format, subnormals included.
template <class ToBits, class FromBits>
void check_nearest_even(ToBits to_bits, FromBits from_bits, std::uint16_t max_mag, int min_exp, int max_exp,
                        const char* name) {
  const double max_finite = from_bits(max_mag);
  std::mt19937_64 gen(std::random_device{}());
  std::uniform_int_distribution<int> expo(min_exp, max_exp);
  std::uniform_real_distribution<double> mant(1.0, 2.0);
  int failures = 0;
  for (int n = 0; n < 200000 && failures < 5; ++n) {
    const float x = static_cast<float>((n & 1 ? -1 : 1) * std::ldexp(mant(gen), expo(gen)));
    if (std::abs(x) > max_finite) continue;  // overflow is checked by value above
    const std::uint16_t h = to_bits(x);
    const double err = std::abs(from_bits(h) - static_cast<double>(x));
    for (int step : {-1, 1}) {  // the neighbours of h towards and away from zero
      const int mag = (h & 0x7fff) + step;
      if (mag < 0 || mag > max_mag) continue;
      const double other = from_bits(static_cast<std::uint16_t>((h & 0x8000) | mag));
      const double e2 = std::abs(other - static_cast<double>(x));
      if (!(err < e2 || (err == e2 && (h & 1) == 0))) {
        ++failures;
        ADD_FAILURE() << name << "(" << x << ") = 0x" << std::hex << h << std::dec << " (" << from_bits(h)
                      << ") but its neighbour " << other << " is " << (err == e2 ? "an even tie" : "nearer");
      }
    }
  }
}

TEST(Conversions, NearestEvenOnRandomValues) {
  check_nearest_even(float_to_half, half_to_float, 0x7bff, -27, 15, "float_to_half");          // incl. subnormals
  check_nearest_even(float_to_bf16, bf16_to_float, 0x7f7f, -135, 127, "float_to_bf16");  // incl. subnormals
}

TEST(HostTensorTest, PoisonFillAndGuard) {
  for (DType t : {DType::float32, DType::float16, DType::bfloat16, DType::float64}) {
    for (Layout l : {Layout::contiguous, Layout::padded, Layout::heads_major}) {
      SCOPED_TRACE(std::string(flashsigmoid::to_string(t)) + " " + to_string(l));
      HostTensor x(t, {2, 3, 4, 32}, l);
      EXPECT_TRUE(x.guard_intact());
      for (double e : x.to_vector()) EXPECT_TRUE(std::isnan(e));
      EXPECT_TRUE(std::isinf(rel_l2(std::vector<double>(x.numel(), 1.0), x.view())));
      x.fill_normal(42);
      const auto a = x.to_vector();
      for (double e : a) EXPECT_NE(e, 0.0);
      for (double e : a) EXPECT_EQ(e, round_to_dtype(e, t));  // values are exact in the dtype
      EXPECT_TRUE(x.guard_intact());
      EXPECT_EQ(rel_l2(a, x.view()), 0.0);
      HostTensor y(t, {2, 3, 4, 32}, l);
      y.fill_normal(42);
      EXPECT_EQ(y.to_vector(), a);  // same seed, same values, whatever the layout
      y.fill_normal();
      EXPECT_NE(y.to_vector(), a);  // fresh seed
      // A write just past the view, just before it, or into layout padding is caught.
      const auto es = flashsigmoid::element_size(t);
      auto* base = static_cast<unsigned char*>(x.view().data);
      base[-1] = 0;
      EXPECT_FALSE(x.guard_intact());
      base[-1] = HostTensor::kCanary;
      EXPECT_TRUE(x.guard_intact());
      const auto last = logical_to_offset(x.view(), x.numel() - 1);
      base[(last + 1) * es] = 0;
      EXPECT_FALSE(x.guard_intact());
      base[(last + 1) * es] = HostTensor::kCanary;
      if (l == Layout::padded) {
        base[32 * es] = 0;  // between head 0 and head 1 of row 0
        EXPECT_FALSE(x.guard_intact());
        base[32 * es] = HostTensor::kCanary;
      }
      EXPECT_TRUE(x.guard_intact());
      x.poison();
      EXPECT_TRUE(std::isnan(x.get(0)));
    }
  }
}

TEST(HostTensorTest, Layouts) {
  HostTensor c(DType::float32, {2, 5, 3, 8});
  EXPECT_EQ(c.view().stride, (std::array<std::int64_t, 4>{120, 24, 8, 1}));
  HostTensor h(DType::float32, {2, 5, 3, 8}, Layout::heads_major);
  EXPECT_EQ(h.view().stride, (std::array<std::int64_t, 4>{120, 8, 40, 1}));
  HostTensor p(DType::float32, {2, 5, 3, 8}, Layout::padded);
  EXPECT_EQ(p.view().stride[3], 1);
  EXPECT_GT(p.view().stride[2], 8);
  EXPECT_GT(p.view().stride[1], 3 * p.view().stride[2]);
  HostTensor v(DType::float16, {7, 3, 8}, Layout::heads_major);  // varlen [total, H, D] as [H, total, D]
  EXPECT_EQ(v.view().stride, (std::array<std::int64_t, 4>{8, 56, 1, 0}));
}

TEST(RelL2, Values) {
  EXPECT_EQ(rel_l2({3.0, 4.0}, std::vector<double>{3.0, 4.0}), 0.0);
  EXPECT_DOUBLE_EQ(rel_l2({3.0, 4.0}, std::vector<double>{3.0, 5.0}), 0.2);
  EXPECT_TRUE(std::isinf(rel_l2({1.0}, std::vector<double>{std::nan("")})));
  EXPECT_TRUE(std::isinf(rel_l2({1.0, 2.0}, std::vector<double>{1.0})));
}

}  // namespace
