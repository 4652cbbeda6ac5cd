// Included by each per-level CPU kernel unit before its `#pragma GCC target`: every header the
// kernels use that is not their own. Their inline functions and templates are then compiled
// for the baseline, so when the linker keeps one copy of such a function out of several units,
// every copy runs on any x86-64. A kernel source that needs another standard or common header
// adds it here.
#pragma once

#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "backends.hpp"
#include "common/float_convert.hpp"
#include "common/params.hpp"
#include "common/score_transform.hpp"
#include "cpu/thread_pool.hpp"
