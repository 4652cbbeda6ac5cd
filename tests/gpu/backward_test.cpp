// GPU tests of the CUDA backward (dQ, dK, dV, d(bias)) against the float64 reference backward
// (SPEC.md's error bounds), on the forward tests' case list, in both modes (Options::deterministic
// true: two kernels, no atomics; false, the default: dQ by fp32 atomics in the dK/dV kernel), with
// NaN-poisoned outputs and guard bands, determinism, CUDA-graph capture and the dispatch errors.
// Every test skips when no CUDA device is visible. On sm_90 in 90a builds the D 64/128 cases (both
// modes, dense and varlen) run the Hopper backward unless the test binary runs with
// --backward-kernel=portable (gpu_check.sh's portable pass); hopper_backward_test.cpp checks which
// kernel ran.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <tuple>
#include <vector>

#include "backward_check.hpp"  // DeviceGrads, check_backward, backward_cases
#include "device_buffer.hpp"
#include "device_problem.hpp"  // DeviceProblem, the shared case list, kBuiltHeadDims, tolerance
#include "flashsigmoid/flashsigmoid.hpp"
#include "problem.hpp"
#include "reference/reference.hpp"


// The CUDA backward is dispatched unless the build is configured with -DFLASHSIGMOID_CUDA_BACKWARD=OFF
// (then these tests say so and skip).
#if defined(FLASHSIGMOID_CUDA_BACKWARD_ENABLED)
#define FS_SKIP_WITHOUT_GPU_BACKWARD() FS_SKIP_WITHOUT_GPU()
#else
#define FS_SKIP_WITHOUT_GPU_BACKWARD() \
  GTEST_SKIP() << "the CUDA backward is off in this build (configured with -DFLASHSIGMOID_CUDA_BACKWARD=OFF)"
#endif

namespace {

using flashsigmoid::BiasMode;
using flashsigmoid::DType;
using flashsigmoid::Options;
using flashsigmoid::TensorView;
using flashsigmoid::testing::HostTensor;
using flashsigmoid::testing::Layout;
using fs_gpu::DeviceProblem;
using fs_gpu::DeviceTensor;
using fs_gpu::kBuiltHeadDims;
using fs_gpu::tolerance;
using fs_test::Alibi;
using fs_test::Case;
using fs_gpu::DeviceGrads;
using fs_gpu::backward_cases;
using fs_gpu::check_backward;

// (case, Options::deterministic); named <case>_det or <case>_atomic.
class GpuBackward : public ::testing::TestWithParam<std::tuple<Case, bool>> {};

TEST_P(GpuBackward, MatchesReference) {
  FS_SKIP_WITHOUT_GPU_BACKWARD();
  check_backward(std::get<0>(GetParam()), std::get<1>(GetParam()));
}

INSTANTIATE_TEST_SUITE_P(Cases, GpuBackward, ::testing::Combine(::testing::ValuesIn(backward_cases()), ::testing::Bool()),
                         [](const ::testing::TestParamInfo<std::tuple<Case, bool>>& info) {
                           return std::get<0>(info.param).name + (std::get<1>(info.param) ? "_det" : "_atomic");
                         });

Case misc_case(int D) {
  Case c;
  c.name = "misc";
  c.dtype = DType::bfloat16;
  c.D = D;
  c.B = 2; c.Hq = 4; c.Hkv = 2; c.Nq = 200; c.Nk = 333; c.causal = true; c.bias_mode = BiasMode::per_head;
  return c;
}

// Two runs on the same inputs give the same bits in dK, dV and d(bias), and in dQ too when
// `deterministic` (the mode is set; the default mode is checked to be the default).
void expect_reproducible(bool deterministic) {
  for (int D : kBuiltHeadDims) {
    const fs_test::Problem p = fs_test::make_problem(misc_case(D), fs_test::test_seed());
    DeviceProblem d(p);
    if (deterministic) {
      d.o.deterministic = true;
    } else {
      ASSERT_FALSE(d.o.deterministic);
    }
    DeviceGrads g1(p, true), g2(p, true);
    flashsigmoid::backward(d.q, d.k, d.v, d.dout, g1.grads(), d.o);
    flashsigmoid::backward(d.q, d.k, d.v, d.dout, g2.grads(), d.o);
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    if (deterministic) EXPECT_EQ(g1.dq.download(), g2.dq.download()) << "D " << D;
    EXPECT_EQ(g1.dk.download(), g2.dk.download()) << "D " << D;
    EXPECT_EQ(g1.dv.download(), g2.dv.download()) << "D " << D;
    EXPECT_EQ(g1.dbias.download(), g2.dbias.download()) << "D " << D;
  }
}

// Options::deterministic: two runs on the same inputs give the same bits (portable: every output
// element and every d(bias) partial has one owner; Hopper: dQ added in a fixed order).
TEST(GpuBackwardMisc, Deterministic) {
  FS_SKIP_WITHOUT_GPU_BACKWARD();
  expect_reproducible(true);
}

// The default mode adds dQ with atomics, so only dQ's bits may change between runs: dK and dV keep
// one owner, and d(bias) is still summed in a fixed order (per-key-block partials). README says so.
TEST(GpuBackwardMisc, DefaultModeReproducibleExceptDq) {
  FS_SKIP_WITHOUT_GPU_BACKWARD();
  expect_reproducible(false);
}

// The backward never synchronises; its allocations (the d(bias) partials, the default mode's fp32
// dQ workspace and its memset) are stream-ordered, so it can be captured and replayed, in both modes.
class GpuBackwardGraph : public ::testing::TestWithParam<bool> {};

TEST_P(GpuBackwardGraph, CudaGraphCaptureReplay) {
  FS_SKIP_WITHOUT_GPU_BACKWARD();
  const Case c = misc_case(kBuiltHeadDims.back());
  const std::uint64_t seed = fs_test::test_seed();
  SCOPED_TRACE(fs_test::describe(c) + ", seed " + std::to_string(seed) + (GetParam() ? ", deterministic" : ""));
  const fs_test::Problem p = fs_test::make_problem(c, seed);
  const auto ref = flashsigmoid::reference::backward(p.q, p.k, p.v, p.dout, p.o);
  DeviceProblem d(p);
  DeviceGrads g(p, true);

  cudaStream_t stream;
  ASSERT_EQ(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), cudaSuccess);
  Options o = d.o;
  o.stream = stream;
  o.deterministic = GetParam();
  cudaGraph_t graph;
  ASSERT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal), cudaSuccess);
  flashsigmoid::backward(d.q, d.k, d.v, d.dout, g.grads(), o);
  ASSERT_EQ(cudaStreamEndCapture(stream, &graph), cudaSuccess);
  cudaGraphExec_t exec;
  ASSERT_EQ(cudaGraphInstantiate(&exec, graph, 0), cudaSuccess);
  ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
  {
    std::vector<unsigned char> bytes = g.dq.download();  // nothing ran during capture
    EXPECT_TRUE(std::isinf(flashsigmoid::testing::rel_l2(ref.dq, g.dq.host_view(bytes))));
  }
  auto poison = [](const DeviceTensor& t) {
    const TensorView v = t.view();
    std::int64_t extent = 1;
    for (int i = 0; i < v.rank; ++i) extent += (v.shape[i] - 1) * v.stride[i];
    return cudaMemset(v.data, 0xFF, extent * flashsigmoid::element_size(v.dtype));  // NaN in bf16 and fp32
  };
  for (int replay = 0; replay < 3; ++replay) {
    ASSERT_EQ(cudaGraphLaunch(exec, stream), cudaSuccess);
    ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
    const std::pair<const char*, std::pair<const std::vector<double>*, const DeviceTensor*>> outs[] = {
        {"dq", {&ref.dq, &g.dq}}, {"dk", {&ref.dk, &g.dk}}, {"dv", {&ref.dv, &g.dv}}, {"dbias", {&ref.dbias, &g.dbias}}};
    for (const auto& [name, rt] : outs) {
      std::vector<unsigned char> bytes = rt.second->download();
      EXPECT_LE(flashsigmoid::testing::rel_l2(*rt.first, rt.second->host_view(bytes)), tolerance(c.dtype))
          << name << ", replay " << replay;
      EXPECT_TRUE(rt.second->guard_intact(bytes)) << name;
      ASSERT_EQ(poison(*rt.second), cudaSuccess);
    }
  }
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  cudaStreamDestroy(stream);
}

INSTANTIATE_TEST_SUITE_P(Modes, GpuBackwardGraph, ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& info) { return info.param ? "det" : "atomic"; });

#if !defined(FLASHSIGMOID_CUDA_BACKWARD_ENABLED)
// With the backward off, a CUDA backward call says so (before touching the device, so no GPU is
// needed: the views point at host memory that is never read).
TEST(GpuBackwardErrors, OffInThisBuild) {
  alignas(16) static std::uint16_t dummy[8];
  auto view = [&](std::int64_t n) {
    return TensorView::contiguous(dummy, DType::bfloat16, {1, n, 1, 64}, {flashsigmoid::DeviceType::cuda, 0});
  };
  flashsigmoid::Gradients g{view(16), view(16), view(16), {}};
  fs_gpu::expect_error([&] { flashsigmoid::backward(view(16), view(16), view(16), view(16), g); },
                       "the CUDA backward is off in this build (configured with -DFLASHSIGMOID_CUDA_BACKWARD=OFF)");
}
#endif

TEST(GpuBackwardErrors, HeadDimNotBuilt) {
  FS_SKIP_WITHOUT_GPU_BACKWARD();
  const int missing = fs_gpu::unbuilt_head_dim();
  if (missing == 0) GTEST_SKIP() << "every supported head dim is built";
  Case c;
  c.dtype = DType::float16;
  c.D = missing;
  c.Nq = c.Nk = 16;
  const fs_test::Problem p = fs_test::make_problem(c, 1);
  DeviceProblem d(p);
  DeviceGrads g(p, false);
  fs_gpu::expect_error([&] { flashsigmoid::backward(d.q, d.k, d.v, d.dout, g.grads(), d.o); },
                       "head_dim " + std::to_string(missing) + " was not built");
}

TEST(GpuBackwardErrors, MisalignedStrides) {
  FS_SKIP_WITHOUT_GPU_BACKWARD();
  Case c;
  c.dtype = DType::bfloat16;
  c.D = kBuiltHeadDims.front();
  c.Nq = c.Nk = 16;
  c.layout = Layout::padded;  // strides padded by 3 elements
  const fs_test::Problem p = fs_test::make_problem(c, 1);
  DeviceProblem d(p);
  DeviceGrads g(p, false);
  fs_gpu::expect_error([&] { flashsigmoid::backward(d.q, d.k, d.v, d.dout, g.grads(), d.o); },
                       "16-byte aligned");
}

}  // namespace
