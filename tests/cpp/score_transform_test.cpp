// The score transform's tile-local forms agree with its global rules: Tile::masked (what every
// kernel's partial blocks use) against ScoreTransform::masked plus the sequence end, and
// Tile::Window (the same mask seen from a thread's first register) against Tile::masked.
#include <gtest/gtest.h>

#include <cstdint>
#include <algorithm>
#include <random>
#include <vector>

#include "common/score_transform.hpp"

namespace {

using flashsigmoid::detail::ScoreTransform;

// Random masks: both lengths in [1, max_len]; each side unbounded, causal-like (0), a narrow or a
// wide window.
struct RandomMasks {
  std::mt19937_64 rng;
  explicit RandomMasks(std::uint64_t seed) : rng(seed) {}
  std::int64_t pick(std::int64_t lo, std::int64_t hi) {
    return std::uniform_int_distribution<std::int64_t>(lo, hi)(rng);
  }
  ScoreTransform next(std::int64_t max_len, std::int64_t max_wide, std::int64_t& len_q) {
    ScoreTransform st;
    st.len_k = pick(1, max_len);
    len_q = pick(1, max_len);
    st.diag = st.len_k - len_q;
    const std::int64_t bounds[] = {-1, 0, pick(1, 40), pick(41, max_wide)};
    st.left = bounds[pick(0, 3)];
    st.right = bounds[pick(0, 3)];
    return st;
  }
};

TEST(ScoreTransform, TileAndWindowMatchGlobalMask) {
  RandomMasks masks(20261128);
  auto pick = [&](std::int64_t lo, std::int64_t hi) { return masks.pick(lo, hi); };
  int visible = 0, hidden = 0;
  for (int trial = 0; trial < 400; ++trial) {
    std::int64_t len_q = 0;
    const ScoreTransform st = masks.next(3000, 5000, len_q);
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

// The block ranges the kernels walk (query_blocks, key_blocks, last_key_block) against element-wise
// visibility: a key block's query blocks are exactly those with a visible element in the block
// pair, and the key blocks that see a query block are contiguous up to last_key_block (the Hopper
// backward's deterministic mode orders its dQ adds by the distance from that end; a gap or a wrong
// end would leave a key block waiting forever).
TEST(ScoreTransform, BlockRangesMatchElementVisibility) {
  RandomMasks masks(20261129);
  int pairs_seen = 0, pairs_unseen = 0;
  for (int trial = 0; trial < 300; ++trial) {
    std::int64_t len_q = 0;
    const ScoreTransform st = masks.next(700, 900, len_q);
    const int bm = masks.pick(0, 1) ? 64 : 128, bn = 128;
    const std::int64_t m_blocks = (len_q + bm - 1) / bm, n_blocks = (st.len_k + bn - 1) / bn;
    // sees[m][n]: some query row of block m (below len_q) sees some key of block n (below len_k).
    std::vector<std::vector<bool>> sees(m_blocks, std::vector<bool>(n_blocks, false));
    for (std::int64_t i = 0; i < len_q; ++i) {
      const std::int64_t lo = st.left < 0 ? 0 : std::max<std::int64_t>(0, i + st.diag - st.left);
      const std::int64_t hi = st.right < 0 ? st.len_k - 1 : std::min(st.len_k - 1, i + st.diag + st.right);
      for (std::int64_t n = lo / bn; lo <= hi && n <= hi / bn; ++n) sees[i / bm][n] = true;
    }
    for (std::int64_t n = 0; n < n_blocks; ++n) {
      const std::int64_t j0 = n * bn, j1 = std::min(st.len_k, j0 + bn);
      std::int64_t m_begin = 0, m_count = 0;
      st.query_blocks(j0, j1, len_q, bm, m_begin, m_count);
      for (std::int64_t m = 0; m < m_blocks; ++m) {
        const bool walked = m >= m_begin && m < m_begin + m_count;
        ASSERT_EQ(walked, bool(sees[m][n])) << "trial " << trial << " key block " << n << " query block " << m;
        (walked ? pairs_seen : pairs_unseen) += 1;
      }
    }
    for (std::int64_t m = 0; m < m_blocks; ++m) {
      std::int64_t first = -1, last = -1;
      for (std::int64_t n = 0; n < n_blocks; ++n) {
        if (!sees[m][n]) continue;
        if (first < 0) first = n;
        ASSERT_TRUE(last < 0 || last == n - 1) << "trial " << trial << ": query block " << m << " skips key blocks";
        last = n;
      }
      if (first >= 0) {
        ASSERT_EQ(st.last_key_block(std::min(len_q, (m + 1) * bm), bn), last)
            << "trial " << trial << " query block " << m;
      }
      int n_begin = 0, n_count = 0;
      st.key_blocks(m * bm, std::min(len_q, (m + 1) * bm), bn, n_begin, n_count);
      ASSERT_EQ(n_count, first < 0 ? 0 : last - first + 1) << "trial " << trial << " query block " << m;
      if (first >= 0) ASSERT_EQ(n_begin, first) << "trial " << trial << " query block " << m;
    }
  }
  EXPECT_GT(pairs_seen, 500);
  EXPECT_GT(pairs_unseen, 500);
}

}  // namespace
