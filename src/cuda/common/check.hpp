// CUDA runtime errors as flashsigmoid::Error, for every kernel family's host code.
#pragma once

#include <cuda_runtime.h>

#include <string>

#include "flashsigmoid/flashsigmoid.hpp"

namespace flashsigmoid::cuda {

inline void check_cuda(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    throw Error(std::string("flashsigmoid: CUDA error in ") + what + ": " + cudaGetErrorString(err));
  }
}

}  // namespace flashsigmoid::cuda
