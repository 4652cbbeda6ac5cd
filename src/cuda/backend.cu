// CUDA backend entry: device queries and kernel dispatch.
#include <cuda_runtime.h>

#include "backends.hpp"

namespace flashsigmoid::detail {

bool cuda_backend_built() { return true; }

bool cuda_device_present() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

void cuda_forward(const AttnParams&) {
  throw Error("flashsigmoid: the CUDA forward kernels are not implemented yet; pass cpu tensors");
}
void cuda_backward(const BwdParams&) {
  throw Error("flashsigmoid: the CUDA backward kernels are not implemented yet; pass cpu tensors");
}

}  // namespace flashsigmoid::detail
