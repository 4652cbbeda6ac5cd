// Calls the CPU kernels built for the highest x86-64 level this CPU supports (portable builds;
// see src/cpu/isa.hpp). Compiled for the baseline, like everything outside the kernel units.
#include "cpu/isa/select.hpp"

#include <cstdlib>

#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

#include "backends.hpp"

namespace flashsigmoid::detail {

// The levels, lowest first: `X(suffix of the units' entry points, name)`. A level added here is
// added to cmake/cpu_kernels.cmake (its features), to FLASHSIGMOID_CPU_EACH_LEVEL and to supported().
#define FLASHSIGMOID_CPU_LEVELS(X)    \
  X(x86_64, "x86-64")                 \
  X(x86_64_v3, "x86-64-v3")           \
  X(x86_64_v4, "x86-64-v4")           \
  X(x86_64_v4_bf16, "x86-64-v4-bf16") \
  X(x86_64_v4_amx, "x86-64-v4-amx")

// The CPU kernels' entry points (declared in backends.hpp), one line each: a kernel source that
// defines FLASHSIGMOID_CPU_ENTRY(name) adds `X(name, its parameter type)` here.
#define FLASHSIGMOID_CPU_ENTRIES(X) \
  X(cpu_forward, AttnParams)        \
  X(cpu_backward, BwdParams)         \
  X(cpu_forward_kvcache, KVCacheParams)

// `Y(level, name, Params)` for every level: the entry points' per-level copies.
#define FLASHSIGMOID_CPU_EACH_LEVEL(Y, name, Params) \
  Y(x86_64, name, Params)                            \
  Y(x86_64_v3, name, Params)                         \
  Y(x86_64_v4, name, Params)                         \
  Y(x86_64_v4_bf16, name, Params)                    \
  Y(x86_64_v4_amx, name, Params)

// Their per-level definitions, from the generated units (src/cpu/isa/unit.cpp.in).
#define FLASHSIGMOID_CPU_DECLARE_AT(level, name, Params) void name##_##level(const Params& p);
#define FLASHSIGMOID_CPU_DECLARE(name, Params) FLASHSIGMOID_CPU_EACH_LEVEL(FLASHSIGMOID_CPU_DECLARE_AT, name, Params)
FLASHSIGMOID_CPU_ENTRIES(FLASHSIGMOID_CPU_DECLARE)
#undef FLASHSIGMOID_CPU_DECLARE
#undef FLASHSIGMOID_CPU_DECLARE_AT

namespace {

#define FLASHSIGMOID_CPU_ENUM(level, name) level,
#define FLASHSIGMOID_CPU_NAME(level, name) name,
enum class Level { FLASHSIGMOID_CPU_LEVELS(FLASHSIGMOID_CPU_ENUM) };
constexpr const char* kNames[] = {FLASHSIGMOID_CPU_LEVELS(FLASHSIGMOID_CPU_NAME)};
constexpr int kNumLevels = sizeof(kNames) / sizeof(kNames[0]);
#undef FLASHSIGMOID_CPU_ENUM
#undef FLASHSIGMOID_CPU_NAME

// Linux hands out AMX tile state only on request, once per process (arch_prctl
// ARCH_REQ_XCOMP_PERM for XFEATURE_XTILEDATA); without it the first tile instruction faults.
// A refusal (an old kernel, a sandbox) makes the AMX level unsupported: the next one is used.
bool amx_permitted() {
#if defined(__linux__) && defined(SYS_arch_prctl)
  static const bool granted = [] {
    constexpr long kArchReqXcompPerm = 0x1023;
    constexpr long kXfeatureXtiledata = 18;
    return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
  }();
  return granted;
#else
  return false;
#endif
}

bool supported(Level level) {
  __builtin_cpu_init();
  // The features the units' `#pragma GCC target` lists enable (cmake/cpu_kernels.cmake).
  const bool v3 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                  __builtin_cpu_supports("bmi") && __builtin_cpu_supports("bmi2");
  const bool v4 = v3 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                  __builtin_cpu_supports("avx512cd") && __builtin_cpu_supports("avx512dq") &&
                  __builtin_cpu_supports("avx512vl");
  const bool bf16 = v4 && __builtin_cpu_supports("avx512bf16");
  switch (level) {
    case Level::x86_64: return true;
    case Level::x86_64_v3: return v3;
    case Level::x86_64_v4: return v4;
    case Level::x86_64_v4_bf16: return bf16;
    case Level::x86_64_v4_amx:
      return bf16 && __builtin_cpu_supports("amx-tile") && __builtin_cpu_supports("amx-bf16") && amx_permitted();
  }
  return false;
}

Level parse(const std::string& name) {
  for (int i = 0; i < kNumLevels; ++i) {
    if (name == kNames[i]) return static_cast<Level>(i);
  }
  std::string accepted;
  for (int i = 0; i < kNumLevels; ++i) accepted += (i ? ", " : "") + std::string(kNames[i]);
  throw Error("flashsigmoid: unknown CPU level '" + name + "'; accepted: " + accepted);
}

// FLASHSIGMOID_CPU_ISA forces a level; otherwise the highest the CPU (and, for AMX, the kernel) grants.
Level choose() {
  const char* forced = std::getenv("FLASHSIGMOID_CPU_ISA");
  if (forced != nullptr && *forced != '\0') {
    const Level level = parse(forced);
    if (!supported(level)) {
      throw Error(std::string("flashsigmoid: FLASHSIGMOID_CPU_ISA=") + forced + " but this CPU does not support it");
    }
    return level;
  }
  for (int i = kNumLevels - 1; i > 0; --i) {
    if (supported(static_cast<Level>(i))) return static_cast<Level>(i);
  }
  return Level::x86_64;
}

Level selected() {
  static const Level level = choose();  // an exception leaves it unset: the next call retries
  return level;
}

}  // namespace

std::vector<std::string> cpu_isa_levels() { return {kNames, kNames + kNumLevels}; }
bool cpu_isa_supported(const std::string& level) { return supported(parse(level)); }
std::string cpu_isa() { return kNames[static_cast<int>(selected())]; }

#define FLASHSIGMOID_CPU_CASE(level, name, Params) \
  case Level::level: return name##_##level(p);
#define FLASHSIGMOID_CPU_DISPATCH(name, Params)                          \
  void name(const Params& p) {                                          \
    switch (selected()) { FLASHSIGMOID_CPU_EACH_LEVEL(FLASHSIGMOID_CPU_CASE, name, Params) } \
  }
FLASHSIGMOID_CPU_ENTRIES(FLASHSIGMOID_CPU_DISPATCH)
#undef FLASHSIGMOID_CPU_DISPATCH
#undef FLASHSIGMOID_CPU_CASE

}  // namespace flashsigmoid::detail
