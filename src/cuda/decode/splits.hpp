// How the KV-cache attention splits a sequence's keys: the contiguous share of each split, and
// the num_splits heuristic (num_splits = 0). Host-callable, so they are tested without a device.
#pragma once

#include <algorithm>
#include <cstdint>

#include "common/params.hpp"  // FS_HD

namespace flashsigmoid::cuda::decode {

// Split `part` of `parts` over n items starts at item split_begin(n, part, parts): contiguous,
// sizes differing by at most one, split_begin(n, parts, parts) == n.
FS_HD std::int64_t split_begin(std::int64_t n, std::int64_t part, std::int64_t parts) { return n * part / parts; }

// Enough splits to give every SM its resident CTAs in one wave (a decode step has few (sequence,
// kv head) pairs and is memory-bound, so idle SMs are idle bandwidth), at most one split per key
// block of the cache's capacity (short splits issue all their loads at once: latency, not
// bandwidth, bounds small caches) and at most kMaxAutoSplits. Shapes and the SM count only, never
// the sequence lengths (they are on the device): the workspace size then depends on shapes alone.
inline constexpr int kMaxAutoSplits = 256;

inline int auto_splits(std::int64_t ctas, std::int64_t capacity, int block_n, int sms, int ctas_per_sm) {
  const std::int64_t slots = std::int64_t(sms) * std::max(ctas_per_sm, 1);
  const std::int64_t by_wave = ctas > 0 ? slots / ctas : 1;
  const std::int64_t by_work = std::max<std::int64_t>(1, (capacity + block_n - 1) / block_n);
  return int(std::clamp<std::int64_t>(std::min(by_wave, by_work), 1, kMaxAutoSplits));
}

}  // namespace flashsigmoid::cuda::decode
