// CUDA backend entry: device queries and kernel dispatch.
#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include <cutlass/numeric_types.h>

#include "backends.hpp"
#include "cuda/portable/launch.hpp"

// FLASHSIGMOID_CUDA_HDIM_<D> and FLASHSIGMOID_CUDA_BUILT_HEAD_DIMS come from cmake/cuda_kernels.cmake.
#ifndef FLASHSIGMOID_CUDA_BUILT_HEAD_DIMS
#define FLASHSIGMOID_CUDA_BUILT_HEAD_DIMS "none"
#endif

namespace flashsigmoid::detail {
namespace {

// Runs on the tensors' device, restoring the caller's current device afterwards.
class DeviceGuard {
 public:
  explicit DeviceGuard(int index) {
    cuda::check_cuda(cudaGetDevice(&prev_), "cudaGetDevice");
    if (prev_ != index) cuda::check_cuda(cudaSetDevice(index), "cudaSetDevice");
    else prev_ = -1;
  }
  ~DeviceGuard() {
    if (prev_ >= 0) cudaSetDevice(prev_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int prev_ = -1;
};

// The kernels move 16-byte vectors: every row must start on a 16-byte boundary.
void check_alignment(const char* name, const void* ptr, const OperandStrides& s) {
  const bool ok = reinterpret_cast<std::uintptr_t>(ptr) % 16 == 0 && s.batch % 8 == 0 && s.row % 8 == 0 &&
                  s.head % 8 == 0;
  if (!ok) {
    throw Error(std::string("flashsigmoid: the CUDA kernels need ") + name +
                " 16-byte aligned with batch/row/head strides that are multiples of 8 elements; got strides (" +
                std::to_string(s.batch) + ", " + std::to_string(s.row) + ", " + std::to_string(s.head) + ")");
  }
}

template <class Element>
void forward_dtype(const AttnParams& p) {
  switch (p.head_dim) {
#ifdef FLASHSIGMOID_CUDA_HDIM_32
    case 32: return cuda::portable::run_fwd<32, Element>(p);
#endif
#ifdef FLASHSIGMOID_CUDA_HDIM_64
    case 64: return cuda::portable::run_fwd<64, Element>(p);
#endif
#ifdef FLASHSIGMOID_CUDA_HDIM_96
    case 96: return cuda::portable::run_fwd<96, Element>(p);
#endif
#ifdef FLASHSIGMOID_CUDA_HDIM_128
    case 128: return cuda::portable::run_fwd<128, Element>(p);
#endif
#ifdef FLASHSIGMOID_CUDA_HDIM_256
    case 256: return cuda::portable::run_fwd<256, Element>(p);
#endif
    default:
      throw Error("flashsigmoid: head_dim " + std::to_string(p.head_dim) +
                  " was not built in this library; built: " FLASHSIGMOID_CUDA_BUILT_HEAD_DIMS
                  " (configure with -DFLASHSIGMOID_HEAD_DIMS=...)");
  }
}

}  // namespace

bool cuda_backend_built() { return true; }

bool cuda_device_present() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

void cuda_forward(const AttnParams& p) {
  check_alignment("q", p.q, p.q_stride);
  check_alignment("k", p.k, p.k_stride);
  check_alignment("v", p.v, p.v_stride);
  check_alignment("out", p.o, p.o_stride);
  DeviceGuard guard(p.device.index);
  if (p.dtype == DType::bfloat16) {
    forward_dtype<cutlass::bfloat16_t>(p);
  } else if (p.dtype == DType::float16) {
    forward_dtype<cutlass::half_t>(p);
  } else {
    throw Error(std::string("flashsigmoid: the CUDA forward takes float16 or bfloat16, got ") + to_string(p.dtype));
  }
}

void cuda_backward(const BwdParams&) {
  throw Error("flashsigmoid: the CUDA backward kernels are not implemented yet; pass cpu tensors");
}

}  // namespace flashsigmoid::detail
