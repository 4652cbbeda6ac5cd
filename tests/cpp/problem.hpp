// A random attention problem (inputs, options and the tensors they point to) for the tests.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "flashsigmoid/flashsigmoid.hpp"
#include "reference/testing.hpp"

namespace fs_test {

using flashsigmoid::BiasMode;
using flashsigmoid::DType;
using flashsigmoid::Options;
using flashsigmoid::TensorView;
using flashsigmoid::testing::HostTensor;
using flashsigmoid::testing::Layout;

enum class Alibi { none, per_head, per_batch };

struct Case {
  std::string name;
  DType dtype = DType::float32;
  std::int64_t B = 2, Nq = 33, Nk = 33, Hq = 2, Hkv = 2, D = 64;
  std::vector<std::int64_t> lens_q{}, lens_k{};  // varlen when non-empty (then B, Nq, Nk are ignored)
  bool causal = false;
  std::int64_t window_left = -1, window_right = -1;
  BiasMode bias_mode = BiasMode::neg_log_seqlen_k;
  float bias_value = 0.0f;
  Alibi alibi = Alibi::none;
  std::optional<float> scale{};
  Layout layout = Layout::contiguous;
  std::optional<Options::PositionOffsets> positions{};  // global positions (q, k offsets)

  bool varlen() const { return !lens_q.empty(); }
  std::int64_t batch() const { return varlen() ? static_cast<std::int64_t>(lens_q.size()) : B; }
};

inline std::int64_t sum(const std::vector<std::int64_t>& v) {
  std::int64_t s = 0;
  for (auto x : v) s += x;
  return s;
}
inline std::int64_t max_of(const std::vector<std::int64_t>& v) {
  std::int64_t m = 0;
  for (auto x : v) m = std::max(m, x);
  return m;
}

// Seed of this test's random inputs: FLASHSIGMOID_TEST_SEED when set (to reproduce a failure),
// else fresh from std::random_device. Every test prints it on failure through SCOPED_TRACE.
inline std::uint64_t test_seed() {
  if (const char* s = std::getenv("FLASHSIGMOID_TEST_SEED")) return std::strtoull(s, nullptr, 0);
  std::random_device rd;
  return (std::uint64_t(rd()) << 32) ^ rd();
}

struct Problem {
  Case c;
  HostTensor q, k, v, dout, cu_q, cu_k, bias, alibi;
  Options o;

  // Shape of q/out (q_side) or k/v in this case's layout.
  std::vector<std::int64_t> shape(bool q_side) const {
    const std::int64_t H = q_side ? c.Hq : c.Hkv;
    if (c.varlen()) return {sum(q_side ? c.lens_q : c.lens_k), H, c.D};
    return {c.B, q_side ? c.Nq : c.Nk, H, c.D};
  }
  HostTensor like_q() const { return HostTensor(c.dtype, shape(true), c.layout); }
  HostTensor like_k() const { return HostTensor(c.dtype, shape(false), c.layout); }
};

inline Problem make_problem(const Case& c, std::uint64_t seed) {
  Problem p;
  p.c = c;
  p.q = p.like_q();
  p.k = p.like_k();
  p.v = p.like_k();
  p.dout = p.like_q();
  p.q.fill_normal(seed + 1);
  p.k.fill_normal(seed + 2);
  p.v.fill_normal(seed + 3);
  p.dout.fill_normal(seed + 4);
  std::mt19937_64 gen(seed + 5);
  Options& o = p.o;
  if (c.varlen()) {
    p.cu_q = flashsigmoid::testing::make_cu_seqlens(c.lens_q);
    p.cu_k = flashsigmoid::testing::make_cu_seqlens(c.lens_k);
    o.cu_seqlens_q = p.cu_q;
    o.cu_seqlens_k = p.cu_k;
    o.max_seqlen_q = max_of(c.lens_q);
    o.max_seqlen_k = max_of(c.lens_k);
  }
  o.scale = c.scale;
  o.bias_mode = c.bias_mode;
  o.bias_value = c.bias_value;
  if (c.bias_mode == BiasMode::per_head) {
    // Around the paper's -log(n), but different per head.
    const double n = static_cast<double>(c.varlen() ? std::max<std::int64_t>(1, max_of(c.lens_k)) : std::max<std::int64_t>(1, c.Nk));
    std::normal_distribution<double> dist(-std::log(n), 1.0);
    p.bias = HostTensor(DType::float32, {c.Hq});
    for (std::int64_t h = 0; h < c.Hq; ++h) p.bias.set(h, dist(gen));
    o.bias = p.bias;
  }
  if (c.alibi != Alibi::none) {
    std::uniform_real_distribution<double> dist(0.01, 0.5);
    p.alibi = c.alibi == Alibi::per_head ? HostTensor(DType::float32, {c.Hq})
                                         : HostTensor(DType::float32, {c.batch(), c.Hq});
    for (std::int64_t n = 0; n < p.alibi.numel(); ++n) p.alibi.set(n, dist(gen));
    o.alibi_slopes = p.alibi;
  }
  o.causal = c.causal;
  o.window_left = c.window_left;
  o.window_right = c.window_right;
  o.positions = c.positions;
  return p;
}

// GoogleTest prints a parameter with this (instead of a byte dump); describe() is in each trace.
inline void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

inline std::string describe(const Case& c) {
  std::ostringstream os;
  os << c.name << ": dtype " << flashsigmoid::to_string(c.dtype) << ", D " << c.D << ", Hq " << c.Hq << ", Hkv "
     << c.Hkv;
  if (c.varlen()) {
    os << ", varlen q lens {";
    for (auto x : c.lens_q) os << x << ' ';
    os << "} k lens {";
    for (auto x : c.lens_k) os << x << ' ';
    os << "}";
  } else {
    os << ", B " << c.B << ", Nq " << c.Nq << ", Nk " << c.Nk;
  }
  os << ", causal " << c.causal << ", window (" << c.window_left << ", " << c.window_right << "), bias_mode "
     << static_cast<int>(c.bias_mode) << ", alibi " << static_cast<int>(c.alibi) << ", layout "
     << flashsigmoid::testing::to_string(c.layout);
  if (c.positions) os << ", positions (q " << c.positions->q << ", k " << c.positions->k << ")";
  return os.str();
}

}  // namespace fs_test
