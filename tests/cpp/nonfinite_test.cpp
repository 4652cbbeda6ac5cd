// The CPU backend's promises about non-finite values and unused rows (README "Error model"):
//   - NaN in gives NaN out: a NaN in q, in a per-head bias or in an ALiBi slope reaches the outputs
//     and gradients it feeds, in every dtype;
//   - a masked entry contributes exactly nothing: a NaN / Inf in a key, value, query or dO row
//     leaves every output that cannot see it bitwise unchanged;
//   - varlen rows past cu_seqlens[B] of out, dq, dk and dv are written with zeros.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "cpu/tile_ops.hpp"
#include "problem.hpp"
#include "row_checks.hpp"

namespace fs_test {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();

struct Outputs {
  std::vector<double> out, dq, dk, dv, dbias;
};

Outputs run(const Problem& p) {
  HostTensor out = p.like_q(), dq = p.like_q(), dk = p.like_k(), dv = p.like_k();
  HostTensor dbias(DType::float32, {p.c.Hq});
  flashsigmoid::forward(p.q, p.k, p.v, out, p.o);
  flashsigmoid::Gradients g{dq, dk, dv, {}};
  if (p.c.bias_mode == BiasMode::per_head) g.dbias = dbias;
  flashsigmoid::backward(p.q, p.k, p.v, p.dout, g, p.o);
  Outputs r{out.to_vector(), dq.to_vector(), dk.to_vector(), dv.to_vector(), {}};
  if (p.c.bias_mode == BiasMode::per_head) r.dbias = dbias.to_vector();
  return r;
}

}  // namespace
}  // namespace fs_test

namespace flashsigmoid {
inline void PrintTo(DType t, std::ostream* os) { *os << to_string(t); }
}  // namespace flashsigmoid

namespace fs_test {
namespace {

class NonFinite : public ::testing::TestWithParam<DType> {
 protected:
  // One sequence of 100 queries and keys (two 64-row blocks), two query heads on one kv head.
  Case base() const {
    Case c;
    c.name = flashsigmoid::to_string(GetParam());
    c.dtype = GetParam();
    c.B = 1;
    c.Nq = c.Nk = 100;
    c.Hq = 2;
    c.Hkv = 1;
    c.D = 32;
    return c;
  }
};

TEST_P(NonFinite, NanInQueryGivesNanOut) {
  const Case c = base();
  const std::uint64_t seed = test_seed();
  SCOPED_TRACE(describe(c) + "; FLASHSIGMOID_TEST_SEED=" + std::to_string(seed));
  Problem p = make_problem(c, seed);
  p.q.set(at(c.Nq, c.Hq, c.D, 50, 1, 3), kNaN);  // one element of query row 50, head 1
  const Outputs r = run(p);
  for (std::int64_t i = 0; i < c.Nq; ++i) {
    for (std::int64_t h = 0; h < c.Hq; ++h) {
      const Row want = i == 50 && h == 1 ? Row::nan : Row::finite;
      EXPECT_EQ(row_kind(r.out, c.Nq, c.Hq, c.D, i, h), want) << "out row " << i << " head " << h;
      EXPECT_EQ(row_kind(r.dq, c.Nq, c.Hq, c.D, i, h), want) << "dq row " << i << " head " << h;
    }
  }
  // Query 50 sees every key (no mask), so every key's gradient takes a NaN from it.
  for (std::int64_t j = 0; j < c.Nk; ++j) {
    EXPECT_EQ(row_kind(r.dk, c.Nk, c.Hkv, c.D, j, 0), Row::nan) << "dk row " << j;
    EXPECT_EQ(row_kind(r.dv, c.Nk, c.Hkv, c.D, j, 0), Row::nan) << "dv row " << j;
  }
}

// A NaN per-head parameter (bias or ALiBi slope) of head 1 makes that head's outputs NaN and
// leaves head 0's finite.
void expect_head_one_nan(const Case& c, const Outputs& r) {
  for (std::int64_t i = 0; i < c.Nq; ++i) {
    EXPECT_EQ(row_kind(r.out, c.Nq, c.Hq, c.D, i, 0), Row::finite) << "out row " << i << " head 0";
    EXPECT_EQ(row_kind(r.out, c.Nq, c.Hq, c.D, i, 1), Row::nan) << "out row " << i << " head 1";
    EXPECT_EQ(row_kind(r.dq, c.Nq, c.Hq, c.D, i, 0), Row::finite) << "dq row " << i << " head 0";
    EXPECT_EQ(row_kind(r.dq, c.Nq, c.Hq, c.D, i, 1), Row::nan) << "dq row " << i << " head 1";
  }
  for (std::int64_t j = 0; j < c.Nk; ++j) {
    EXPECT_EQ(row_kind(r.dk, c.Nk, c.Hkv, c.D, j, 0), Row::nan) << "dk row " << j;
    EXPECT_EQ(row_kind(r.dv, c.Nk, c.Hkv, c.D, j, 0), Row::nan) << "dv row " << j;
  }
}

TEST_P(NonFinite, NanInPerHeadBiasGivesNanOut) {
  Case c = base();
  c.bias_mode = BiasMode::per_head;
  const std::uint64_t seed = test_seed();
  SCOPED_TRACE(describe(c) + "; FLASHSIGMOID_TEST_SEED=" + std::to_string(seed));
  Problem p = make_problem(c, seed);
  p.bias.set(1, kNaN);
  const Outputs r = run(p);
  expect_head_one_nan(c, r);
  EXPECT_TRUE(std::isfinite(r.dbias[0]));
  EXPECT_TRUE(std::isnan(r.dbias[1]));
}

TEST_P(NonFinite, NanInAlibiSlopeGivesNanOut) {
  Case c = base();
  c.causal = true;
  c.alibi = Alibi::per_head;
  const std::uint64_t seed = test_seed();
  SCOPED_TRACE(describe(c) + "; FLASHSIGMOID_TEST_SEED=" + std::to_string(seed));
  Problem p = make_problem(c, seed);
  p.alibi.set(1, kNaN);
  const Outputs r = run(p);
  expect_head_one_nan(c, r);
}

// Logits at or past the ends of the float range: a bias of +inf / 1e30 makes every weight 1 (the row
// is the sum of the value rows), -inf / -1e30 makes it 0 (the row is 0). The sigmoid's range
// handling (clamps, the AVX-512 vscalefps path's bounds) must not turn them into NaN (inf - inf).
TEST_P(NonFinite, SaturatedLogitsGiveOneOrZero) {
  Case c = base();
  c.bias_mode = BiasMode::per_head;
  for (const double big : {kInf, 1e30}) {
    const std::uint64_t seed = test_seed();
    SCOPED_TRACE(describe(c) + "; bias +-" + std::to_string(big) + "; FLASHSIGMOID_TEST_SEED=" + std::to_string(seed));
    Problem p = make_problem(c, seed);
    p.bias.set(0, big);
    p.bias.set(1, -big);
    HostTensor out = p.like_q();
    flashsigmoid::forward(p.q, p.k, p.v, out, p.o);
    const std::vector<double> o = out.to_vector(), v = p.v.to_vector();
    for (std::int64_t d = 0; d < c.D; ++d) {
      double sum = 0.0, mag = 0.0;
      for (std::int64_t j = 0; j < c.Nk; ++j) {
        sum += v[at(c.Nk, c.Hkv, c.D, j, 0, d)];
        mag += std::abs(v[at(c.Nk, c.Hkv, c.D, j, 0, d)]);
      }
      for (std::int64_t i = 0; i < c.Nq; ++i) {
        // The output's storage rounding: 2^-8 of the magnitude for bf16, far less for the others.
        EXPECT_NEAR(o[at(c.Nq, c.Hq, c.D, i, 0, d)], sum, 4e-3 * mag) << "row " << i << " head 0 dim " << d;
        // The fp32 sigmoid floors at about 1e-38 (its exp / exponent range is clamped): zero next to
        // any data, and never NaN.
        EXPECT_LE(std::abs(o[at(c.Nq, c.Hq, c.D, i, 1, d)]), 1e-30 * mag) << "row " << i << " head 1 dim " << d;
      }
    }
  }
}

// Causal: query i sees keys j <= i. A NaN value row 40 and an infinite key row 41 (inside the
// diagonal block of queries 0..63, which is computed tile by tile) must not reach queries 0..39.
TEST_P(NonFinite, MaskedKeyAndValueRowsContributeNothing) {
  Case c = base();
  c.causal = true;
  const std::uint64_t seed = test_seed();
  SCOPED_TRACE(describe(c) + "; FLASHSIGMOID_TEST_SEED=" + std::to_string(seed));
  const Outputs clean = run(make_problem(c, seed));
  Problem p = make_problem(c, seed);
  set_row(p.v, c.Nk, c.Hkv, c.D, 40, 0, kNaN);
  set_row(p.k, c.Nk, c.Hkv, c.D, 41, 0, kInf);
  const Outputs r = run(p);
  for (std::int64_t i = 0; i < c.Nq; ++i) {
    for (std::int64_t h = 0; h < c.Hq; ++h) {
      if (i < 40) {
        EXPECT_TRUE(row_equal(r.out, clean.out, c.Nq, c.Hq, c.D, i, h, NanEqual::yes))
            << "out row " << i << " head " << h;
        EXPECT_TRUE(row_equal(r.dq, clean.dq, c.Nq, c.Hq, c.D, i, h, NanEqual::yes)) << "dq row " << i << " head " << h;
      } else {
        // Rows that see the non-finite key: NaN in, NaN out.
        EXPECT_EQ(row_kind(r.out, c.Nq, c.Hq, c.D, i, h), Row::nan) << "out row " << i << " head " << h;
      }
    }
  }
}

// Sliding window (5, 0): key j is seen by queries j..j+5. A NaN query row 50 (head 0) and an
// infinite dO row 60 (head 1) must not reach the gradients of keys outside 45..50 and 55..60.
TEST_P(NonFinite, MaskedQueryAndGradientRowsContributeNothing) {
  Case c = base();
  c.window_left = 5;
  c.window_right = 0;
  c.bias_mode = BiasMode::per_head;
  const std::uint64_t seed = test_seed();
  SCOPED_TRACE(describe(c) + "; FLASHSIGMOID_TEST_SEED=" + std::to_string(seed));
  const Outputs clean = run(make_problem(c, seed));
  Problem p = make_problem(c, seed);
  set_row(p.q, c.Nq, c.Hq, c.D, 50, 0, kNaN);
  set_row(p.dout, c.Nq, c.Hq, c.D, 60, 1, kInf);
  const Outputs r = run(p);
  for (std::int64_t j = 0; j < c.Nk; ++j) {
    const bool sees_bad_row = (j >= 45 && j <= 50) || (j >= 55 && j <= 60);
    if (sees_bad_row) {
      EXPECT_EQ(row_kind(r.dk, c.Nk, c.Hkv, c.D, j, 0), Row::nan) << "dk row " << j;
    } else {
      EXPECT_TRUE(row_equal(r.dk, clean.dk, c.Nk, c.Hkv, c.D, j, 0, NanEqual::yes)) << "dk row " << j;
      EXPECT_TRUE(row_equal(r.dv, clean.dv, c.Nk, c.Hkv, c.D, j, 0, NanEqual::yes)) << "dv row " << j;
    }
  }
  for (std::int64_t i = 0; i < c.Nq; ++i) {
    for (std::int64_t h = 0; h < c.Hq; ++h) {
      const bool bad = (i == 50 && h == 0) || (i == 60 && h == 1);
      if (!bad) {
        EXPECT_TRUE(row_equal(r.out, clean.out, c.Nq, c.Hq, c.D, i, h, NanEqual::yes))
            << "out row " << i << " head " << h;
        EXPECT_TRUE(row_equal(r.dq, clean.dq, c.Nq, c.Hq, c.D, i, h, NanEqual::yes)) << "dq row " << i << " head " << h;
      }
    }
  }
  EXPECT_TRUE(std::isnan(r.dbias[0]));
  EXPECT_TRUE(std::isnan(r.dbias[1]));
}

// Packed tensors with rows past cu_seqlens[B] (allowed): out, dq, dk and dv get zeros there, and
// the inputs' rows there (NaN here) are never read.
TEST_P(NonFinite, VarlenRowsPastTheLastSequenceAreZero) {
  const DType t = GetParam();
  const std::int64_t H = 2, Hkv = 1, D = 32, rows_q = 38, rows_k = 29, extra_q = 7, extra_k = 3;
  const std::uint64_t seed = test_seed();
  SCOPED_TRACE(std::string(flashsigmoid::to_string(t)) + "; FLASHSIGMOID_TEST_SEED=" + std::to_string(seed));
  HostTensor q(t, {rows_q + extra_q, H, D}), dout(t, {rows_q + extra_q, H, D});
  HostTensor k(t, {rows_k + extra_k, Hkv, D}), v(t, {rows_k + extra_k, Hkv, D});
  q.fill_normal(seed);
  dout.fill_normal(seed + 1);
  k.fill_normal(seed + 2);
  v.fill_normal(seed + 3);
  for (std::int64_t n = rows_q * H * D; n < q.numel(); ++n) q.set(n, kNaN), dout.set(n, kNaN);
  for (std::int64_t n = rows_k * Hkv * D; n < k.numel(); ++n) k.set(n, kNaN), v.set(n, kNaN);
  const HostTensor cu_q = flashsigmoid::testing::make_cu_seqlens({5, 33});
  const HostTensor cu_k = flashsigmoid::testing::make_cu_seqlens({9, 20});
  Options o;
  o.cu_seqlens_q = cu_q;
  o.cu_seqlens_k = cu_k;
  o.max_seqlen_q = 33;
  o.max_seqlen_k = 20;
  o.causal = true;
  HostTensor out(t, {rows_q + extra_q, H, D}), dq(t, {rows_q + extra_q, H, D});
  HostTensor dk(t, {rows_k + extra_k, Hkv, D}), dv(t, {rows_k + extra_k, Hkv, D});
  flashsigmoid::forward(q, k, v, out, o);
  flashsigmoid::backward(q, k, v, dout, {dq, dk, dv, {}}, o);
  expect_zero_past("out", out.to_vector(), rows_q * H * D);
  expect_zero_past("dq", dq.to_vector(), rows_q * H * D);
  expect_zero_past("dk", dk.to_vector(), rows_k * Hkv * D);
  expect_zero_past("dv", dv.to_vector(), rows_k * Hkv * D);
}

INSTANTIATE_TEST_SUITE_P(Dtypes, NonFinite,
                         ::testing::Values(DType::float32, DType::bfloat16, DType::float16, DType::float64),
                         [](const ::testing::TestParamInfo<DType>& info) {
                           return std::string(flashsigmoid::to_string(info.param));
                         });

// The CPU sigmoid itself: NaN stays NaN (its exp clamps the argument), the limits hold, and
// the fast exp keeps its accuracy over the whole clamped range.
TEST(CpuSigmoid, NanAndLimits) {
  using flashsigmoid::detail::cpu::sigmoid;
  EXPECT_TRUE(std::isnan(sigmoid(std::numeric_limits<float>::quiet_NaN())));
  EXPECT_TRUE(std::isnan(sigmoid(-std::numeric_limits<float>::quiet_NaN())));
  EXPECT_EQ(sigmoid(std::numeric_limits<float>::infinity()), 1.0f);
  EXPECT_GE(sigmoid(-std::numeric_limits<float>::infinity()), 0.0f);
  EXPECT_LT(sigmoid(-std::numeric_limits<float>::infinity()), 1e-37f);  // the clamp: 1 / (1 + e^88)
  EXPECT_TRUE(std::isnan(sigmoid(std::numeric_limits<double>::quiet_NaN())));
}

TEST(CpuSigmoid, FastExpAccuracy) {
  using flashsigmoid::detail::cpu::exp_fast;
  double worst = 0.0;
  for (int n = -870000; n <= 880000; ++n) {
    const float x = static_cast<float>(n) * 1e-4f;
    const double exact = std::exp(static_cast<double>(x));
    worst = std::max(worst, std::abs(exp_fast(x) - exact) / exact);
  }
  EXPECT_LT(worst, 1e-6);
}

}  // namespace
}  // namespace fs_test
