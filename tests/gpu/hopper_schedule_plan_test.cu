// Host-only checks (no GPU needed) of the Hopper forward's launch plan and tile order
// (src/cuda/hopper/tile_scheduler.cuh): plan_forward's grid and L2 group choices, and that every
// schedule's tile -> (query block, head, batch) map visits each tile exactly once, causal runs
// longest-first inside each group. Built in every CUDA build (the header is plain C++ on the host).
#include <gtest/gtest.h>

#include <cstdint>
#include <vector>

#include "cuda/hopper/tile_scheduler.cuh"

namespace {

using flashsigmoid::cuda::hopper::FwdLaunchPlan;
using flashsigmoid::cuda::hopper::FwdProblem;
using flashsigmoid::cuda::hopper::plan_forward;
using flashsigmoid::cuda::hopper::Schedule;
using flashsigmoid::cuda::hopper::TileCoord;
using flashsigmoid::cuda::hopper::TileScheduler;

constexpr int kSms = 132;
constexpr std::int64_t kL2 = 50 * 1024 * 1024;  // H200: 50 MB

// SPEC's shapes: B N = 16384, Hq D = 2048, bf16; 128-row query blocks.
FwdProblem spec_problem(int D, std::int64_t N, bool causal) {
  FwdProblem p;
  p.m_blocks = (N + 127) / 128;
  p.heads = 2048 / D;
  p.batch = 16384 / N;
  p.causal = causal;
  p.seqlen_k = N;
  p.mean_keys = N;
  p.kv_bytes_per_key = 2 * D * 2;
  p.group_size = 1;
  return p;
}

TEST(HopperSchedulePlan, PersistentGridIsOneCtaPerSm) {
  const FwdLaunchPlan plan = plan_forward(spec_problem(128, 4096, false), kSms, kL2, Schedule{});
  EXPECT_EQ(plan.grid, kSms);  // 32 x 16 x 4 = 2048 tiles
  EXPECT_EQ(plan.sched.num_tiles(), 2048);
  EXPECT_EQ(plan.sched.group, 0);  // non-causal: no grouping
  Schedule per_tile;
  per_tile.persistent = false;
  EXPECT_EQ(plan_forward(spec_problem(128, 4096, false), kSms, kL2, per_tile).grid, 2048);
}

TEST(HopperSchedulePlan, FewTilesGetOneCtaEach) {
  FwdProblem p = spec_problem(128, 1024, false);
  p.batch = 1;
  p.heads = 2;  // 8 x 2 = 16 tiles
  EXPECT_EQ(plan_forward(p, kSms, kL2, Schedule{}).grid, 16);
}

TEST(HopperSchedulePlan, LongCausalRunsOneCtaPerTile) {
  // 8k keys and more: the hardware's dynamic order measured faster than the static rounds.
  EXPECT_EQ(plan_forward(spec_problem(128, 8192, true), kSms, kL2, Schedule{}).grid, 64 * 16 * 2);
  EXPECT_EQ(plan_forward(spec_problem(128, 4096, true), kSms, kL2, Schedule{}).grid, kSms);
}

TEST(HopperSchedulePlan, CausalGroupFitsHalfOfL2) {
  // D 128, 16k keys: one (head, batch) pair reads 16384 x 512 B = 8 MiB of K/V; half of 50 MiB
  // holds 3 pairs.
  EXPECT_EQ(plan_forward(spec_problem(128, 16384, true), kSms, kL2, Schedule{}).sched.group, 3);
  // GQA 4:1 shares one K/V among 4 query heads: 2 MiB per pair, 12 pairs.
  FwdProblem gqa = spec_problem(128, 16384, true);
  gqa.group_size = 4;
  EXPECT_EQ(plan_forward(gqa, kSms, kL2, Schedule{}).sched.group, 12);
  // 1k keys: 512 KiB per pair, 50 pairs in half of L2 (of 16 heads x 16 batch = 256).
  EXPECT_EQ(plan_forward(spec_problem(128, 1024, true), kSms, kL2, Schedule{}).sched.group, 50);
  // Fewer pairs than fit: clamped to the number of pairs.
  FwdProblem small = spec_problem(128, 1024, true);
  small.heads = 4;
  small.batch = 2;
  EXPECT_EQ(plan_forward(small, kSms, kL2, Schedule{}).sched.group, 8);
  // A tiny L2 (the knob the GPU tests use): at least one pair per group.
  Schedule tiny;
  tiny.l2_bytes = 1024;
  EXPECT_EQ(plan_forward(spec_problem(128, 1024, true), kSms, kL2, tiny).sched.group, 1);
  Schedule ungrouped;
  ungrouped.l2_grouping = false;
  EXPECT_EQ(plan_forward(spec_problem(128, 16384, true), kSms, kL2, ungrouped).sched.group, 0);
}

// Every tile index maps to a distinct (m_block, h, b) in range; causal: within each group the query
// blocks come bottom-up (non-increasing m_block along the order).
void expect_bijection(const TileScheduler& s) {
  std::vector<int> seen(std::size_t(s.num_tiles()), 0);
  const int pairs = s.heads * s.batch;
  const int g_size = s.group > 0 && s.group < pairs ? s.group : pairs;
  int prev_group = -1, prev_m = 0;
  for (int t = 0; t < s.num_tiles(); ++t) {
    const TileCoord c = s.coord(t);
    ASSERT_GE(c.m_block, 0);
    ASSERT_LT(c.m_block, s.m_blocks);
    ASSERT_GE(c.h, 0);
    ASSERT_LT(c.h, s.heads);
    ASSERT_GE(c.b, 0);
    ASSERT_LT(c.b, s.batch);
    ++seen[std::size_t((c.b * s.heads + c.h) * s.m_blocks + c.m_block)];
    if (s.causal) {
      const int group = (c.b * s.heads + c.h) / g_size;
      if (group == prev_group) EXPECT_LE(c.m_block, prev_m) << "tile " << t;
      prev_group = group;
      prev_m = c.m_block;
    }
  }
  for (std::size_t i = 0; i < seen.size(); ++i) EXPECT_EQ(seen[i], 1) << "tile slot " << i;
}

TEST(HopperSchedulePlan, EveryOrderVisitsEachTileOnce) {
  for (bool causal : {false, true}) {
    for (int group : {0, 1, 3, 5, 7, 100}) {  // 5 and 7 leave a short last group
      TileScheduler s;
      s.m_blocks = 9;
      s.heads = 7;
      s.batch = 3;
      s.causal = causal;
      s.group = group;
      SCOPED_TRACE(::testing::Message() << "causal " << causal << ", group " << group);
      expect_bijection(s);
    }
  }
}

}  // namespace
