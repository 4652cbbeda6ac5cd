// Shared by the backward GPU tests (portable and Hopper): one case run through flashsigmoid::backward
// on the GPU and checked against the float64 reference backward (SPEC.md's bounds, 2x the plain
// implementation's error, NaN-poisoned gradients, guard bands intact, d(bias) untouched when not
// requested), and the backward tests' case list.
#pragma once

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "device_buffer.hpp"
#include "device_problem.hpp"  // DeviceProblem, the shared case list, kBuiltHeadDims, tolerance
#include "flashsigmoid/flashsigmoid.hpp"
#include "problem.hpp"
#include "reference/reference.hpp"

namespace fs_gpu {

using flashsigmoid::BiasMode;
using flashsigmoid::testing::HostTensor;
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
inline void check_grad(const char* what, const std::vector<double>& ref, const std::vector<double>& plain,
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

inline void check_backward(const Case& c, bool deterministic) {
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

inline std::vector<Case> backward_cases() {
  std::vector<Case> base = base_cases();
  // Backward-specific extras: a key block seen by many query blocks of several heads (dK/dV loop
  // over a GQA group), and d(bias) with causal masking and uneven varlen blocks.
  add_case(base, "gqa_long_nk_causal_bias", [](Case& c) {
    c.Hq = 4; c.Hkv = 2; c.Nq = 190; c.Nk = 333; c.causal = true; c.bias_mode = BiasMode::per_head;
  });
  add_case(base, "varlen_window_bias", [](Case& c) {
    c.Hq = 2; c.Hkv = 1; c.lens_q = {0, 97, 64, 1}; c.lens_k = {33, 130, 0, 5};
    c.window_left = 40; c.window_right = 3; c.bias_mode = BiasMode::per_head;
  });
  return expand_cases(base);
}

}  // namespace fs_gpu
