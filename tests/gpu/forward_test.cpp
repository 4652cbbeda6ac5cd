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
using fs_gpu::DeviceTensor;
using fs_test::Alibi;
using fs_test::Case;

// Head dims compiled into this build (from FLASHSIGMOID_HEAD_DIMS).
const std::vector<int> kBuiltHeadDims = {FLASHSIGMOID_TEST_HEAD_DIMS};

double tolerance(DType t) { return t == DType::bfloat16 ? 1e-2 : 2e-3; }

// The problem's tensors mirrored on the GPU, and the options pointing at them.
struct DeviceProblem {
  DeviceTensor q, k, v, cu_q, cu_k, bias, alibi;
  Options o;
  explicit DeviceProblem(const fs_test::Problem& p) : q(p.q), k(p.k), v(p.v) {
    o = p.o;
    if (p.o.cu_seqlens_q.defined()) {
      cu_q = DeviceTensor(p.cu_q);
      cu_k = DeviceTensor(p.cu_k);
      o.cu_seqlens_q = cu_q;
      o.cu_seqlens_k = cu_k;
    }
    if (p.o.bias.defined()) {
      bias = DeviceTensor(p.bias);
      o.bias = bias;
    }
    if (p.o.alibi_slopes.defined()) {
      alibi = DeviceTensor(p.alibi);
      o.alibi_slopes = alibi;
    }
  }
};

void check_forward(const Case& c) {
  const std::uint64_t seed = fs_test::test_seed();
  SCOPED_TRACE(fs_test::describe(c) + ", seed " + std::to_string(seed));
  const fs_test::Problem p = fs_test::make_problem(c, seed);
  const std::vector<double> ref = flashsigmoid::reference::forward(p.q, p.k, p.v, p.o);
  const std::vector<double> plain = flashsigmoid::reference::plain_forward(p.q, p.k, p.v, p.o);

  DeviceProblem d(p);
  const HostTensor out = p.like_q();  // NaN-poisoned view, canary guard band
  DeviceTensor dout(out);
  flashsigmoid::forward(d.q, d.k, d.v, dout, d.o);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess) << cudaGetErrorString(cudaGetLastError());

  std::vector<unsigned char> bytes = dout.download();
  const double err = flashsigmoid::testing::rel_l2(ref, dout.host_view(bytes));
  const double plain_err = flashsigmoid::testing::rel_l2(ref, plain);
  EXPECT_LE(err, tolerance(c.dtype)) << "rel L2 vs float64 reference (plain materialising: " << plain_err << ")";
  EXPECT_LE(err, std::max(2.0 * plain_err, 1e-6)) << "worse than 2x the plain implementation's " << plain_err;
  EXPECT_TRUE(dout.guard_intact(bytes)) << "bytes outside the output view were written";
}

std::vector<Case> forward_cases() {
  std::vector<Case> base;
  auto add = [&](std::string name, auto&& edit) {
    Case c;
    c.name = std::move(name);
    edit(c);
    base.push_back(c);
  };
  add("basic", [](Case& c) { c.B = 2; c.Nq = c.Nk = 130; });
  add("one_block", [](Case& c) { c.B = 1; c.Nq = c.Nk = 64; });
  add("tiny", [](Case& c) { c.B = 3; c.Nq = 1; c.Nk = 1; });
  add("short_q", [](Case& c) { c.Nq = 5; c.Nk = 3; });
  add("nq_lt_nk", [](Case& c) { c.Nq = 77; c.Nk = 513; });
  add("nq_gt_nk", [](Case& c) { c.Nq = 300; c.Nk = 45; });
  add("causal", [](Case& c) { c.Nq = c.Nk = 257; c.causal = true; });
  add("causal_nq_lt_nk", [](Case& c) { c.Nq = 100; c.Nk = 300; c.causal = true; });
  add("causal_nq_gt_nk", [](Case& c) { c.Nq = 300; c.Nk = 100; c.causal = true; });  // rows with no keys
  add("window", [](Case& c) { c.Nq = c.Nk = 300; c.window_left = 32; c.window_right = 16; });
  add("window_left_causal", [](Case& c) { c.Nq = c.Nk = 333; c.window_left = 64; c.causal = true; });
  add("window_right_only", [](Case& c) { c.Nq = 200; c.Nk = 260; c.window_right = 20; });
  add("window_zero", [](Case& c) { c.Nq = c.Nk = 150; c.window_left = 0; c.window_right = 0; });
  add("alibi_per_head", [](Case& c) { c.Nq = c.Nk = 200; c.alibi = Alibi::per_head; });
  add("alibi_per_batch_causal", [](Case& c) { c.Nq = 90; c.Nk = 170; c.causal = true; c.alibi = Alibi::per_batch; });
  add("bias_scalar", [](Case& c) { c.Nq = c.Nk = 140; c.bias_mode = BiasMode::scalar; c.bias_value = -3.5f; });
  add("bias_per_head", [](Case& c) { c.Hq = 4; c.Hkv = 4; c.Nq = c.Nk = 140; c.bias_mode = BiasMode::per_head; });
  add("scale", [](Case& c) { c.Nq = c.Nk = 100; c.scale = 0.3f; });
  add("gqa", [](Case& c) { c.Hq = 8; c.Hkv = 2; c.Nq = 70; c.Nk = 190; });
  add("mqa_causal", [](Case& c) { c.Hq = 4; c.Hkv = 1; c.Nq = c.Nk = 160; c.causal = true; });
  add("heads_major", [](Case& c) { c.Hq = 4; c.Hkv = 2; c.Nq = c.Nk = 129; c.layout = Layout::heads_major; });
  add("long_causal", [](Case& c) { c.B = 1; c.Hq = c.Hkv = 1; c.Nq = c.Nk = 1500; c.causal = true; });
  add("empty_keys", [](Case& c) { c.Nq = 20; c.Nk = 0; });
  add("varlen", [](Case& c) { c.Hq = 4; c.Hkv = 2; c.lens_q = {37, 0, 200, 129}; c.lens_k = {50, 10, 180, 129}; });
  add("varlen_causal", [](Case& c) { c.lens_q = {1, 65, 300}; c.lens_k = {1, 200, 300}; c.causal = true; });
  add("varlen_window_alibi", [](Case& c) {
    c.lens_q = {130, 3, 64}; c.lens_k = {130, 0, 100}; c.window_left = 17; c.window_right = 5; c.alibi = Alibi::per_batch;
  });
  add("varlen_gqa_bias", [](Case& c) {
    c.Hq = 6; c.Hkv = 3; c.lens_q = {70, 129}; c.lens_k = {90, 64}; c.bias_mode = BiasMode::per_head;
  });

  std::vector<Case> cases;
  for (int D : kBuiltHeadDims) {
    for (DType t : {DType::bfloat16, DType::float16}) {
      for (Case c : base) {
        c.D = D;
        c.dtype = t;
        c.name += std::string(t == DType::bfloat16 ? "_bf16" : "_fp16") + "_d" + std::to_string(D);
        cases.push_back(c);
      }
    }
  }
  return cases;
}

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
  int missing = 0;
  for (int D : flashsigmoid::kSupportedHeadDims) {
    if (std::find(kBuiltHeadDims.begin(), kBuiltHeadDims.end(), D) == kBuiltHeadDims.end()) missing = D;
  }
  if (missing == 0) GTEST_SKIP() << "every supported head dim is built";
  Case c;
  c.dtype = DType::float16;
  c.D = missing;
  c.Nq = c.Nk = 16;
  const fs_test::Problem p = fs_test::make_problem(c, 1);
  DeviceProblem d(p);
  const HostTensor out = p.like_q();
  DeviceTensor dout(out);
  try {
    flashsigmoid::forward(d.q, d.k, d.v, dout, d.o);
    FAIL() << "expected flashsigmoid::Error for head_dim " << missing;
  } catch (const flashsigmoid::Error& e) {
    EXPECT_NE(std::string(e.what()).find("head_dim " + std::to_string(missing) + " was not built"), std::string::npos)
        << e.what();
  }
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
  try {
    flashsigmoid::forward(d.q, d.k, d.v, dout, d.o);
    FAIL() << "expected flashsigmoid::Error";
  } catch (const flashsigmoid::Error& e) {
    EXPECT_NE(std::string(e.what()).find("16-byte aligned"), std::string::npos) << e.what();
  }
}

}  // namespace
