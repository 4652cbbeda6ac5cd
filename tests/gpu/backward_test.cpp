// GPU tests of the CUDA backward (dQ, dK, dV, d(bias)) against the float64 reference backward
// (SPEC.md's error bounds), on the forward tests' case list, in both modes (Options::deterministic
// true: two kernels, no atomics; false, the default: dQ by fp32 atomics in the dK/dV kernel), with
// NaN-poisoned outputs and guard bands, determinism, CUDA-graph capture and the dispatch errors.
// Every test skips when no CUDA device is visible.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <tuple>
#include <vector>

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

// Poisoned gradient buffers (NaN inside the view, canary around it) on the host and the device.
struct DeviceGrads {
  HostTensor hq, hk, hv, hbias;
  DeviceTensor dq, dk, dv, dbias;
  bool with_bias;
  DeviceGrads(const fs_test::Problem& p, bool bias)
      : hq(p.like_q()), hk(p.like_k()), hv(p.like_k()), hbias(DType::float32, {p.c.Hq}), dq(hq), dk(hk), dv(hv),
        dbias(hbias), with_bias(bias) {}
  flashsigmoid::Gradients grads() const {
    flashsigmoid::Gradients g{dq, dk, dv, {}};
    if (with_bias) g.dbias = dbias;
    return g;
  }
};

// One gradient vs the reference: SPEC's bound for the dtype and 2x the plain implementation's error.
void check_grad(const char* what, const std::vector<double>& ref, const std::vector<double>& plain,
                const DeviceTensor& got, double bound, double plain_floor) {
  SCOPED_TRACE(what);
  std::vector<unsigned char> bytes = got.download();
  const double err = flashsigmoid::testing::rel_l2(ref, got.host_view(bytes));  // +inf if a NaN survived
  const double plain_err = flashsigmoid::testing::rel_l2(ref, plain);
  EXPECT_LE(err, bound) << what << " rel L2 vs float64 reference (plain materialising: " << plain_err << ")";
  EXPECT_LE(err, std::max(2.0 * plain_err, plain_floor))
      << what << " rel L2 " << err << " worse than 2x the plain implementation's " << plain_err;
  EXPECT_TRUE(got.guard_intact(bytes)) << what << ": bytes outside the view were written";
}

void check_backward(const Case& c, bool deterministic) {
  const std::uint64_t seed = fs_test::test_seed();
  SCOPED_TRACE(fs_test::describe(c) + ", seed " + std::to_string(seed) +
               (deterministic ? ", deterministic" : ", default mode (atomic dQ)"));
  const fs_test::Problem p = fs_test::make_problem(c, seed);
  const auto ref = flashsigmoid::reference::backward(p.q, p.k, p.v, p.dout, p.o);
  const auto plain = flashsigmoid::reference::plain_backward(p.q, p.k, p.v, p.dout, p.o);

  const bool with_bias = c.bias_mode == BiasMode::per_head;
  DeviceProblem d(p);
  d.o.deterministic = deterministic;
  DeviceGrads g(p, with_bias);
  flashsigmoid::backward(d.q, d.k, d.v, d.dout, g.grads(), d.o);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess) << cudaGetErrorString(cudaGetLastError());

  const double tol = tolerance(c.dtype);
  check_grad("dq", ref.dq, plain.dq, g.dq, tol, 1e-6);
  check_grad("dk", ref.dk, plain.dk, g.dk, tol, 1e-6);
  check_grad("dv", ref.dv, plain.dv, g.dv, tol, 1e-6);
  if (with_bias) {
    // d(bias)_h = sum of dS_h is fp32 but computed from the same dS that feeds dK and dQ: each dS
    // term carries the error of P (tanh.approx, as in the forward) times a random-signed dP, so its
    // relative error behaves like dK's and is held to the input dtype's SPEC bound. The plain
    // implementation sums its (dtype-rounded) dS in fp32 without rounding the result, so "2x plain"
    // gets a floor of half that bound: our dS is not rounded but P's tanh.approx error remains.
    check_grad("dbias", ref.dbias, plain.dbias, g.dbias, tol, 0.5 * tol);
  } else {
    std::vector<unsigned char> bytes = g.dbias.download();
    EXPECT_TRUE(g.dbias.guard_intact(bytes));
    for (std::int64_t h = 0; h < c.Hq; ++h) {  // not requested: left untouched (still the NaN poison)
      EXPECT_TRUE(std::isnan(flashsigmoid::testing::to_vector(g.dbias.host_view(bytes))[h]));
    }
  }
}

std::vector<Case> backward_cases() {
  std::vector<Case> base = fs_gpu::base_cases();
  // Backward-specific extras: a key block seen by many query blocks of several heads (dK/dV loop
  // over a GQA group), and d(bias) with causal masking and uneven varlen blocks.
  Case c;
  c.name = "gqa_long_nk_causal_bias";
  c.Hq = 4;
  c.Hkv = 2;
  c.Nq = 190;
  c.Nk = 333;
  c.causal = true;
  c.bias_mode = BiasMode::per_head;
  base.push_back(c);
  Case v;
  v.name = "varlen_window_bias";
  v.Hq = 2;
  v.Hkv = 1;
  v.lens_q = {0, 97, 64, 1};
  v.lens_k = {33, 130, 0, 5};
  v.window_left = 40;
  v.window_right = 3;
  v.bias_mode = BiasMode::per_head;
  base.push_back(v);
  return fs_gpu::expand_cases(base);
}

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
  c.B = 2;
  c.Hq = 4;
  c.Hkv = 2;
  c.Nq = 200;
  c.Nk = 333;
  c.causal = true;
  c.bias_mode = BiasMode::per_head;
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

// Options::deterministic: two runs on the same inputs give the same bits (every output element and
// every d(bias) partial has one owner; no atomics).
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
