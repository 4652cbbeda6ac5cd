// Calls the CPU kernels built for the highest x86-64 level this CPU supports (portable builds;
// see src/cpu/isa.hpp). Compiled for the baseline, like everything outside the kernel units.
#include "cpu/isa/select.hpp"

#include <cstdlib>

#include "backends.hpp"

namespace flashsigmoid::detail {

// The CPU kernels' entry points (declared in backends.hpp), one line each: a kernel source that
// defines FLASHSIGMOID_CPU_ENTRY(name) adds `X(name, its parameter type)` here.
#define FLASHSIGMOID_CPU_ENTRIES(X) \
  X(cpu_forward, AttnParams)        \
  X(cpu_backward, BwdParams)         \
  X(cpu_forward_kvcache, KVCacheParams)

// Their per-level definitions, from the generated units (src/cpu/isa/unit.cpp.in).
#define FLASHSIGMOID_CPU_DECLARE(name, Params)     \
  void name##_x86_64(const Params& p);            \
  void name##_x86_64_v3(const Params& p);         \
  void name##_x86_64_v4(const Params& p);
FLASHSIGMOID_CPU_ENTRIES(FLASHSIGMOID_CPU_DECLARE)
#undef FLASHSIGMOID_CPU_DECLARE

namespace {

enum class Level { x86_64, x86_64_v3, x86_64_v4 };
constexpr const char* kNames[] = {"x86-64", "x86-64-v3", "x86-64-v4"};

bool supported(Level level) {
  __builtin_cpu_init();
  // The features the units' `#pragma GCC target` lists enable (cmake/cpu_kernels.cmake).
  const bool v3 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                  __builtin_cpu_supports("bmi") && __builtin_cpu_supports("bmi2");
  const bool v4 = v3 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                  __builtin_cpu_supports("avx512cd") && __builtin_cpu_supports("avx512dq") &&
                  __builtin_cpu_supports("avx512vl");
  switch (level) {
    case Level::x86_64: return true;
    case Level::x86_64_v3: return v3;
    case Level::x86_64_v4: return v4;
  }
  return false;
}

Level parse(const std::string& name) {
  for (int i = 0; i < 3; ++i) {
    if (name == kNames[i]) return static_cast<Level>(i);
  }
  throw Error("flashsigmoid: unknown CPU level '" + name + "'; accepted: x86-64, x86-64-v3, x86-64-v4");
}

Level choose() {
  const char* forced = std::getenv("FLASHSIGMOID_CPU_ISA");
  if (forced != nullptr && *forced != '\0') {
    const Level level = parse(forced);
    if (!supported(level)) {
      throw Error(std::string("flashsigmoid: FLASHSIGMOID_CPU_ISA=") + forced + " but this CPU does not support it");
    }
    return level;
  }
  for (Level level : {Level::x86_64_v4, Level::x86_64_v3}) {
    if (supported(level)) return level;
  }
  return Level::x86_64;
}

Level selected() {
  static const Level level = choose();  // an exception leaves it unset: the next call retries
  return level;
}

}  // namespace

std::vector<std::string> cpu_isa_levels() { return {kNames[0], kNames[1], kNames[2]}; }
bool cpu_isa_supported(const std::string& level) { return supported(parse(level)); }
std::string cpu_isa() { return kNames[static_cast<int>(selected())]; }

#define FLASHSIGMOID_CPU_DISPATCH(name, Params)         \
  void name(const Params& p) {                         \
    switch (selected()) {                              \
      case Level::x86_64_v4: return name##_x86_64_v4(p); \
      case Level::x86_64_v3: return name##_x86_64_v3(p); \
      case Level::x86_64: return name##_x86_64(p);       \
    }                                                  \
  }
FLASHSIGMOID_CPU_ENTRIES(FLASHSIGMOID_CPU_DISPATCH)
#undef FLASHSIGMOID_CPU_DISPATCH

}  // namespace flashsigmoid::detail
