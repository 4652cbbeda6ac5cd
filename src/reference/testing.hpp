// Small host-side helpers shared by the tests, the CLI's checks and the CPU benchmark:
// half/bfloat16 conversion, an owning strided host buffer of any dtype with a guard
// band, random fills, poisoning, and the relative-L2 error measure of SPEC.md.
// Header-only.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/float_convert.hpp"
#include "flashsigmoid/flashsigmoid.hpp"

namespace flashsigmoid::testing {

// ---- scalar conversions (round to nearest, ties to even; subnormals, inf, NaN) -------------
// The library's own bit-level conversions (common/float_convert.hpp), so that the tests of
// these helpers test the code the CPU backend uses.

inline std::uint16_t float_to_bf16(float f) { return detail::to_bfloat16(f).bits; }
inline float bf16_to_float(std::uint16_t h) { return detail::to_float(detail::bfloat16_t{h}); }
inline std::uint16_t float_to_half(float f) { return detail::to_half(f).bits; }
inline float half_to_float(std::uint16_t h) { return detail::to_float(detail::half_t{h}); }

// x rounded to the precision of `dtype` (float16/bfloat16: RNE; float32: to float; float64: as is).
inline double round_to_dtype(double x, DType dtype) {
  switch (dtype) {
    case DType::float16: return half_to_float(float_to_half(static_cast<float>(x)));
    case DType::bfloat16: return bf16_to_float(float_to_bf16(static_cast<float>(x)));
    case DType::float32: return static_cast<float>(x);
    case DType::int32: return static_cast<double>(static_cast<std::int32_t>(x));
    case DType::float64: return x;
  }
  return x;
}

inline double load_element(const void* p, DType dtype) {
  switch (dtype) {
    case DType::float32: { float f; std::memcpy(&f, p, 4); return f; }
    case DType::float64: { double d; std::memcpy(&d, p, 8); return d; }
    case DType::float16: { std::uint16_t h; std::memcpy(&h, p, 2); return half_to_float(h); }
    case DType::bfloat16: { std::uint16_t h; std::memcpy(&h, p, 2); return bf16_to_float(h); }
    case DType::int32: { std::int32_t i; std::memcpy(&i, p, 4); return i; }
  }
  throw std::invalid_argument("load_element: unknown dtype");
}

inline void store_element(void* p, DType dtype, double x) {
  switch (dtype) {
    case DType::float32: { const float f = static_cast<float>(x); std::memcpy(p, &f, 4); return; }
    case DType::float64: std::memcpy(p, &x, 8); return;
    case DType::float16: { const auto h = float_to_half(static_cast<float>(x)); std::memcpy(p, &h, 2); return; }
    case DType::bfloat16: { const auto h = float_to_bf16(static_cast<float>(x)); std::memcpy(p, &h, 2); return; }
    case DType::int32: { const auto i = static_cast<std::int32_t>(x); std::memcpy(p, &i, 4); return; }
  }
  throw std::invalid_argument("store_element: unknown dtype");
}

// Element offset (in elements) of the n-th element in row-major logical order.
inline std::int64_t logical_to_offset(const TensorView& t, std::int64_t n) {
  std::int64_t off = 0;
  for (int d = t.rank - 1; d >= 0; --d) {
    const std::int64_t idx = n % t.shape[d];
    n /= t.shape[d];
    off += idx * t.stride[d];
  }
  return off;
}

// Reads a CPU tensor of any dtype through its strides into row-major float64.
inline std::vector<double> to_vector(const TensorView& t) {
  std::vector<double> out(static_cast<std::size_t>(t.numel()));
  if (out.empty()) return out;
  if (t.data == nullptr) throw std::invalid_argument("to_vector: null data pointer");
  const auto* base = static_cast<const unsigned char*>(t.data);
  const std::size_t es = element_size(t.dtype);
  for (std::size_t n = 0; n < out.size(); ++n) {
    out[n] = load_element(base + logical_to_offset(t, static_cast<std::int64_t>(n)) * es, t.dtype);
  }
  return out;
}

// Relative L2 error ||x - ref|| / ||ref||; +inf when x holds a NaN or an infinity or the sizes
// differ. When ||ref|| == 0 the absolute error ||x|| is returned (0 only for an exact match).
inline double rel_l2(const std::vector<double>& ref, const std::vector<double>& x) {
  if (ref.size() != x.size()) return std::numeric_limits<double>::infinity();
  double num = 0.0, den = 0.0;
  for (std::size_t n = 0; n < ref.size(); ++n) {
    if (!std::isfinite(x[n])) return std::numeric_limits<double>::infinity();
    const double e = x[n] - ref[n];
    num += e * e;
    den += ref[n] * ref[n];
  }
  if (std::isnan(num)) return std::numeric_limits<double>::infinity();
  return den > 0.0 ? std::sqrt(num / den) : std::sqrt(num);
}

inline double rel_l2(const std::vector<double>& ref, const TensorView& x) { return rel_l2(ref, to_vector(x)); }

// ---- an owning host buffer ---------------------------------------------------------------

enum class Layout {
  contiguous,   // row-major
  padded,       // every stride but the last padded by a few elements (gaps between rows/heads)
  heads_major,  // rank 4 [B, N, H, D] stored as [B, H, N, D] (rank 3: [total, H, D] as [H, total, D])
};

inline const char* to_string(Layout l) {
  switch (l) {
    case Layout::contiguous: return "contiguous";
    case Layout::padded: return "padded";
    case Layout::heads_major: return "heads_major";
  }
  return "?";
}

// A strided CPU tensor of any dtype. Its storage holds `guard` extra elements before and after
// the view; every byte not covered by the view (guard band and layout padding) holds a canary,
// so guard_intact() detects out-of-view writes.
class HostTensor {
 public:
  static constexpr unsigned char kCanary = 0xA5;

  HostTensor() = default;
  HostTensor(DType dtype, std::vector<std::int64_t> shape, Layout layout = Layout::contiguous,
             std::int64_t guard = 64)
      : guard_(guard) {
    if (shape.empty() || shape.size() > static_cast<std::size_t>(kMaxRank)) {
      throw std::invalid_argument("HostTensor: rank must be 1..4");
    }
    view_.dtype = dtype;
    view_.rank = static_cast<int>(shape.size());
    const int r = view_.rank;
    for (int d = 0; d < r; ++d) view_.shape[d] = shape[d];
    // Physical order of the dimensions, outermost first.
    std::vector<int> order(r);
    for (int d = 0; d < r; ++d) order[d] = d;
    if (layout == Layout::heads_major && r >= 3) std::swap(order[r - 3], order[r - 2]);
    const std::int64_t pad = layout == Layout::padded ? 3 : 0;
    std::int64_t stride = 1;
    for (int p = r - 1; p >= 0; --p) {
      const int d = order[p];
      view_.stride[d] = stride;
      stride = stride * std::max<std::int64_t>(shape[d], 1) + pad;
    }
    std::int64_t extent = 0;  // elements spanned by the view
    if (view_.numel() > 0) {
      extent = 1;
      for (int d = 0; d < r; ++d) extent += (shape[d] - 1) * view_.stride[d];
    }
    const std::size_t es = element_size(dtype);
    storage_.assign(static_cast<std::size_t>(extent + 2 * guard_) * es, kCanary);
    in_view_.assign(storage_.size(), 0);
    for (std::int64_t n = 0; n < view_.numel(); ++n) {
      const std::size_t b = static_cast<std::size_t>(guard_ + logical_to_offset(view_, n)) * es;
      for (std::size_t i = 0; i < es; ++i) in_view_[b + i] = 1;
    }
    poison();
  }

  TensorView view() const {
    TensorView t = view_;
    t.data = const_cast<unsigned char*>(storage_.data()) + static_cast<std::size_t>(guard_) * element_size(view_.dtype);
    return t;
  }
  operator TensorView() const { return view(); }
  DType dtype() const { return view_.dtype; }
  std::int64_t numel() const { return view_.numel(); }

  double get(std::int64_t n) const { return load_element(ptr(n), view_.dtype); }
  void set(std::int64_t n, double x) { store_element(ptr(n), view_.dtype, x); }

  // Fresh normal(mean, stddev) values; never exactly zero (a zero draw is redrawn after rounding).
  void fill_normal(std::uint64_t seed, double mean = 0.0, double stddev = 1.0) {
    std::mt19937_64 gen(seed);
    std::normal_distribution<double> dist(mean, stddev);
    for (std::int64_t n = 0; n < numel(); ++n) {
      double x = 0.0;
      while (x == 0.0) x = round_to_dtype(dist(gen), view_.dtype);
      set(n, x);
    }
  }
  // As above, seeded from std::random_device; returns the seed used (print it to reproduce).
  std::uint64_t fill_normal() {
    std::random_device rd;
    const std::uint64_t seed = (std::uint64_t(rd()) << 32) ^ rd();
    fill_normal(seed);
    return seed;
  }
  void fill(const std::vector<double>& values) {
    if (static_cast<std::int64_t>(values.size()) != numel()) throw std::invalid_argument("HostTensor::fill: size");
    for (std::int64_t n = 0; n < numel(); ++n) set(n, values[n]);
  }
  std::vector<double> to_vector() const { return testing::to_vector(view()); }

  // Every view element becomes NaN (int32: INT32_MIN); every other byte the canary.
  void poison() {
    for (std::size_t i = 0; i < storage_.size(); ++i) {
      if (!in_view_[i]) storage_[i] = kCanary;
    }
    for (std::int64_t n = 0; n < numel(); ++n) {
      if (view_.dtype == DType::int32) {
        set(n, std::numeric_limits<std::int32_t>::min());
      } else {
        set(n, std::numeric_limits<double>::quiet_NaN());
      }
    }
  }
  // True when no byte outside the view (guard band, layout padding) was written.
  bool guard_intact() const {
    for (std::size_t i = 0; i < storage_.size(); ++i) {
      if (!in_view_[i] && storage_[i] != kCanary) return false;
    }
    return true;
  }
  // The raw bytes (view, padding and guard): compare snapshots to prove a tensor was not written.
  const std::vector<unsigned char>& bytes() const { return storage_; }

 private:
  void* ptr(std::int64_t n) const {
    if (n < 0 || n >= numel()) throw std::out_of_range("HostTensor: element index");
    return static_cast<unsigned char*>(view().data) +
           static_cast<std::size_t>(logical_to_offset(view_, n)) * element_size(view_.dtype);
  }

  TensorView view_{};
  std::int64_t guard_ = 0;
  std::vector<unsigned char> storage_;
  std::vector<unsigned char> in_view_;
};

// An int32 [B + 1] cu_seqlens tensor holding the prefix sums of `lengths` (starting at 0).
inline HostTensor make_cu_seqlens(const std::vector<std::int64_t>& lengths) {
  HostTensor t(DType::int32, {static_cast<std::int64_t>(lengths.size()) + 1});
  std::int64_t acc = 0;
  t.set(0, 0);
  for (std::size_t b = 0; b < lengths.size(); ++b) {
    acc += lengths[b];
    t.set(static_cast<std::int64_t>(b) + 1, static_cast<double>(acc));
  }
  return t;
}

}  // namespace flashsigmoid::testing
