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

#include <cstdint>

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

  __device__ TileCoord coord(int t) const {
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

}  // namespace flashsigmoid::cuda::hopper
