// CUDA backend entry: device queries and kernel dispatch.
#include <cuda_runtime.h>

#include <cstdint>
#include <string>
#include <type_traits>

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

// Calls f(std::integral_constant<int, D>{}) for the built head dim D == head_dim; the forward and
// the backward share this list and its error.
template <class F>
void dispatch_head_dim(std::int64_t head_dim, F&& f) {
  switch (head_dim) {
#ifdef FLASHSIGMOID_CUDA_HDIM_32
    case 32: return f(std::integral_constant<int, 32>{});
#endif
#ifdef FLASHSIGMOID_CUDA_HDIM_64
    case 64: return f(std::integral_constant<int, 64>{});
#endif
#ifdef FLASHSIGMOID_CUDA_HDIM_96
    case 96: return f(std::integral_constant<int, 96>{});
#endif
#ifdef FLASHSIGMOID_CUDA_HDIM_128
    case 128: return f(std::integral_constant<int, 128>{});
#endif
#ifdef FLASHSIGMOID_CUDA_HDIM_256
    case 256: return f(std::integral_constant<int, 256>{});
#endif
    default:
      throw Error("flashsigmoid: head_dim " + std::to_string(head_dim) +
                  " was not built in this library; built: " FLASHSIGMOID_CUDA_BUILT_HEAD_DIMS
                  " (configure with -DFLASHSIGMOID_HEAD_DIMS=...)");
  }
}

// Calls f(Element{}) for the CUTLASS element type of dtype (fp16 / bf16 only).
template <class F>
void dispatch_dtype(DType dtype, const char* what, F&& f) {
  if (dtype == DType::bfloat16) {
    f(cutlass::bfloat16_t{});
  } else if (dtype == DType::float16) {
    f(cutlass::half_t{});
  } else {
    throw Error(std::string("flashsigmoid: the CUDA ") + what + " takes float16 or bfloat16, got " +
                to_string(dtype));
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
  dispatch_dtype(p.dtype, "forward", [&](auto element) {
    using Element = decltype(element);
    dispatch_head_dim(p.head_dim, [&](auto d) { cuda::portable::run_fwd<decltype(d)::value, Element>(p); });
  });
}

// Deterministic whatever p.deterministic says: every output element is owned by one CTA (no atomics).
void cuda_backward(const BwdParams& p) {
#if !defined(FLASHSIGMOID_CUDA_BACKWARD_ENABLED)
  // Built and compiled in every CUDA build, but dispatched only once it has passed the GPU
  // tests on a GPU (bench/NOTES.md, issue 3).
  throw Error("flashsigmoid: the CUDA backward is not validated on a GPU yet and is off in this build; "
              "configure with -DFLASHSIGMOID_CUDA_BACKWARD=ON to use it, or run the backward on cpu tensors");
#endif
  check_alignment("q", p.q, p.q_stride);
  check_alignment("k", p.k, p.k_stride);
  check_alignment("v", p.v, p.v_stride);
  check_alignment("dout", p.dout, p.do_stride);
  check_alignment("dq", p.dq, p.dq_stride);
  check_alignment("dk", p.dk, p.dk_stride);
  check_alignment("dv", p.dv, p.dv_stride);
  DeviceGuard guard(p.device.index);
  dispatch_dtype(p.dtype, "backward", [&](auto element) {
    using Element = decltype(element);
    dispatch_head_dim(p.head_dim, [&](auto d) { cuda::portable::run_bwd<decltype(d)::value, Element>(p); });
  });
}

}  // namespace flashsigmoid::detail
