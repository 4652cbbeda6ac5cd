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
#include <type_traits>
#include <utility>

#include "cuda/common/check.hpp"
#include "cuda/common/device_info.hpp"
#include "cuda/decode/append_kernel.cuh"
#include "cuda/decode/attn_kernel.cuh"
#include "cuda/decode/launch.hpp"
#include "cuda/decode/splits.hpp"

namespace flashsigmoid::cuda::decode {

// A non-negative number (or a yes / no answer) per device, worked out once per device index below 64
// (a decode step takes microseconds, and runtime queries per call add up); `ask` may throw, and is
// then asked again.
class PerDevice {
 public:
  template <class Ask>
  int get(int device, Ask&& ask) {
    if (device < 0 || device >= 64) return int(ask());
    const int stored = values_[device].load(std::memory_order_acquire);
    if (stored > 0) return stored - 1;
    const int n = int(ask());
    values_[device].store(n + 1, std::memory_order_release);
    return n;
  }

 private:
  std::atomic<int> values_[64] = {};  // n + 1; 0: not asked yet
};

// True when `Kernel` may be launched as a programmatic dependent on this device: only code built for
// sm_90 or later has the wait on the prerequisite grid; a kernel JIT-compiled from an older PTX target
// would read memory still being written.
template <auto Kernel>
bool built_for_sm90(int device) {
  static PerDevice safe;
  return safe.get(device, [&] {
    cudaFuncAttributes a{};
    const cudaError_t got = cudaFuncGetAttributes(&a, Kernel);
    if (got != cudaSuccess) cudaGetLastError();  // not left for the next launch check to find
    return got == cudaSuccess && a.ptxVersion >= 90 && a.binaryVersion >= 90;
  }) != 0;
}

// cudaLaunchKernelEx, optionally as a programmatic dependent of the stream's previous kernel.
template <class... Params, class... Args>
cudaError_t launch(void (*kernel)(Params...), dim3 grid, int threads, int smem, cudaStream_t stream, bool dependent,
                   Args&&... args) {
  cudaLaunchConfig_t config{};
  config.gridDim = grid;
  config.blockDim = dim3(unsigned(threads));
  config.dynamicSmemBytes = std::size_t(smem);
  config.stream = stream;
  cudaLaunchAttribute attr{};
  attr.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr.val.programmaticStreamSerializationAllowed = 1;
  config.attrs = &attr;
  config.numAttrs = dependent ? 1 : 0;
  const cudaError_t launched = cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...);
  if (launched != cudaSuccess) cudaGetLastError();  // reported by the caller, not by the next launch check
  return launched;
}

// The attention's grid: row blocks of block_m rows (Nq_new * Hq / Hkv rows per pair), (sequence, kv
// head) pairs, and the output rows that the split sum addresses.
struct AttnGrid {
  std::int64_t m_blocks, pairs, rows;
};
inline AttnGrid attn_grid(const detail::KVCacheParams& p, int block_m) {
  return {(p.seqlen_q * p.group_size() + block_m - 1) / block_m, p.batch * p.heads_kv,
          p.batch * p.seqlen_q * p.heads_q};
}

template <int D, class Element, int kWarpsM>
LaunchInfo run_attention(const detail::KVCacheParams& p, const LaunchChoice& choice, cudaStream_t stream) {
  using Traits = DecodeTraits<D, Element, kWarpsM>;
  constexpr int kSmem = Traits::kSmemBytes;
  constexpr int kThreads = Traits::kNThreads;
  const auto [m_blocks, pairs, rows] = attn_grid(p, Traits::kBlockM);
  constexpr auto kernel = &decode_kernel<Traits>;
  const int device = p.device.index;
  const DeviceInfo info = device_info(device);
  if constexpr (kSmem > 48 * 1024) {
    static PerDevice smem_set;
    smem_set.get(device, [&] {
      check_cuda(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem),
                 "cudaFuncSetAttribute(KV-cache attention shared memory)");
      return true;
    });
  }
  const bool dependent = choice.dependent_launch && info.cc_major >= 9 && built_for_sm90<kernel>(device);
  int splits = p.num_splits;
  if (splits <= 0) {
    // Resident CTAs per SM: a property of the kernel and the device, asked once per device.
    static PerDevice resident;
    const int ctas_per_sm = resident.get(device, [&] {
      int n = 0;
      check_cuda(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kernel, kThreads, kSmem),
                 "cudaOccupancyMaxActiveBlocksPerMultiprocessor");
      return n;
    });
    splits = auto_splits(m_blocks * pairs, p.cache_capacity, Traits::kBlockN, info.sms, ctas_per_sm);
  }
  const dim3 grid{unsigned(splits), unsigned(m_blocks), unsigned(pairs)};
  if (splits == 1) {
    check_cuda(launch(kernel, grid, kThreads, kSmem, stream, dependent, p, nullptr), "KV-cache attention kernel launch");
    return {1, "one split", dependent};
  }
  void* workspace = nullptr;
  check_cuda(cudaMallocAsync(&workspace, std::size_t(splits) * rows * D * sizeof(float), stream),
             "cudaMallocAsync(KV-cache split workspace)");
  const cudaError_t launched =
      launch(kernel, grid, kThreads, kSmem, stream, dependent, p, static_cast<float*>(workspace));
  cudaError_t summed = cudaSuccess;
  if (launched == cudaSuccess) {
    // 256 / lanes float4 columns per CTA; on sm_90 a programmatic dependent of the attention.
    const int lanes = SumShape::lanes(splits);
    const std::int64_t ctas = (rows * (D / 4) + SumShape::kThreads / lanes - 1) / (SumShape::kThreads / lanes);
    constexpr auto sum32 = &sum_splits_kernel<D, Element, 32>;
    constexpr auto sum4 = &sum_splits_kernel<D, Element, 4>;
    const bool sum_dependent = info.cc_major >= 9 && (lanes == 32 ? built_for_sm90<sum32>(device)
                                                                  : built_for_sm90<sum4>(device));
    summed = launch(lanes == 32 ? sum32 : sum4, dim3(unsigned(ctas)), SumShape::kThreads, 0, stream, sum_dependent,
                    p, static_cast<const float*>(workspace), splits);
  }
  cudaFreeAsync(workspace, stream);
  check_cuda(launched, "KV-cache attention kernel launch");
  check_cuda(summed, "KV-cache split sum kernel launch");
  return {splits, "kernel", dependent};
}

// What the attention kernel cannot take, rejected before anything is enqueued (the append writes the
// cache).
inline void check_shape(const detail::KVCacheParams& p, int block_m, int head_dim, int smem_bytes) {
  const DeviceInfo info = device_info(p.device.index);
  if (smem_bytes > info.smem_per_block) {
    throw Error("flashsigmoid: the KV-cache attention at head_dim " + std::to_string(head_dim) + " needs " +
                std::to_string(smem_bytes) + " bytes of shared memory per block; this GPU (sm_" +
                std::to_string(info.cc_major) + std::to_string(info.cc_minor) + ") allows " +
                std::to_string(info.smem_per_block) + "; accepted: head dims 64 and 128 on every sm_80+ GPU, 256 " +
                "where a block may have 160 KB (A100, H100 class)");
  }
  const auto [m_blocks, pairs, rows] = attn_grid(p, block_m);
  if (m_blocks > 65535 || pairs > 65535 || rows > 0x7fffffff / (head_dim / 4)) {
    throw Error("flashsigmoid: KV-cache attention grid too large (" + std::to_string(m_blocks) +
                " row blocks of Nq_new * Hq / Hkv rows, " + std::to_string(pairs) +
                " (sequence, kv head) pairs, " + std::to_string(rows) +
                " output rows); accepted: at most 65535 row blocks and pairs, (2^31 - 1) / (D / 4) rows");
  }
  // The attention kernel addresses a key with 32-bit row and page strides (sequence.cuh).
  constexpr std::int64_t kMax = 0x7fffffff;
  const bool paged = p.block_table != nullptr;
  for (const detail::OperandStrides* st : {&p.k_stride, &p.v_stride}) {
    const bool keys = st->row > kMax;
    if (keys || (paged && st->batch > kMax)) {
      throw Error("flashsigmoid: a KV-cache stride of " + std::to_string(keys ? st->row : st->batch) +
                  " elements between " + (keys ? "keys" : "pages") +
                  "; accepted on cuda: below 2^31 elements between keys and between pages");
    }
  }
}

template <int D, class Element>
LaunchInfo run_kvcache(const detail::KVCacheParams& p, const LaunchChoice& choice) {
  const auto stream = static_cast<cudaStream_t>(p.stream);
  // Rows (Nq_new * Hq / Hkv) up to 16: the 4 warps split each key block; up to 32: two pairs of
  // warps, each pair a 32-key half; more: the warps split the rows (the same K/V bytes feed 64 rows).
  const std::int64_t rows = p.seqlen_q * p.group_size();
  auto with_warps_m = [&](auto&& f) {
    if (rows <= 16) return f(std::integral_constant<int, 1>{});
    if (rows <= 32) return f(std::integral_constant<int, 2>{});
    return f(std::integral_constant<int, 4>{});
  };
  const bool attends = p.batch > 0 && p.seqlen_q > 0 && p.heads_q > 0;
  if (attends) {
    with_warps_m([&](auto w) {
      using Traits = DecodeTraits<D, Element, decltype(w)::value>;
      check_shape(p, Traits::kBlockM, D, Traits::kSmemBytes);
    });
  }
  if (p.k_new != nullptr && p.batch > 0 && p.seqlen_q > 0) {
    const std::int64_t chunks = (p.seqlen_q + AppendShape::kTokens - 1) / AppendShape::kTokens;
    if (chunks > 65535) {
      throw Error("flashsigmoid: KV-cache append of " + std::to_string(p.seqlen_q) +
                  " tokens per sequence; accepted: at most " + std::to_string(65535 * AppendShape::kTokens));
    }
    append_kernel<D><<<dim3(unsigned(p.batch), unsigned(chunks)), AppendShape::kThreads, 0, stream>>>(p);
    check_cuda(cudaGetLastError(), "KV-cache append kernel launch");
  }
  if (!attends) return {};
  return with_warps_m([&](auto w) { return run_attention<D, Element, decltype(w)::value>(p, choice, stream); });
}

}  // namespace flashsigmoid::cuda::decode
