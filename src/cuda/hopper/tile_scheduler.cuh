// Persistent tile scheduler of the Hopper forward: the grid holds at most one CTA per SM and each
// CTA walks tiles t = blockIdx.x, blockIdx.x + gridDim.x, ... (static, so producer and consumers
// of a CTA agree on the sequence without communicating, and the schedule is deterministic).
//
// Order: causal runs take the query blocks from the bottom (the longest rows first) across every
// (head, batch), so the short tiles fill in at the end instead of trailing; non-causal runs take
// the query blocks of one (head, batch) together, so concurrent CTAs share its K/V in L2.
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
  bool causal = false;

  __host__ __device__ int num_tiles() const { return m_blocks * heads * batch; }

  __device__ TileCoord coord(int t) const {
    TileCoord c;
    int hb;
    if (causal) {
      const int per_m = heads * batch;
      c.m_block = m_blocks - 1 - t / per_m;
      hb = t % per_m;
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
