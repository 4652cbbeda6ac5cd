// Row-level checks of [B, N, H, D] outputs (batch 0, contiguous) for the non-finite tests of the
// CPU and the CUDA backends: which rows are NaN, which are bitwise unchanged.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "reference/testing.hpp"

namespace fs_test {

// Element (i, h, d) of batch 0 of a contiguous [B, N, H, D] tensor.
inline std::int64_t at([[maybe_unused]] std::int64_t N, std::int64_t H, std::int64_t D, std::int64_t i,
                       std::int64_t h, std::int64_t d) {
  return (i * H + h) * D + d;
}

// Sets the D values of row (i, h) to `value`.
inline void set_row(flashsigmoid::testing::HostTensor& t, std::int64_t N, std::int64_t H, std::int64_t D,
                    std::int64_t i, std::int64_t h, double value) {
  for (std::int64_t d = 0; d < D; ++d) t.set(at(N, H, D, i, h, d), value);
}

// How the D values of row (i, h) look: all NaN, all finite, or a mix.
enum class Row { nan, finite, mixed };
inline Row row_kind(const std::vector<double>& x, std::int64_t N, std::int64_t H, std::int64_t D, std::int64_t i,
                    std::int64_t h) {
  int nan = 0, finite = 0;
  for (std::int64_t d = 0; d < D; ++d) {
    const double e = x[at(N, H, D, i, h, d)];
    nan += std::isnan(e);
    finite += std::isfinite(e);
  }
  return nan == D ? Row::nan : finite == D ? Row::finite : Row::mixed;
}

// Whether two NaN count as equal in row_equal.
enum class NanEqual { yes, no };

// True when rows (i, h) of a and b hold the same values.
inline bool row_equal(const std::vector<double>& a, const std::vector<double>& b, std::int64_t N, std::int64_t H,
                      std::int64_t D, std::int64_t i, std::int64_t h, NanEqual nan_equal) {
  for (std::int64_t d = 0; d < D; ++d) {
    const double x = a[at(N, H, D, i, h, d)], y = b[at(N, H, D, i, h, d)];
    const bool both_nan = nan_equal == NanEqual::yes && std::isnan(x) && std::isnan(y);
    if (!(x == y || both_nan)) return false;
  }
  return true;
}

// The first `valid_elems` values of `got` are finite, the rest (rows past the last varlen
// sequence) are zero.
inline void expect_zero_past(const char* name, const std::vector<double>& got, std::int64_t valid_elems) {
  for (std::size_t n = 0; n < got.size(); ++n) {
    if (static_cast<std::int64_t>(n) < valid_elems) {
      ASSERT_TRUE(std::isfinite(got[n])) << name << " element " << n;
    } else {
      ASSERT_EQ(got[n], 0.0) << name << " element " << n << " (past the last sequence)";
    }
  }
}

}  // namespace fs_test
