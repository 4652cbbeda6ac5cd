// Host test of the KV-cache num_splits heuristic (src/cuda/decode/splits.hpp): runs without a device.
#include <gtest/gtest.h>

#include "cuda/decode/splits.hpp"

namespace {

using flashsigmoid::cuda::decode::auto_splits;
using flashsigmoid::cuda::decode::kMaxAutoSplits;

// 132 SMs with 2 resident CTAs each: 264 slots.
TEST(KVCacheSplits, FillsOneWaveWhenFewPairs) {
  EXPECT_EQ(auto_splits(8, 8192, 64, 132, 2), 32);     // B 1, 8 kv heads, 8k: capped by the work (128 blocks / 4)
  EXPECT_EQ(auto_splits(8, 131072, 64, 132, 2), 33);   // 128k: 264 / 8 slots per pair
  EXPECT_EQ(auto_splits(100, 131072, 64, 132, 2), 2);  // never more CTAs than slots
}

TEST(KVCacheSplits, OneSplitWhenTheGridIsFull) {
  EXPECT_EQ(auto_splits(264, 131072, 64, 132, 2), 1);
  EXPECT_EQ(auto_splits(1024, 8192, 64, 132, 2), 1);
}

TEST(KVCacheSplits, ShortCachesAndLimits) {
  EXPECT_EQ(auto_splits(1, 100, 64, 132, 2), 1);  // 2 key blocks: one split
  EXPECT_EQ(auto_splits(1, 1 << 20, 64, 132, 2), kMaxAutoSplits);
  EXPECT_EQ(auto_splits(1, 4096, 64, 132, 0), 16);  // an occupancy query of 0 counts as 1 CTA per SM
  EXPECT_EQ(auto_splits(0, 4096, 64, 132, 2), 1);
}

}  // namespace
