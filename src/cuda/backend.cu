// CUDA backend entry: device queries and kernel dispatch.
#include <cuda_runtime.h>

#include <cstdint>
#include <string>
#include <type_traits>

#include <cutlass/numeric_types.h>

#include "backends.hpp"
#include "cuda/common/device_info.hpp"
#include "cuda/common/zero_rows.cuh"
#include "cuda/decode/launch.hpp"
#include "cuda/hopper/launch.hpp"
#include "cuda/kernel_choice.hpp"
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

// Varlen: an output's rows past the last sequence (cu_seqlens[batch] .. total) get zeros.
template <class Element>
void zero_varlen_tail(const char* name, void* out, const OperandStrides& s, std::int64_t heads, std::int64_t dim,
                      const std::int32_t* cu_seqlens, std::int64_t batch, std::int64_t total, void* stream) {
  const cudaError_t err = cuda::zero_rows_from<Element>(out, s, heads, dim, cu_seqlens + batch, total,
                                                        static_cast<cudaStream_t>(stream));
  if (err != cudaSuccess) {
    throw Error(std::string("flashsigmoid: zeroing the rows of ") + name +
                " past the last sequence failed: " + cudaGetErrorString(err));
  }
}

thread_local const char* g_last_forward_kernel = "none";
thread_local const char* g_last_backward_kernel = "none";
thread_local cuda::KernelChoice g_kernel_choice;
thread_local cuda::decode::LaunchInfo g_last_kvcache_launch;

#if defined(FLASHSIGMOID_HOPPER_ENABLED)
// True when device `index` has compute capability 9.0 (H100/H200: the sm_90a kernels run there).
// Cached per device (device_info).
bool is_sm90(int index) { return index >= 0 && cuda::device_info(index).is_sm90(); }
#endif

// Runs the Hopper forward when this build dispatches to it and it covers the problem (a head dim it
// was built for, dense or varlen, at least one key row (a TMA descriptor needs a non-empty tensor), an
// sm_90 device), unless the thread's kernel choice forces the portable kernel; returns false to leave
// the problem to the portable kernel.
template <int D, class Element>
bool try_hopper_forward([[maybe_unused]] const AttnParams& p, [[maybe_unused]] const cuda::KernelChoice& choice) {
#if defined(FLASHSIGMOID_HOPPER_ENABLED)
  if constexpr (cuda::hopper::has_hopper_forward(D)) {
    const std::int64_t key_rows = p.is_varlen() ? p.total_k : p.seqlen_k;
    if (choice.forward == cuda::KernelFamily::automatic && key_rows > 0 && is_sm90(p.device.index)) {
      cuda::hopper::run_fwd<D, Element>(p, choice.hopper_schedule);
      return true;
    }
  }
#endif
  return false;
}

// Runs the Hopper backward when this build has it for D and it covers the
// problem: dense or varlen, either mode (deterministic: dQ adds in a fixed order), query and key
// rows to build TMA descriptors over, an sm_90 device.
// Returns false to leave the problem to the portable kernels.
template <int D, class Element>
bool try_hopper_backward([[maybe_unused]] const BwdParams& p, [[maybe_unused]] cuda::KernelFamily family) {
#if defined(FLASHSIGMOID_HOPPER_ENABLED)
  if constexpr (cuda::hopper::has_hopper_backward(D)) {
    const std::int64_t query_rows = p.is_varlen() ? p.total_q : p.seqlen_q;
    const std::int64_t key_rows = p.is_varlen() ? p.total_k : p.seqlen_k;
    if (family == cuda::KernelFamily::automatic && query_rows > 0 && key_rows > 0 && p.batch > 0 &&
        is_sm90(p.device.index)) {
      cuda::hopper::run_bwd<D, Element>(p);
      return true;
    }
  }
#endif
  return false;
}

// The KV-cache kernels' head dims (64 / 128 / 256, where FLASHSIGMOID_HEAD_DIMS builds them).
template <class F>
void dispatch_decode_head_dim(std::int64_t head_dim, F&& f) {
  switch (head_dim) {
#ifdef FLASHSIGMOID_DECODE_HDIM_64
    case 64: return f(std::integral_constant<int, 64>{});
#endif
#ifdef FLASHSIGMOID_DECODE_HDIM_128
    case 128: return f(std::integral_constant<int, 128>{});
#endif
#ifdef FLASHSIGMOID_DECODE_HDIM_256
    case 256: return f(std::integral_constant<int, 256>{});
#endif
    default:
      throw Error("flashsigmoid: the CUDA KV-cache attention has no kernel for head_dim " + std::to_string(head_dim) +
                  " in this library; it takes 64, 128 and 256 where built (built head dims: " FLASHSIGMOID_CUDA_BUILT_HEAD_DIMS
                  "; configure with -DFLASHSIGMOID_HEAD_DIMS=...)");
  }
}

}  // namespace

bool cuda_backend_built() { return true; }

// Asks dispatch_head_dim itself, so this list cannot drift from what the kernels accept.
std::vector<int> cuda_built_head_dims() {
  std::vector<int> dims;
  for (int d : kSupportedHeadDims) {
    try {
      dispatch_head_dim(d, [](auto) {});
      dims.push_back(d);
    } catch (const Error&) {
    }
  }
  return dims;
}

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
  const cuda::KernelChoice& choice = g_kernel_choice;
  dispatch_dtype(p.dtype, "forward", [&](auto element) {
    using Element = decltype(element);
    dispatch_head_dim(p.head_dim, [&](auto d) {
      constexpr int D = decltype(d)::value;
      if (try_hopper_forward<D, Element>(p, choice)) {
        g_last_forward_kernel = "hopper";
      } else {
        cuda::portable::run_fwd<D, Element>(p);
        g_last_forward_kernel = "portable";
      }
    });
    if (p.is_varlen()) {
      zero_varlen_tail<Element>("out", p.o, p.o_stride, p.heads_q, p.head_dim, p.cu_seqlens_q, p.batch, p.total_q,
                                p.stream);
    }
  });
}

// p.deterministic picks the portable backward's mode: true, every output element is owned by one CTA
// (no atomics, bitwise reproducible); false (the default), dQ is added with fp32 atomics inside the
// dK/dV kernel (faster; dQ's last bits depend on the order of the atomics; dK, dV and d(bias) stay
// reproducible). Head dims whose dK/dV kernel runs in two passes (256) always take the first mode.
// On sm_90, problems at D 64 / 128 (dense or varlen, either mode) go to the Hopper backward
// (try_hopper_backward), which keeps each mode's guarantees (deterministic: dQ added in a fixed order).
void cuda_backward(const BwdParams& p) {
#if !defined(FLASHSIGMOID_CUDA_BACKWARD_ENABLED)
  // A build configured with FLASHSIGMOID_CUDA_BACKWARD=OFF has no backward kernels, and says so.
  (void)p;
  throw Error("flashsigmoid: the CUDA backward is off in this build (configured with "
              "-DFLASHSIGMOID_CUDA_BACKWARD=OFF); reconfigure with ON, or run the backward on cpu tensors");
#else
  check_alignment("q", p.q, p.q_stride);
  check_alignment("k", p.k, p.k_stride);
  check_alignment("v", p.v, p.v_stride);
  check_alignment("dout", p.dout, p.do_stride);
  check_alignment("dq", p.dq, p.dq_stride);
  check_alignment("dk", p.dk, p.dk_stride);
  check_alignment("dv", p.dv, p.dv_stride);
  DeviceGuard guard(p.device.index);
  const cuda::KernelFamily family = g_kernel_choice.backward;
  dispatch_dtype(p.dtype, "backward", [&](auto element) {
    using Element = decltype(element);
    dispatch_head_dim(p.head_dim, [&](auto d) {
      constexpr int D = decltype(d)::value;
      if (try_hopper_backward<D, Element>(p, family)) {
        g_last_backward_kernel = "hopper";
      } else {
        cuda::portable::run_bwd<D, Element>(p);
        g_last_backward_kernel = "portable";
      }
    });
    if (p.is_varlen()) {
      zero_varlen_tail<Element>("dq", p.dq, p.dq_stride, p.heads_q, p.head_dim, p.cu_seqlens_q, p.batch, p.total_q,
                                p.stream);
      zero_varlen_tail<Element>("dk", p.dk, p.dk_stride, p.heads_kv, p.head_dim, p.cu_seqlens_k, p.batch, p.total_k,
                                p.stream);
      zero_varlen_tail<Element>("dv", p.dv, p.dv_stride, p.heads_kv, p.head_dim, p.cu_seqlens_k, p.batch, p.total_k,
                                p.stream);
    }
  });
#endif
}

// Validation checked shapes, dtypes and devices only (reading cache_seqlens / block_table would
// need a host sync); the kernels check those values per sequence (src/cuda/decode/sequence.cuh).
void cuda_forward_kvcache(const KVCacheParams& p) {
  check_alignment("q", p.q, p.q_stride);
  check_alignment("out", p.o, p.o_stride);
  check_alignment("k_cache", p.k, p.k_stride);
  check_alignment("v_cache", p.v, p.v_stride);
  if (p.k_new != nullptr) {
    check_alignment("k", p.k_new, p.k_new_stride);
    check_alignment("v", p.v_new, p.v_new_stride);
  }
  DeviceGuard guard(p.device.index);
  dispatch_dtype(p.dtype, "KV-cache attention", [&](auto element) {
    using Element = decltype(element);
    dispatch_decode_head_dim(p.head_dim, [&](auto d) {
      constexpr int D = decltype(d)::value;
      g_last_kvcache_launch = cuda::decode::run_kvcache<D, Element>(p, g_kernel_choice.decode);
    });
  });
}

}  // namespace flashsigmoid::detail

namespace flashsigmoid::cuda {
const char* last_forward_kernel() { return detail::g_last_forward_kernel; }
const char* last_backward_kernel() { return detail::g_last_backward_kernel; }
KernelChoice& kernel_choice() { return detail::g_kernel_choice; }
decode::LaunchInfo last_kvcache_launch() { return detail::g_last_kvcache_launch; }
}  // namespace flashsigmoid::cuda
