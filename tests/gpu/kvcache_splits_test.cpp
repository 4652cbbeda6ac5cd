// Host tests of how the KV-cache attention splits keys (src/cuda/decode/splits.hpp): no device needed.
#include <gtest/gtest.h>

#include <cstdint>

#include "cuda/decode/splits.hpp"

namespace {

using flashsigmoid::cuda::decode::auto_splits;
using flashsigmoid::cuda::decode::kMaxAutoSplits;

// 132 SMs with 2 resident CTAs each: 264 slots.
TEST(KVCacheSplits, FillsOneWaveWhenFewPairs) {
  EXPECT_EQ(auto_splits(8, 8192, 64, 132, 2), 33);     // B 1, 8 kv heads, 8k: 264 / 8 slots per pair
  EXPECT_EQ(auto_splits(8, 1024, 64, 132, 2), 16);     // 1k: capped by the work, one split per key block
  EXPECT_EQ(auto_splits(8, 131072, 64, 132, 2), 33);   // 128k: 264 / 8 slots per pair
  EXPECT_EQ(auto_splits(100, 131072, 64, 132, 2), 2);  // never more CTAs than slots
}

TEST(KVCacheSplits, OneSplitWhenTheGridIsFull) {
  EXPECT_EQ(auto_splits(264, 131072, 64, 132, 2), 1);
  EXPECT_EQ(auto_splits(1024, 8192, 64, 132, 2), 1);
}

TEST(KVCacheSplits, ShortCachesAndLimits) {
  EXPECT_EQ(auto_splits(1, 100, 64, 132, 2), 2);  // 2 key blocks: two splits
  EXPECT_EQ(auto_splits(1, 1 << 20, 64, 132, 2), kMaxAutoSplits);
  EXPECT_EQ(auto_splits(1, 4096, 64, 132, 0), 64);   // 64 key blocks
  EXPECT_EQ(auto_splits(1, 65536, 64, 132, 0), 132);  // an occupancy query of 0 counts as 1 CTA per SM
  EXPECT_EQ(auto_splits(0, 4096, 64, 132, 2), 1);
}

}  // namespace

namespace {

// The splits' shares tile [0, n) contiguously, in order, with sizes differing by at most one.
TEST(KVCacheSplits, SharesTileTheRange) {
  using flashsigmoid::cuda::decode::split_begin;
  for (std::int64_t n : {0, 1, 5, 63, 64, 1000, 131072}) {
    for (std::int64_t parts : {1, 2, 3, 7, 8, 64, 256}) {
      EXPECT_EQ(split_begin(n, 0, parts), 0);
      EXPECT_EQ(split_begin(n, parts, parts), n);
      for (std::int64_t part = 0; part < parts; ++part) {
        const std::int64_t size = split_begin(n, part + 1, parts) - split_begin(n, part, parts);
        EXPECT_GE(size, n / parts) << "n " << n << " parts " << parts << " part " << part;
        EXPECT_LE(size, n / parts + 1) << "n " << n << " parts " << parts << " part " << part;
      }
    }
  }
}

}  // namespace
