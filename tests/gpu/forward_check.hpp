// Shared by the forward GPU tests (portable and Hopper): one case run through flashsigmoid::forward
// on the GPU and checked against the float64 reference (SPEC.md's bounds, 2x the plain
// implementation's error, NaN-poisoned output, guard band intact).
#pragma once

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <vector>

#include "device_buffer.hpp"
#include "device_problem.hpp"
#include "flashsigmoid/flashsigmoid.hpp"
#include "problem.hpp"
#include "reference/reference.hpp"

namespace fs_gpu {

inline void check_forward(const fs_test::Case& c) {
  const std::uint64_t seed = fs_test::test_seed();
  SCOPED_TRACE(fs_test::describe(c) + ", seed " + std::to_string(seed));
  const fs_test::Problem p = fs_test::make_problem(c, seed);
  const std::vector<double> ref = flashsigmoid::reference::forward(p.q, p.k, p.v, p.o);
  const std::vector<double> plain = flashsigmoid::reference::plain_forward(p.q, p.k, p.v, p.o);

  DeviceProblem d(p);
  const flashsigmoid::testing::HostTensor out = p.like_q();  // NaN-poisoned view, canary guard band
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

}  // namespace fs_gpu
