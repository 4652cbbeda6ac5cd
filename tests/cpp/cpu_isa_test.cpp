// The run-time choice of the CPU kernels' x86-64 level (portable builds). The accuracy suite
// runs once more per level with FLASHSIGMOID_CPU_ISA forcing it (tests/cpp/CMakeLists.txt);
// ForcedLevelIsUsed makes sure the level asked for is the one that ran.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <string>

#include "cpu/isa/select.hpp"
#include "flashsigmoid/flashsigmoid.hpp"

namespace {

namespace detail = flashsigmoid::detail;

TEST(CpuIsa, HighestSupportedLevelByDefault) {
  const auto levels = detail::cpu_isa_levels();
  ASSERT_EQ(levels, (std::vector<std::string>{"x86-64", "x86-64-v3", "x86-64-v4", "x86-64-v4-bf16", "x86-64-v4-amx"}));
  EXPECT_TRUE(detail::cpu_isa_supported("x86-64"));
  const char* forced = std::getenv("FLASHSIGMOID_CPU_ISA");
  if (forced != nullptr && *forced != '\0') GTEST_SKIP() << "a level is forced (ForcedLevelIsUsed checks it)";
  std::string best = "x86-64";
  for (const auto& l : levels) {
    if (detail::cpu_isa_supported(l)) best = l;
  }
  EXPECT_EQ(detail::cpu_isa(), best);
}

TEST(CpuIsa, ForcedLevelIsUsed) {
  const char* forced = std::getenv("FLASHSIGMOID_CPU_ISA");
  if (forced == nullptr || *forced == '\0') GTEST_SKIP() << "no level forced";
  if (!detail::cpu_isa_supported(forced)) {
    GTEST_SKIP() << "FLASHSIGMOID_CPU_ISA=" << forced << " is not supported by this CPU";
  }
  EXPECT_EQ(detail::cpu_isa(), forced);
}

TEST(CpuIsa, UnknownLevelIsAnError) {
  EXPECT_THROW(detail::cpu_isa_supported("x86-64-v9"), flashsigmoid::Error);
}

}  // namespace
