// GPU tests of the CUDA forward against the float64 reference (SPEC.md's error bounds), with
// poisoned outputs, guard bands, CUDA-graph capture and the dispatch errors. Every test skips
// when no CUDA device is visible.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <sstream>
#include <string>
#include <vector>

#include "device_buffer.hpp"
#include "device_problem.hpp"  // DeviceProblem, the shared case list, kBuiltHeadDims, tolerance
#include "forward_check.hpp"   // check_forward
#include "flashsigmoid/flashsigmoid.hpp"
#include "problem.hpp"  // tests/cpp: Case, make_problem, describe, test_seed
#include "reference/reference.hpp"

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

using fs_gpu::check_forward;

std::vector<Case> forward_cases() { return fs_gpu::expand_cases(fs_gpu::base_cases()); }

class GpuForward : public ::testing::TestWithParam<Case> {};

TEST_P(GpuForward, MatchesReference) {
  FS_SKIP_WITHOUT_GPU();
  check_forward(GetParam());
}

INSTANTIATE_TEST_SUITE_P(Cases, GpuForward, ::testing::ValuesIn(forward_cases()),
                         [](const ::testing::TestParamInfo<Case>& info) { return info.param.name; });

// Two runs on the same inputs give the same bits (the forward has no atomics).
TEST(GpuForwardMisc, Deterministic) {
  FS_SKIP_WITHOUT_GPU();
  Case c;
  c.dtype = DType::bfloat16;
  c.D = kBuiltHeadDims.front();
  c.Nq = c.Nk = 300;
  c.causal = true;
  const fs_test::Problem p = fs_test::make_problem(c, fs_test::test_seed());
  DeviceProblem d(p);
  const HostTensor out = p.like_q();
  DeviceTensor o1(out), o2(out);
  flashsigmoid::forward(d.q, d.k, d.v, o1, d.o);
  flashsigmoid::forward(d.q, d.k, d.v, o2, d.o);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  EXPECT_EQ(o1.download(), o2.download());
}

// The forward allocates nothing and never synchronises, so it can be captured and replayed.
TEST(GpuForwardMisc, CudaGraphCaptureReplay) {
  FS_SKIP_WITHOUT_GPU();
  Case c;
  c.name = "graph";
  c.dtype = DType::bfloat16;
  c.D = kBuiltHeadDims.back();
  c.B = 2;
  c.Hq = 4;
  c.Hkv = 2;
  c.Nq = 200;
  c.Nk = 333;
  c.causal = true;
  const std::uint64_t seed = fs_test::test_seed();
  SCOPED_TRACE(fs_test::describe(c) + ", seed " + std::to_string(seed));
  const fs_test::Problem p = fs_test::make_problem(c, seed);
  const std::vector<double> ref = flashsigmoid::reference::forward(p.q, p.k, p.v, p.o);
  DeviceProblem d(p);
  const HostTensor out = p.like_q();
  DeviceTensor dout(out);

  cudaStream_t stream;
  ASSERT_EQ(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), cudaSuccess);
  Options o = d.o;
  o.stream = stream;
  cudaGraph_t graph;
  ASSERT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal), cudaSuccess);
  flashsigmoid::forward(d.q, d.k, d.v, dout, o);
  ASSERT_EQ(cudaStreamEndCapture(stream, &graph), cudaSuccess);
  cudaGraphExec_t exec;
  ASSERT_EQ(cudaGraphInstantiate(&exec, graph, 0), cudaSuccess);

  // Nothing ran during capture: the output is still the NaN poison.
  ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
  {
    std::vector<unsigned char> bytes = dout.download();
    EXPECT_TRUE(std::isinf(flashsigmoid::testing::rel_l2(ref, dout.host_view(bytes))));
  }
  for (int replay = 0; replay < 3; ++replay) {
    ASSERT_EQ(cudaGraphLaunch(exec, stream), cudaSuccess);
    ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
    std::vector<unsigned char> bytes = dout.download();
    EXPECT_LE(flashsigmoid::testing::rel_l2(ref, dout.host_view(bytes)), tolerance(c.dtype)) << "replay " << replay;
    EXPECT_TRUE(dout.guard_intact(bytes));
    // Re-poison (0xFFFF is NaN in bf16) before the next replay.
    const TensorView v = dout.view();
    std::int64_t extent = 1;
    for (int i = 0; i < v.rank; ++i) extent += (v.shape[i] - 1) * v.stride[i];
    ASSERT_EQ(cudaMemset(v.data, 0xFF, extent * 2), cudaSuccess);
  }
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  cudaStreamDestroy(stream);
}

TEST(GpuForwardErrors, HeadDimNotBuilt) {
  FS_SKIP_WITHOUT_GPU();
  const int missing = fs_gpu::unbuilt_head_dim();
  if (missing == 0) GTEST_SKIP() << "every supported head dim is built";
  Case c;
  c.dtype = DType::float16;
  c.D = missing;
  c.Nq = c.Nk = 16;
  const fs_test::Problem p = fs_test::make_problem(c, 1);
  DeviceProblem d(p);
  const HostTensor out = p.like_q();
  DeviceTensor dout(out);
  fs_gpu::expect_error([&] { flashsigmoid::forward(d.q, d.k, d.v, dout, d.o); },
                       "head_dim " + std::to_string(missing) + " was not built");
}

// The library's own list of built head dims matches what this test binary was configured with.
TEST(GpuForwardErrors, BuiltHeadDimsListed) {
  std::vector<int> expected = kBuiltHeadDims;
  std::sort(expected.begin(), expected.end());
  EXPECT_EQ(flashsigmoid::cuda_head_dims(), expected);
}

// Row strides that are not multiples of 8 elements cannot use 16-byte vectors: a clear error.
TEST(GpuForwardErrors, MisalignedStrides) {
  FS_SKIP_WITHOUT_GPU();
  Case c;
  c.dtype = DType::bfloat16;
  c.D = kBuiltHeadDims.front();
  c.Nq = c.Nk = 16;
  c.layout = Layout::padded;  // strides padded by 3 elements
  const fs_test::Problem p = fs_test::make_problem(c, 1);
  DeviceProblem d(p);
  const HostTensor out = p.like_q();
  DeviceTensor dout(out);
  fs_gpu::expect_error([&] { flashsigmoid::forward(d.q, d.k, d.v, dout, d.o); },
                       "16-byte aligned");
}

}  // namespace
