// Shared by the Hopper GPU tests (forward and backward): why they cannot run in this build or on
// this machine (empty when they can), and the macro that skips a test with that reason.
#pragma once

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <string>

#include "device_problem.hpp"  // fs_gpu::has_device

namespace fs_gpu {

inline std::string hopper_skip_reason() {
#if !defined(FLASHSIGMOID_HOPPER_ENABLED)
  return "this build does not dispatch to the Hopper kernels (configure with -DFLASHSIGMOID_HOPPER=ON)";
#else
  if (!has_device()) return "no CUDA device";
  int major = 0, minor = 0;
  cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, 0);
  cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, 0);
  if (major != 9 || minor != 0) {
    return "device 0 is sm_" + std::to_string(major) + std::to_string(minor) + ", the Hopper kernels need sm_90";
  }
  return "";
#endif
}

}  // namespace fs_gpu

#define FS_SKIP_WITHOUT_HOPPER()                                 \
  do {                                                           \
    const std::string why_ = fs_gpu::hopper_skip_reason();       \
    if (!why_.empty()) GTEST_SKIP() << why_;                     \
  } while (0)
