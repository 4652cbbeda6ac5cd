// The size limits every CUDA launcher checks before it builds a grid, in one place: CUDA's grid
// (x below 2^31 blocks, y and z at most 65535) and the 32-bit extents of TMA descriptors and tile
// counters. Host code.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <string>

#include "flashsigmoid/flashsigmoid.hpp"

namespace flashsigmoid::cuda {

constexpr std::int64_t kMaxGridX = 0x7fffffff;  // also any other int32 count: TMA rows, tiles, flags
constexpr std::int64_t kMaxGridYZ = 65535;

struct LaunchExtent {
  const char* what;  // e.g. "query blocks"
  std::int64_t value;
  std::int64_t limit;
};

// Throws Error naming the first extent over its limit, e.g. "flashsigmoid: CUDA forward problem too
// large: 70000 heads; accepted: at most 65535".
inline void check_launch_limits(const char* launcher, std::initializer_list<LaunchExtent> extents) {
  for (const LaunchExtent& e : extents) {
    if (e.value > e.limit) {
      throw Error(std::string("flashsigmoid: ") + launcher + " problem too large: " + std::to_string(e.value) + " " +
                  e.what + "; accepted: at most " + std::to_string(e.limit));
    }
  }
}

}  // namespace flashsigmoid::cuda
