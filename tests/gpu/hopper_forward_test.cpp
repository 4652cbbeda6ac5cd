// GPU tests of the Hopper (sm_90a) forward: the shared case list (every option, odd shapes,
// guard bands, poisoned outputs: device_problem.hpp / forward_check.hpp) plus longer sequences
// that wrap the K/V pipeline several times, each also checking which kernel ran. Skipped, with the
// reason, when the build does not dispatch to the Hopper kernel (FLASHSIGMOID_HOPPER=OFF), when
// no GPU is visible, or when the device is not sm_90.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <string>
#include <utility>
#include <vector>

#include "cuda/hopper/launch.hpp"  // has_hopper_forward
#include "cuda/kernel_choice.hpp"
#include "device_problem.hpp"
#include "forward_check.hpp"
#include "hopper_skip.hpp"  // FS_SKIP_WITHOUT_HOPPER

namespace {

using fs_test::Alibi;
using fs_test::Case;

// The kernel backend.cu's dispatch must pick for this case.
const char* expected_kernel(const Case& c) {
  if (flashsigmoid::cuda::kernel_choice().forward == flashsigmoid::cuda::KernelFamily::portable) return "portable";
  const std::int64_t key_rows =
      c.varlen() ? std::accumulate(c.lens_k.begin(), c.lens_k.end(), std::int64_t(0)) : std::int64_t(c.Nk);
  if (key_rows == 0) return "portable";          // no key rows for a TMA descriptor
  if (!flashsigmoid::cuda::hopper::has_hopper_forward(c.D)) return "portable";  // not built for this head dim
  return "hopper";
}

std::vector<Case> hopper_cases() {
  std::vector<Case> base = fs_gpu::base_cases();
  auto add = [&](std::string name, auto&& edit) { fs_gpu::add_case(base, std::move(name), edit); };
  // Many key blocks: the 2-3 stage K/V pipeline wraps several times (barrier phases flip).
  add("hopper_long", [](Case& c) { c.B = 1; c.Hq = c.Hkv = 2; c.Nq = c.Nk = 1100; });
  add("hopper_pos_long_causal_alibi", [](Case& c) {  // global positions over many tiles
    c.B = 1; c.Hq = c.Hkv = 2; c.Nq = c.Nk = 1100; c.causal = true; c.alibi = Alibi::per_head;
    c.positions = flashsigmoid::Options::PositionOffsets{2000, 1500};
  });
  add("hopper_long_nq_lt_nk", [](Case& c) { c.B = 1; c.Nq = 200; c.Nk = 2049; });
  add("hopper_long_gqa_window", [](Case& c) {
    c.B = 1; c.Hq = 4; c.Hkv = 1; c.Nq = c.Nk = 1500; c.window_left = 300; c.window_right = 40;
  });
  add("hopper_long_causal_alibi", [](Case& c) {
    c.B = 2; c.Nq = c.Nk = 777; c.causal = true; c.alibi = Alibi::per_head;
  });
  // More tiles than an H100/H200 has SMs (132), so each persistent CTA runs several tiles and its
  // barriers and pipelines carry over from tile to tile (tile_scheduler.cuh).
  add("hopper_persistent", [](Case& c) { c.B = 3; c.Hq = 8; c.Hkv = 2; c.Nq = c.Nk = 800; });
  add("hopper_persistent_causal_window", [](Case& c) {
    c.B = 3; c.Hq = 8; c.Hkv = 4; c.Nq = 700; c.Nk = 800; c.causal = true; c.window_left = 150;
  });
  // Five or more tiles per CTA (768 tiles on 132 SMs): the Q barrier's parity and the O staging
  // buffer's reuse wrap several times; causal gives tiles of 1-3 key blocks, so tile boundaries
  // (epilogue, next Q) come close together.
  add("hopper_many_tiles_per_cta", [](Case& c) { c.B = 4; c.Hq = 64; c.Hkv = 16; c.Nq = c.Nk = 300; });
  add("hopper_many_tiles_per_cta_causal", [](Case& c) {
    c.B = 4; c.Hq = 64; c.Hkv = 16; c.Nq = c.Nk = 300; c.causal = true;
  });
  // Packed sequences whose tiles overhang into their neighbours' rows (and past the tensor's end).
  add("hopper_long_varlen", [](Case& c) {
    c.Hq = 4; c.Hkv = 2; c.lens_q = {1000, 3, 0, 700}; c.lens_k = {900, 1500, 40, 700};
  });
  add("hopper_long_varlen_causal_window", [](Case& c) {
    c.lens_q = {513, 1025}; c.lens_k = {1100, 1025}; c.causal = true; c.window_left = 200;
  });
  std::vector<Case> cases;
  for (const Case& c : fs_gpu::expand_cases(base)) {
    if (flashsigmoid::cuda::hopper::has_hopper_forward(c.D)) cases.push_back(c);
  }
  return cases;
}

class HopperForward : public ::testing::TestWithParam<Case> {};

TEST_P(HopperForward, MatchesReference) {
  FS_SKIP_WITHOUT_HOPPER();
  const Case& c = GetParam();
  if (c.D == 0) GTEST_SKIP() << "this build has no Hopper forward head dim";
  fs_gpu::check_forward(c);
  EXPECT_STREQ(flashsigmoid::cuda::last_forward_kernel(), expected_kernel(c));
}

// Every schedule the benchmark can pick gives the same results: one CTA per tile, causal order across
// every head, and L2 groups of one or five (head, batch) pairs (a tiny L2 size, so a small problem
// has many groups, the last one short). Causal with more tiles than SMs, so odd rounds run backwards.
TEST(HopperForwardSchedule, EveryScheduleMatchesReference) {
  FS_SKIP_WITHOUT_HOPPER();
  using flashsigmoid::cuda::hopper::Schedule;
  std::vector<std::pair<std::string, Schedule>> variants = {
      {"per_tile", {false, true, 0}}, {"no_l2_group", {true, false, 0}}, {"l2_group_1", {true, true, 1}},
      {"l2_group_5", {true, true, 0}}};
  for (int D : fs_gpu::kBuiltHeadDims) {
    if (!flashsigmoid::cuda::hopper::has_hopper_forward(D)) continue;
    Case c;  // as hopper_persistent_causal_window: 144 tiles, two rounds on 132 SMs
    c.dtype = flashsigmoid::DType::bfloat16;
    c.D = D;
    c.B = 3; c.Hq = 8; c.Hkv = 4; c.Nq = 700; c.Nk = 800; c.causal = true;
    // Five pairs' K/V per group (24 pairs: the last group has 4): each pair reads 2 * Nk * D * 2 bytes,
    // shared by Hq / Hkv = 2 heads, and a group gets half of L2.
    variants.back().second.l2_bytes = 2 * 5 * (2LL * c.Nk * D * 2 / 2);
    for (const auto& [name, variant] : variants) {
      SCOPED_TRACE("schedule " + name + ", D " + std::to_string(D));
      c.name = "schedule_" + name;
      // The schedules are the Hopper kernel's: automatic dispatch even in the pass that forces the
      // portable kernel for every other test.
      flashsigmoid::cuda::KernelChoice choice;
      choice.hopper_schedule = variant;
      const flashsigmoid::cuda::ScopedKernelChoice scoped(choice);
      fs_gpu::check_forward(c);
      EXPECT_STREQ(flashsigmoid::cuda::last_forward_kernel(), "hopper");
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Cases, HopperForward,
                         ::testing::ValuesIn(fs_gpu::or_placeholder(hopper_cases())),
                         [](const ::testing::TestParamInfo<Case>& info) { return info.param.name; });

}  // namespace
