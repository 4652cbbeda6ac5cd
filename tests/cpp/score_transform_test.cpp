// The score transform's tile-local forms agree with its global rules: Tile::masked (what every
// kernel's partial blocks use) against ScoreTransform::masked plus the sequence end, and
// Tile::Window (the same mask seen from a thread's first register) against Tile::masked.
#include <gtest/gtest.h>

#include <cstdint>
#include <random>

#include "common/score_transform.hpp"

namespace {

using flashsigmoid::detail::ScoreTransform;

TEST(ScoreTransform, TileAndWindowMatchGlobalMask) {
  std::mt19937_64 rng(20261128);
  auto pick = [&](std::int64_t lo, std::int64_t hi) {
    return std::uniform_int_distribution<std::int64_t>(lo, hi)(rng);
  };
  int visible = 0, hidden = 0;
  for (int trial = 0; trial < 400; ++trial) {
    ScoreTransform st;
    st.len_k = pick(1, 3000);
    const std::int64_t len_q = pick(1, 3000);
    st.diag = st.len_k - len_q;
    // Unbounded, causal-like (0), a narrow or a wide window, on each side.
    const std::int64_t bounds[] = {-1, 0, pick(1, 40), pick(41, 5000)};
    st.left = bounds[pick(0, 3)];
    st.right = bounds[pick(0, 3)];
    const std::int64_t i0 = pick(0, len_q - 1), j0 = pick(0, st.len_k);
    const ScoreTransform::Tile tile = st.tile(i0, j0);
    const int r0 = int(pick(0, 127)), c0 = int(pick(0, 127));
    const ScoreTransform::Tile::Window win = tile.window(r0, c0);
    for (int k = 0; k < 200; ++k) {
      const int r = int(pick(0, 127)), c = int(pick(0, 127));
      const bool expected = j0 + c >= st.len_k || st.masked(i0 + r, j0 + c);
      ASSERT_EQ(tile.masked(r, c), expected) << "trial " << trial << " r " << r << " c " << c;
      ASSERT_EQ(win.masked(r - r0, c - c0), expected) << "trial " << trial << " r " << r << " c " << c;
      (expected ? hidden : visible) += 1;
    }
  }
  // Both outcomes occurred often, so the comparison above could have failed either way.
  EXPECT_GT(visible, 1000);
  EXPECT_GT(hidden, 1000);
}

// Far-away windows (bounds and offsets near the 2^30 clamp) keep the same answers.
TEST(ScoreTransform, WindowFarFromDiagonal) {
  ScoreTransform st;
  st.len_k = std::int64_t(1) << 40;
  st.diag = -(std::int64_t(1) << 35);
  st.left = std::int64_t(1) << 33;
  st.right = 3;
  const ScoreTransform::Tile tile = st.tile(0, 0);
  const ScoreTransform::Tile::Window win = tile.window(5, 7);
  for (int r = 0; r < 64; ++r) {
    for (int c = 0; c < 64; ++c) {
      ASSERT_EQ(win.masked(r - 5, c - 7), tile.masked(r, c)) << r << " " << c;
      ASSERT_EQ(tile.masked(r, c), st.masked(r, c)) << r << " " << c;
    }
  }
}

}  // namespace
