// Host side of the KV-cache path: append, then attention (one split writes O directly; several
// write fp32 partials into a workspace that sum_splits adds). Everything is enqueued on p.stream:
// no host synchronisation, and the workspace (cudaMallocAsync / cudaFreeAsync on that stream) has
// a size that depends only on the shapes and the number of splits, so a call can be captured in
// a CUDA graph.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <string>

#include "cuda/common/check.hpp"
#include "cuda/common/device_info.hpp"
#include "cuda/decode/append_kernel.cuh"
#include "cuda/decode/attn_kernel.cuh"
#include "cuda/decode/launch.hpp"
#include "cuda/decode/splits.hpp"

namespace flashsigmoid::cuda::decode {

// A yes / no answer per device, worked out once per device index below 64 (a decode step takes
// microseconds, and runtime queries per call add up); `ask` may throw, and is then asked again.
class PerDevice {
 public:
  template <class Ask>
  bool get(int device, Ask&& ask) {
    if (device < 0 || device >= 64) return ask();
    const std::uint64_t bit = std::uint64_t(1) << device;
    if ((asked_.load(std::memory_order_acquire) & bit) == 0) {
      if (ask()) yes_.fetch_or(bit, std::memory_order_acq_rel);
      asked_.fetch_or(bit, std::memory_order_acq_rel);
    }
    return (yes_.load(std::memory_order_acquire) & bit) != 0;
  }

 private:
  std::atomic<std::uint64_t> asked_{0}, yes_{0};
};

// True when `sum` may be launched as a programmatic dependent on this device: only code built for
// sm_90 or later has the wait on the prerequisite grid (sum_splits_kernel); a kernel JIT-compiled
// from an older PTX target would read partials still being written.
template <class Kernel>
bool dependent_launch_safe(Kernel sum, int device) {
  static PerDevice safe;
  return safe.get(device, [&] {
    cudaFuncAttributes a{};
    const cudaError_t got = cudaFuncGetAttributes(&a, sum);
    if (got != cudaSuccess) cudaGetLastError();  // not left for the next launch check to find
    return got == cudaSuccess && a.ptxVersion >= 90 && a.binaryVersion >= 90;
  });
}

template <int D, class Element, int kWarpsM>
void run_attention(const detail::KVCacheParams& p, cudaStream_t stream) {
  using Traits = DecodeTraits<D, Element, kWarpsM>;
  constexpr int kSmem = Traits::kSmemBytes;
  const std::int64_t m_blocks = (p.seqlen_q * p.group_size() + Traits::kBlockM - 1) / Traits::kBlockM;
  const std::int64_t pairs = p.batch * p.heads_kv;
  const std::int64_t rows = p.batch * p.seqlen_q * p.heads_q;
  if (m_blocks > 65535 || pairs > 65535 || rows > 0x7fffffff / (D / 4)) {
    throw Error("flashsigmoid: KV-cache attention grid too large (" + std::to_string(m_blocks) +
                " row blocks of Nq_new * Hq / Hkv rows, " + std::to_string(pairs) +
                " (sequence, kv head) pairs, " + std::to_string(rows) +
                " output rows); accepted: at most 65535 row blocks and pairs, (2^31 - 1) / (D / 4) rows");
  }
  auto kernel = &decode_kernel<Traits>;
  const DeviceInfo info = device_info(p.device.index);
  if constexpr (kSmem > 48 * 1024) {
    static PerDevice smem_set;
    smem_set.get(p.device.index, [&] {
      check_cuda(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem),
                 "cudaFuncSetAttribute(KV-cache attention shared memory)");
      return true;
    });
  }
  int splits = p.num_splits;
  if (splits <= 0) {
    // Resident CTAs per SM: a property of the kernel and the device's architecture, asked once.
    static const int ctas_per_sm = [&] {
      int n = 0;
      check_cuda(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kernel, Traits::kNThreads, kSmem),
                 "cudaOccupancyMaxActiveBlocksPerMultiprocessor");
      return n;
    }();
    splits = auto_splits(m_blocks * pairs, p.cache_capacity, Traits::kBlockN, info.sms, ctas_per_sm);
  }
  const dim3 grid{unsigned(splits), unsigned(m_blocks), unsigned(pairs)};
  if (splits == 1) {
    kernel<<<grid, Traits::kNThreads, kSmem, stream>>>(p, nullptr);
    check_cuda(cudaGetLastError(), "KV-cache attention kernel launch");
    return;
  }
  void* workspace = nullptr;
  check_cuda(cudaMallocAsync(&workspace, std::size_t(splits) * rows * D * sizeof(float), stream),
             "cudaMallocAsync(KV-cache split workspace)");
  kernel<<<grid, Traits::kNThreads, kSmem, stream>>>(p, static_cast<float*>(workspace));
  const cudaError_t launched = cudaGetLastError();
  cudaError_t summed = cudaSuccess;
  if (launched == cudaSuccess) {
    // 256 / lanes float4 columns per CTA; on sm_90 a programmatic dependent of the attention.
    const int lanes = SumShape::lanes(splits);
    const std::int64_t ctas = (rows * (D / 4) + SumShape::kThreads / lanes - 1) / (SumShape::kThreads / lanes);
    cudaLaunchConfig_t config{};
    config.gridDim = dim3(unsigned(ctas));
    config.blockDim = dim3(SumShape::kThreads);
    config.stream = stream;
    cudaLaunchAttribute attr{};
    attr.id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr.val.programmaticStreamSerializationAllowed = 1;
    config.attrs = &attr;
    auto sum = lanes == 32 ? &sum_splits_kernel<D, Element, 32> : &sum_splits_kernel<D, Element, 4>;
    config.numAttrs = info.cc_major >= 9 && dependent_launch_safe(sum, p.device.index) ? 1 : 0;
    summed = cudaLaunchKernelEx(&config, sum, p, static_cast<const float*>(workspace), splits);
    if (summed != cudaSuccess) cudaGetLastError();  // reported below, not again by the next call
  }
  cudaFreeAsync(workspace, stream);
  check_cuda(launched, "KV-cache attention kernel launch");
  check_cuda(summed, "KV-cache split sum kernel launch");
}

template <int D, class Element>
void run_kvcache(const detail::KVCacheParams& p) {
  const auto stream = static_cast<cudaStream_t>(p.stream);
  if (p.k_new != nullptr && p.batch > 0 && p.seqlen_q > 0) {
    const std::int64_t chunks = (p.seqlen_q + AppendShape::kTokens - 1) / AppendShape::kTokens;
    if (chunks > 65535) {
      throw Error("flashsigmoid: KV-cache append of " + std::to_string(p.seqlen_q) +
                  " tokens per sequence; accepted: at most " + std::to_string(65535 * AppendShape::kTokens));
    }
    append_kernel<D><<<dim3(unsigned(p.batch), unsigned(chunks)), AppendShape::kThreads, 0, stream>>>(p);
    check_cuda(cudaGetLastError(), "KV-cache append kernel launch");
  }
  if (p.batch == 0 || p.seqlen_q == 0 || p.heads_q == 0) return;
  // Rows (Nq_new * Hq / Hkv) up to 16: the 4 warps split each key block; up to 32: two pairs of
  // warps, each pair a 32-key half; more: the warps split the rows (the same K/V bytes feed 64 rows).
  const std::int64_t rows = p.seqlen_q * p.group_size();
  if (rows <= 16) {
    run_attention<D, Element, 1>(p, stream);
  } else if (rows <= 32) {
    run_attention<D, Element, 2>(p, stream);
  } else {
    run_attention<D, Element, 4>(p, stream);
  }
}

}  // namespace flashsigmoid::cuda::decode
