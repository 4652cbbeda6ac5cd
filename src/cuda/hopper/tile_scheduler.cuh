// Persistent tile scheduler of the Hopper forward: the grid holds at most one CTA per SM and each
// CTA takes one tile per round, tile(round) (static, so producer and consumers of a CTA agree on
// the sequence without communicating, and the schedule is deterministic).
//
// Order: non-causal runs take the query blocks of one (head, batch) together, so concurrent CTAs
// share its K/V in L2. Causal runs take the query blocks from the bottom (the longest rows first)
// across a group of `group` (head, batch) pairs, so the short tiles fill in at the end instead of
// trailing; the group is sized on the host so that its K/V fits in L2 (longest-first across every
// head of a 16k-key problem reads 16 heads' K/V at once: 128 MB, which thrashes the 50 MB L2).
#pragma once

#include <algorithm>
#include <cstdint>

#include "cuda/hopper/schedule.hpp"

namespace flashsigmoid::cuda::hopper {

struct TileCoord {
  int m_block, h, b;
};

struct TileScheduler {
  int m_blocks = 0;  // query blocks per (head, batch) (varlen: of the longest sequence)
  int heads = 0;
  int batch = 0;
  int group = 0;  // causal: (head, batch) pairs ordered longest-first together; 0 means all
  bool causal = false;

  __host__ __device__ int num_tiles() const { return m_blocks * heads * batch; }

  // This CTA's tile of round `round` (>= num_tiles() once it has none left). Causal tiles get shorter
  // along the order, so a fixed position in every round would give CTA 0 the longest tile of each
  // round (measured at 16k keys, D 128: 540-550 TFLOP/s against 630 with one CTA per tile); odd rounds walk the CTAs backwards,
  // so each pair of rounds sums to about the same work on every CTA.
  __device__ int tile(int round) const {
    const int cta = causal && (round & 1) ? int(gridDim.x) - 1 - int(blockIdx.x) : int(blockIdx.x);
    return round * int(gridDim.x) + cta;
  }

  __host__ __device__ TileCoord coord(int t) const {
    TileCoord c;
    int hb;
    if (causal) {
      const int pairs = heads * batch;
      const int g_size = group > 0 && group < pairs ? group : pairs;
      const int g = t / (g_size * m_blocks);
      const int r = t - g * g_size * m_blocks;
      const int first = g * g_size;
      const int n = pairs - first < g_size ? pairs - first : g_size;  // the last group may be short
      c.m_block = m_blocks - 1 - r / n;
      hb = first + r % n;
    } else {
      c.m_block = t % m_blocks;
      hb = t / m_blocks;
    }
    c.h = hb % heads;
    c.b = hb / heads;
    return c;
  }
};

// What plan_forward needs to know about one forward problem.
struct FwdProblem {
  std::int64_t m_blocks = 0;   // query blocks per (head, batch)
  std::int64_t heads = 0;      // query heads
  std::int64_t batch = 0;
  bool causal = false;
  std::int64_t seqlen_k = 0;   // keys per sequence (varlen: the longest)
  std::int64_t mean_keys = 0;  // keys per sequence (varlen: the mean), for the L2 group
  std::int64_t kv_bytes_per_key = 0;  // K and V bytes of one key row of one kv head (2 D element bytes)
  std::int64_t group_size = 1;        // query heads per kv head (GQA): they share one K/V
};

struct FwdLaunchPlan {
  TileScheduler sched;
  std::int64_t grid = 0;  // CTAs
};

// The Hopper forward's launch choices, fixed by measurement (bench/NOTES.md, 2026-11-29):
// - persistent: at most one CTA per SM walking its tiles, except causal runs over 8k keys and more,
//   where the hardware's dynamic order of one CTA per tile measured 10-20 % faster than the static
//   rounds (and the static rounds faster below 8k);
// - causal: longest-first order within groups of (head, batch) pairs whose K/V takes at most half
//   of L2 (the rest is for Q, O and the other traffic).
// knobs: the benchmark's A/B switches (launch.hpp); l2_bytes: the device's, unless knobs.l2_bytes > 0.
inline FwdLaunchPlan plan_forward(const FwdProblem& pr, int sms, std::int64_t l2_bytes, const Schedule& knobs) {
  FwdLaunchPlan plan;
  plan.sched.m_blocks = int(pr.m_blocks);
  plan.sched.heads = int(pr.heads);
  plan.sched.batch = int(pr.batch);
  plan.sched.causal = pr.causal;
  const std::int64_t pairs = pr.heads * pr.batch;
  if (pr.causal && knobs.l2_grouping) {
    const std::int64_t l2 = knobs.l2_bytes > 0 ? std::int64_t(knobs.l2_bytes) : l2_bytes;
    const std::int64_t kv_bytes =
        std::max<std::int64_t>(pr.mean_keys * pr.kv_bytes_per_key / std::max<std::int64_t>(pr.group_size, 1), 1);
    plan.sched.group = int(std::clamp<std::int64_t>(l2 / 2 / kv_bytes, 1, std::max<std::int64_t>(pairs, 1)));
  }
  const std::int64_t tiles = pr.m_blocks * pairs;
  const bool long_causal = pr.causal && pr.seqlen_k >= 8192;
  plan.grid = knobs.persistent && !long_causal && tiles > sms ? sms : tiles;
  return plan;
}

}  // namespace flashsigmoid::cuda::hopper
