// Global positions (Options::positions): the score transform's masks and block ranges against the
// rule written out from positions, the float64 reference's blocks against the whole sequence (the
// identity context parallelism rests on: sigmoid outputs over disjoint key blocks add), and the
// validation of the option. The CPU kernels with positions are in cpu_accuracy_test.cpp (pos_*).
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <functional>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "common/score_transform.hpp"
#include "problem.hpp"
#include "reference/reference.hpp"

namespace fs_test {
namespace {

namespace ref = flashsigmoid::reference;
using flashsigmoid::detail::AttnParams;
using flashsigmoid::detail::ScoreTransform;
using flashsigmoid::testing::rel_l2;
using Pos = Options::PositionOffsets;

std::int64_t pick(std::mt19937_64& rng, std::int64_t lo, std::int64_t hi) {
  return std::uniform_int_distribution<std::int64_t>(lo, hi)(rng);
}

// Visibility written from the option's definition: query position qp = q + i, key position
// kp = k + j; causal keeps kp <= qp, the window qp - left <= kp <= qp + right.
struct PositionRule {
  Pos pos;
  bool causal;
  std::int64_t left, right;
  bool visible(std::int64_t i, std::int64_t j) const {
    const std::int64_t qp = pos.q + i, kp = pos.k + j;
    return !(causal && kp > qp) && !(left >= 0 && kp < qp - left) && !(right >= 0 && kp > qp + right);
  }
};

// make_score_transform (the one place every backend builds its transform) with positions: the
// element mask, the forward's key range per query block, the backward's query blocks per key
// block and last_key_block, all against PositionRule.
TEST(Positions, ScoreTransformMatchesPositionRule) {
  std::mt19937_64 rng(20261130);
  int visible = 0, hidden = 0, skipped_blocks = 0;
  for (int trial = 0; trial < 300; ++trial) {
    AttnParams p;
    p.batch = 1;
    p.heads_q = p.heads_kv = 1;
    p.seqlen_q = pick(rng, 1, 400);
    p.seqlen_k = pick(rng, 1, 400);
    const std::int64_t bounds[] = {-1, 0, pick(rng, 1, 40), pick(rng, 41, 500)};
    p.causal = pick(rng, 0, 1) == 1;
    p.window_left = bounds[pick(rng, 0, 3)];
    p.window_right = p.causal ? -1 : bounds[pick(rng, 0, 3)];
    const PositionRule rule{Pos{pick(rng, 0, 800), pick(rng, 0, 800)}, p.causal, p.window_left, p.window_right};
    p.global_positions = true;
    p.position_diag = rule.pos.q - rule.pos.k;
    const auto s = flashsigmoid::detail::seq_info(p, 0);
    const ScoreTransform st = flashsigmoid::detail::make_score_transform(p, s, 0, 0);
    const std::int64_t Nq = p.seqlen_q, Nk = p.seqlen_k;
    const int bm = pick(rng, 0, 1) ? 64 : 128, bn = pick(rng, 0, 1) ? 64 : 128;
    const std::int64_t m_blocks = (Nq + bm - 1) / bm, n_blocks = (Nk + bn - 1) / bn;
    std::vector<std::vector<bool>> sees(m_blocks, std::vector<bool>(n_blocks, false));
    for (std::int64_t i = 0; i < Nq; ++i) {
      for (std::int64_t j = 0; j < Nk; ++j) {
        const bool vis = rule.visible(i, j);
        ASSERT_EQ(!st.masked(i, j), vis) << "trial " << trial << " i " << i << " j " << j;
        (vis ? visible : hidden) += 1;
        if (vis) sees[i / bm][j / bn] = true;
      }
    }
    for (std::int64_t m = 0; m < m_blocks; ++m) {
      const std::int64_t i0 = m * bm, i1 = std::min(Nq, i0 + bm);
      // The forward walks key blocks key_begin(i0) / bn .. ceil(key_end(i1) / bn): exactly the ones seen.
      const std::int64_t lo = st.key_begin(i0), hi = st.key_end(i1);
      for (std::int64_t n = 0; n < n_blocks; ++n) {
        const bool walked = hi > lo && n >= lo / bn && n < (hi + bn - 1) / bn;
        ASSERT_EQ(walked, bool(sees[m][n])) << "trial " << trial << " query block " << m << " key block " << n;
        if (!walked) ++skipped_blocks;
      }
      std::int64_t last = -1;
      for (std::int64_t n = 0; n < n_blocks; ++n) last = sees[m][n] ? n : last;
      if (last >= 0) ASSERT_EQ(st.last_key_block(i1, bn), last) << "trial " << trial << " query block " << m;
    }
    for (std::int64_t n = 0; n < n_blocks; ++n) {
      std::int64_t m_begin = 0, m_count = 0;
      st.query_blocks(n * bn, std::min(Nk, (n + 1) * bn), Nq, bm, m_begin, m_count);
      for (std::int64_t m = 0; m < m_blocks; ++m) {
        ASSERT_EQ(m >= m_begin && m < m_begin + m_count, bool(sees[m][n]))
            << "trial " << trial << " key block " << n << " query block " << m;
      }
    }
  }
  EXPECT_GT(visible, 100000);
  EXPECT_GT(hidden, 100000);
  EXPECT_GT(skipped_blocks, 100);
}

// Without positions the transform is the bottom-right rule, which positions (Nk - Nq, 0) restate.
TEST(Positions, BottomRightIsOffsetsNkMinusNq) {
  AttnParams p;
  p.seqlen_q = 50;
  p.seqlen_k = 80;
  p.causal = true;
  p.window_left = 7;
  const auto s = flashsigmoid::detail::seq_info(p, 0);
  const ScoreTransform plain = flashsigmoid::detail::make_score_transform(p, s, 0, 0);
  p.global_positions = true;
  p.position_diag = 30;
  const ScoreTransform pos = flashsigmoid::detail::make_score_transform(p, s, 0, 0);
  EXPECT_EQ(plain.diag, 30);
  EXPECT_EQ(pos.diag, plain.diag);
  p.position_diag = -5;
  EXPECT_EQ(flashsigmoid::detail::make_score_transform(p, s, 0, 0).diag, -5);
}

// Splits one sequence of N tokens into query blocks and key blocks at random cuts, runs the
// reference on every (query block, key block) pair with the blocks' positions and a scalar bias,
// and adds: the outputs of a query block over all key blocks, its dQ likewise, and dK / dV of a
// key block over all query blocks must equal the whole sequence's (float64: to rounding).
TEST(Positions, ReferenceBlocksAddUpToTheWholeSequence) {
  const std::uint64_t seed = test_seed();
  SCOPED_TRACE("FLASHSIGMOID_TEST_SEED=" + std::to_string(seed));
  std::mt19937_64 rng(seed);
  struct M {
    bool causal;
    std::int64_t left, right;
    Alibi alibi;
  };
  for (const M m : {M{true, -1, -1, Alibi::none}, M{true, 9, -1, Alibi::per_head}, M{false, 6, 4, Alibi::per_batch},
                    M{false, -1, -1, Alibi::per_head}}) {
    const std::int64_t N = 37, Hq = 2, Hkv = 1, D = 8;
    SCOPED_TRACE("causal " + std::to_string(m.causal) + " window (" + std::to_string(m.left) + ", " +
                 std::to_string(m.right) + ") alibi " + std::to_string(int(m.alibi)));
    Case c{.name = "whole", .dtype = DType::float64, .B = 2, .Nq = N, .Nk = N, .Hq = Hq, .Hkv = Hkv, .D = D,
           .causal = m.causal, .window_left = m.left, .window_right = m.right, .bias_mode = BiasMode::scalar,
           .bias_value = -2.0f, .alibi = m.alibi};
    Problem whole = make_problem(c, seed);
    const auto out = ref::forward(whole.q, whole.k, whole.v, whole.o);
    const auto grads = ref::backward(whole.q, whole.k, whole.v, whole.dout, whole.o);

    // Random cuts, separately for queries and keys: blocks [cut[b], cut[b + 1]).
    auto cuts = [&] {
      std::vector<std::int64_t> c = {0, pick(rng, 1, 12), pick(rng, 13, 24), N};
      return c;
    };
    const auto qc = cuts(), kc = cuts();
    // Rows [r0, r1) of a [B, N, H, D] tensor as a new [B, r1 - r0, H, D] float64 tensor, and back.
    auto rows = [&](const HostTensor& t, std::int64_t H, std::int64_t r0, std::int64_t r1) {
      HostTensor x(DType::float64, {c.B, r1 - r0, H, D});
      for (std::int64_t b = 0; b < c.B; ++b)
        for (std::int64_t r = r0; r < r1; ++r)
          for (std::int64_t e = 0; e < H * D; ++e) x.set(((b * (r1 - r0)) + r - r0) * H * D + e, t.get((b * N + r) * H * D + e));
      return x;
    };
    std::vector<double> sum_out(out.size(), 0.0), sum_dq(out.size(), 0.0), sum_dk(grads.dk.size(), 0.0),
        sum_dv(grads.dv.size(), 0.0);
    auto add_rows = [&](std::vector<double>& dst, const std::vector<double>& src, std::int64_t H, std::int64_t r0,
                        std::int64_t r1) {
      for (std::int64_t b = 0; b < c.B; ++b)
        for (std::int64_t r = r0; r < r1; ++r)
          for (std::int64_t e = 0; e < H * D; ++e) dst[(b * N + r) * H * D + e] += src[((b * (r1 - r0)) + r - r0) * H * D + e];
    };
    for (std::size_t a = 0; a + 1 < qc.size(); ++a) {
      for (std::size_t b = 0; b + 1 < kc.size(); ++b) {
        const HostTensor q = rows(whole.q, Hq, qc[a], qc[a + 1]), dout = rows(whole.dout, Hq, qc[a], qc[a + 1]);
        const HostTensor k = rows(whole.k, Hkv, kc[b], kc[b + 1]), v = rows(whole.v, Hkv, kc[b], kc[b + 1]);
        Options o = whole.o;
        o.positions = Pos{qc[a], kc[b]};
        add_rows(sum_out, ref::forward(q, k, v, o), Hq, qc[a], qc[a + 1]);
        const auto g = ref::backward(q, k, v, dout, o);
        add_rows(sum_dq, g.dq, Hq, qc[a], qc[a + 1]);
        add_rows(sum_dk, g.dk, Hkv, kc[b], kc[b + 1]);
        add_rows(sum_dv, g.dv, Hkv, kc[b], kc[b + 1]);
      }
    }
    EXPECT_LE(rel_l2(out, sum_out), 1e-13);
    EXPECT_LE(rel_l2(grads.dq, sum_dq), 1e-13);
    EXPECT_LE(rel_l2(grads.dk, sum_dk), 1e-13);
    EXPECT_LE(rel_l2(grads.dv, sum_dv), 1e-13);
  }
}

// The CPU backend obeys the same identity (a ring step's arithmetic): here in float32 against the
// whole sequence's float64 reference.
TEST(Positions, CpuBlocksAddUpToTheWholeSequence) {
  const std::uint64_t seed = test_seed();
  SCOPED_TRACE("FLASHSIGMOID_TEST_SEED=" + std::to_string(seed));
  const std::int64_t N = 150, H = 2, D = 32, cut = 70;
  Case c{.name = "whole", .dtype = DType::float32, .B = 1, .Nq = N, .Nk = N, .Hq = H, .Hkv = H, .D = D,
         .causal = true, .bias_mode = BiasMode::scalar, .bias_value = -3.0f, .alibi = Alibi::per_head};
  Problem whole = make_problem(c, seed);
  const auto expected = ref::forward(whole.q, whole.k, whole.v, whole.o);
  auto rows = [&](const HostTensor& t, std::int64_t r0, std::int64_t r1) {
    HostTensor x(DType::float32, {1, r1 - r0, H, D});
    for (std::int64_t n = 0; n < (r1 - r0) * H * D; ++n) x.set(n, t.get(r0 * H * D + n));
    return x;
  };
  std::vector<double> got(expected.size(), 0.0);
  const std::pair<std::int64_t, std::int64_t> blocks[] = {{0, cut}, {cut, N}};
  for (const auto& [q0, q1] : blocks) {
    for (const auto& [k0, k1] : blocks) {
      const HostTensor q = rows(whole.q, q0, q1), k = rows(whole.k, k0, k1), v = rows(whole.v, k0, k1);
      HostTensor out(DType::float32, {1, q1 - q0, H, D});
      Options o = whole.o;
      o.positions = Pos{q0, k0};
      flashsigmoid::forward(q, k, v, out, o);
      const auto part = out.to_vector();
      for (std::size_t n = 0; n < part.size(); ++n) got[q0 * H * D + n] += part[n];
    }
  }
  EXPECT_LE(rel_l2(expected, got), 1e-5);
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const flashsigmoid::Error& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(Positions, InvalidOffsetsAreRejected) {
  HostTensor q(DType::float32, {1, 8, 2, 32}), k(DType::float32, {1, 10, 2, 32}), v(DType::float32, {1, 10, 2, 32});
  q.fill_normal(1);
  k.fill_normal(2);
  v.fill_normal(3);
  HostTensor out(DType::float32, {1, 8, 2, 32});
  const auto before = out.bytes();
  Options o;
  const std::int64_t max = std::int64_t(1) << 29;
  for (const Pos bad : {Pos{-1, 0}, Pos{0, -3}, Pos{max - 7, 0}, Pos{0, max - 9}}) {
    o.positions = bad;
    const std::string text = error_of([&] { flashsigmoid::forward(q, k, v, out, o); });
    EXPECT_NE(text.find("positions (q " + std::to_string(bad.q) + ", k " + std::to_string(bad.k) + ") are invalid"),
              std::string::npos)
        << text;
    EXPECT_NE(text.find("offsets >= 0 with q + Nq and k + Nk at most 2^29"), std::string::npos) << text;
    EXPECT_EQ(out.bytes(), before);  // nothing written
  }
  o.positions = Pos{max - 8, max - 10};  // the last positions accepted
  EXPECT_NO_THROW(flashsigmoid::forward(q, k, v, out, o));
}

}  // namespace
}  // namespace fs_test
