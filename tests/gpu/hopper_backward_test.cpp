// GPU tests of the Hopper (sm_90a) backward: the backward tests' case list (backward_check.hpp) in
// both modes, restricted to what the Hopper backward covers (dense or varlen, head dims 64 / 128,
// query and key rows), plus longer cases (many query and key blocks, so the Q/dO pipeline and the double-
// buffered dS tile wrap; causal, GQA, windows that leave whole key blocks unseen, odd lengths, packed
// sequences whose blocks overhang into their neighbours' rows), each also checking which kernel ran. Skipped, with the reason, when the build does not dispatch to the
// Hopper kernels, when no GPU is visible, or when the device is not sm_90.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <numeric>
#include <string>
#include <utility>
#include <vector>

#include "backward_check.hpp"
#include "cuda/hopper/launch.hpp"  // has_hopper_backward
#include "cuda/kernel_choice.hpp"
#include "device_problem.hpp"
#include "hopper_skip.hpp"  // FS_SKIP_WITHOUT_HOPPER

namespace {

using flashsigmoid::BiasMode;
using fs_test::Alibi;
using fs_test::Case;

// Cases the Hopper backward takes (backend.cu's try_hopper_backward; the default mode is the test's):
// its head dims and at least one query and one key row in all (varlen: summed over the sequences).
bool hopper_covers(const Case& c) {
  if (!flashsigmoid::cuda::hopper::has_hopper_backward(c.D)) return false;
  if (c.varlen()) {
    auto rows = [](const std::vector<std::int64_t>& lens) {
      return std::accumulate(lens.begin(), lens.end(), std::int64_t(0));
    };
    return rows(c.lens_q) > 0 && rows(c.lens_k) > 0;
  }
  return c.B > 0 && c.Nq > 0 && c.Nk > 0;
}

// --backward-kernel=portable (scripts/gpu_check.sh's portable pass) sends every case to the portable
// kernels.
const char* expected_kernel() {
  return flashsigmoid::cuda::kernel_choice().backward == flashsigmoid::cuda::KernelFamily::portable ? "portable"
                                                                                                   : "hopper";
}

std::vector<Case> hopper_backward_cases() {
  std::vector<Case> base;
  auto add = [&](std::string name, auto&& edit) { fs_gpu::add_case(base, std::move(name), edit); };
  // Many query blocks per key block and many key blocks: the 2-stage Q/dO pipeline and the two dS
  // buffers wrap many times.
  add("hbwd_long", [](Case& c) { c.B = 1; c.Hq = c.Hkv = 2; c.Nq = c.Nk = 1100; });
  // Global positions: a zigzag ring step's diagonal pair, and a pair whose first query blocks see no key.
  add("hbwd_pos_long_causal_gqa_bias", [](Case& c) {
    c.B = 1; c.Hq = 4; c.Hkv = 2; c.Nq = c.Nk = 1100; c.causal = true; c.bias_mode = BiasMode::per_head;
    c.positions = flashsigmoid::Options::PositionOffsets{1100, 300};
  });
  add("hbwd_pos_partly_future_window_alibi", [](Case& c) {
    c.B = 1; c.Hq = c.Hkv = 2; c.Nq = 600; c.Nk = 700; c.causal = true; c.window_left = 350;
    c.alibi = Alibi::per_head; c.positions = flashsigmoid::Options::PositionOffsets{100, 300};
  });
  add("hbwd_long_causal_gqa_bias", [](Case& c) {
    c.B = 2; c.Hq = 8; c.Hkv = 2; c.Nq = c.Nk = 777; c.causal = true; c.bias_mode = BiasMode::per_head;
  });
  add("hbwd_long_window_mqa", [](Case& c) {
    c.B = 1; c.Hq = 4; c.Hkv = 1; c.Nq = c.Nk = 1500; c.window_left = 300; c.window_right = 40;
  });
  add("hbwd_nq_gt_nk_causal", [](Case& c) { c.B = 1; c.Hq = 4; c.Hkv = 2; c.Nq = 1000; c.Nk = 300; c.causal = true; });
  // A window that leaves most key blocks unseen: those CTAs load nothing, write zero dK, dV and zero
  // d(bias) partials.
  add("hbwd_unseen_keys_bias", [](Case& c) {
    c.B = 2; c.Hq = 4; c.Hkv = 2; c.Nq = 130; c.Nk = 1000; c.window_left = 50; c.window_right = 0;
    c.bias_mode = BiasMode::per_head;
  });
  add("hbwd_odd_alibi_batch_scalar", [](Case& c) {
    c.B = 3; c.Nq = 321; c.Nk = 387; c.alibi = Alibi::per_batch; c.bias_mode = BiasMode::scalar; c.bias_value = -2.0f;
  });
  add("hbwd_heads_major_window", [](Case& c) {
    c.B = 2; c.Hq = 6; c.Hkv = 3; c.Nq = c.Nk = 515; c.layout = flashsigmoid::testing::Layout::heads_major;
    c.window_left = 100; c.window_right = 100;
  });
  // Packed sequences: query and key blocks overhang into the next sequence's rows (and past the
  // tensor's end); a sequence without queries (its keys get zero dK, dV), one with 3 queries and many
  // key blocks, a key block column past a short sequence's end.
  add("hbwd_long_varlen", [](Case& c) {
    c.Hq = 4; c.Hkv = 2; c.lens_q = {1000, 3, 0, 700}; c.lens_k = {900, 1500, 40, 700};
  });
  add("hbwd_long_varlen_causal_window_bias", [](Case& c) {
    c.lens_q = {513, 1025}; c.lens_k = {1100, 1025}; c.causal = true; c.window_left = 200;
    c.bias_mode = BiasMode::per_head;
  });
  add("hbwd_varlen_mqa_no_keys", [](Case& c) {
    c.Hq = 4; c.Hkv = 1; c.lens_q = {50, 300, 129}; c.lens_k = {0, 500, 127}; c.alibi = Alibi::per_head;
  });
  std::vector<Case> cases;
  for (const Case& c : fs_gpu::backward_cases()) {
    if (hopper_covers(c)) cases.push_back(c);
  }
  for (const Case& c : fs_gpu::expand_cases(base)) {
    if (hopper_covers(c)) cases.push_back(c);
  }
  return cases;
}

class HopperBackward : public ::testing::TestWithParam<Case> {};

// One case against the reference in one mode, and the kernel that ran.
void check_hopper_case(const Case& c, bool deterministic) {
#if !defined(FLASHSIGMOID_CUDA_BACKWARD_ENABLED)
  GTEST_SKIP() << "the CUDA backward is off in this build (configured with -DFLASHSIGMOID_CUDA_BACKWARD=OFF)";
#endif
  if (c.D == 0) GTEST_SKIP() << "this build has neither of the Hopper backward's head dims 64, 128";
  fs_gpu::check_backward(c, deterministic);
  EXPECT_STREQ(flashsigmoid::cuda::last_backward_kernel(), expected_kernel());
}

TEST_P(HopperBackward, MatchesReference) {
  FS_SKIP_WITHOUT_HOPPER();
  check_hopper_case(GetParam(), /*deterministic=*/false);
}

// The same cases in the deterministic mode (dQ adds ordered by key block: bwd_kernel.cuh's DqOrder).
TEST_P(HopperBackward, DeterministicMatchesReference) {
  FS_SKIP_WITHOUT_HOPPER();
  check_hopper_case(GetParam(), /*deterministic=*/true);
}

// Deterministic mode with many key blocks adding to each query block (16, and GQA heads sharing a
// CTA; a varlen batch): three runs on the same inputs give the same bits in every gradient.
TEST(HopperBackwardDeterminism, ManyKeyBlocksSameBits) {
  FS_SKIP_WITHOUT_HOPPER();
#if !defined(FLASHSIGMOID_CUDA_BACKWARD_ENABLED)
  GTEST_SKIP() << "the CUDA backward is off in this build (configured with -DFLASHSIGMOID_CUDA_BACKWARD=OFF)";
#endif
  std::vector<int> dims;
  for (int D : fs_gpu::kBuiltHeadDims) {
    if (flashsigmoid::cuda::hopper::has_hopper_backward(D)) dims.push_back(D);
  }
  if (dims.empty()) GTEST_SKIP() << "this build has neither of the Hopper backward's head dims 64, 128";
  for (int D : dims) {
    for (bool varlen : {false, true}) {
      Case c;
      c.name = "determinism";
      c.dtype = flashsigmoid::DType::bfloat16;
      c.D = D;
      c.Hq = 8;
      c.Hkv = 2;
      c.bias_mode = BiasMode::per_head;
      if (varlen) {
        c.lens_q = {1500, 700, 1};
        c.lens_k = {2048, 900, 300};
      } else {
        c.B = 2;
        c.Nq = c.Nk = 2048;
      }
      SCOPED_TRACE(fs_test::describe(c));
      const fs_test::Problem p = fs_test::make_problem(c, fs_test::test_seed());
      fs_gpu::DeviceProblem d(p);
      d.o.deterministic = true;
      fs_gpu::DeviceGrads first(p, true);
      flashsigmoid::backward(d.q, d.k, d.v, d.dout, first.grads(), d.o);
      EXPECT_STREQ(flashsigmoid::cuda::last_backward_kernel(), expected_kernel());
      for (int run = 1; run < 3; ++run) {
        fs_gpu::DeviceGrads again(p, true);
        flashsigmoid::backward(d.q, d.k, d.v, d.dout, again.grads(), d.o);
        ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
        EXPECT_EQ(first.dq.download(), again.dq.download()) << "run " << run;
        EXPECT_EQ(first.dk.download(), again.dk.download()) << "run " << run;
        EXPECT_EQ(first.dv.download(), again.dv.download()) << "run " << run;
        EXPECT_EQ(first.dbias.download(), again.dbias.download()) << "run " << run;
      }
    }
  }
}

// Both modes run the Hopper backward, and so does a varlen problem (unless the portable kernels are
// forced).
TEST(HopperBackwardDispatch, BothModesAndVarlenAreHopper) {
  FS_SKIP_WITHOUT_HOPPER();
#if !defined(FLASHSIGMOID_CUDA_BACKWARD_ENABLED)
  GTEST_SKIP() << "the CUDA backward is off in this build (configured with -DFLASHSIGMOID_CUDA_BACKWARD=OFF)";
#endif
  Case c;
  c.name = "dispatch";
  c.dtype = flashsigmoid::DType::bfloat16;
  c.D = 0;  // a head dim the Hopper backward has, so that only the mode decides
  for (int d : fs_gpu::kBuiltHeadDims) {
    if (c.D == 0 && flashsigmoid::cuda::hopper::has_hopper_backward(d)) c.D = d;
  }
  if (c.D == 0) GTEST_SKIP() << "this build has neither of the Hopper backward's head dims 64, 128";
  c.Nq = c.Nk = 100;
  fs_gpu::check_backward(c, /*deterministic=*/true);
  EXPECT_STREQ(flashsigmoid::cuda::last_backward_kernel(), expected_kernel());
  Case v = c;
  v.lens_q = {40, 70};
  v.lens_k = {50, 90};
  fs_gpu::check_backward(v, /*deterministic=*/false);
  EXPECT_STREQ(flashsigmoid::cuda::last_backward_kernel(), expected_kernel());
}

INSTANTIATE_TEST_SUITE_P(Cases, HopperBackward,
                         ::testing::ValuesIn(fs_gpu::or_placeholder(hopper_backward_cases())),
                         [](const ::testing::TestParamInfo<Case>& info) { return info.param.name; });

}  // namespace
