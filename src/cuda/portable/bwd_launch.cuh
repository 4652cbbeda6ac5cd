// Host side of the portable backward: the dK/dV kernel (once, or twice at head dims that split dV
// and dK), the dQ kernel, and the d(bias) reduction, all on params.stream. The d(bias) partials live
// in a stream-ordered workspace (cudaMallocAsync / cudaFreeAsync): no host synchronisation, so the
// backward can be captured in a CUDA graph.
#pragma once

#include <cuda_runtime.h>

#include <string>

#include "cuda/portable/bwd_kernel.cuh"
#include "cuda/portable/launch.hpp"

namespace flashsigmoid::cuda::portable {

// Set unconditionally: the 48 KiB default limit counts static shared memory too (the dQ kernel's
// warp sums), so a dynamic size at or just under 48 KiB can still need the opt-in.
template <class Kernel>
void set_smem(Kernel kernel, int bytes, const char* what) {
  check_cuda(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes), what);
}

template <int D, class Element>
void run_bwd(const detail::BwdParams& p) {
  using Traits = BwdTraits<D, Element>;
  const auto stream = static_cast<cudaStream_t>(p.stream);
  const std::int64_t n_blocks = (p.seqlen_k + Traits::kBlockKeys - 1) / Traits::kBlockKeys;
  const std::int64_t m_blocks = (p.seqlen_q + Traits::kBlockQ - 1) / Traits::kBlockQ;
  if (n_blocks > 0x7fffffff || m_blocks > 0x7fffffff || p.heads_q > 65535 || p.batch > 65535) {
    throw Error("flashsigmoid: CUDA backward grid too large (" + std::to_string(m_blocks) + " query blocks, " +
                std::to_string(n_blocks) + " key blocks, " + std::to_string(p.heads_q) + " heads, batch " +
                std::to_string(p.batch) + "); accepted: heads and batch <= 65535");
  }

  // dK, dV (every key row is written, zeros where no query sees it).
  if (n_blocks > 0 && p.batch > 0) {
    const dim3 grid(unsigned(n_blocks), unsigned(p.heads_kv), unsigned(p.batch));
    auto launch = [&](auto kernel) {
      set_smem(kernel, Traits::kSmemDkDv, "cudaFuncSetAttribute(backward dK/dV shared memory)");
      kernel<<<grid, Traits::kNThreads, Traits::kSmemDkDv, stream>>>(p);
      check_cuda(cudaGetLastError(), "backward dK/dV kernel launch");
    };
    if constexpr (Traits::kSplitDkDv) {
      launch(&dkdv_kernel<Traits, 1>);
      launch(&dkdv_kernel<Traits, 2>);
    } else {
      launch(&dkdv_kernel<Traits, 0>);
    }
  }

  // dQ and the per-block d(bias) partials.
  float* part = nullptr;
  const std::int64_t n_part = p.batch * p.heads_q * m_blocks;
  if (p.dbias != nullptr && n_part > 0) {
    check_cuda(cudaMallocAsync(reinterpret_cast<void**>(&part), std::size_t(n_part) * sizeof(float), stream),
               "cudaMallocAsync(backward d(bias) workspace)");
  }
  if (m_blocks > 0 && p.batch > 0) {
    const dim3 grid(unsigned(m_blocks), unsigned(p.heads_q), unsigned(p.batch));
    auto kernel = &dq_kernel<Traits>;
    set_smem(kernel, Traits::kSmemDq, "cudaFuncSetAttribute(backward dQ shared memory)");
    kernel<<<grid, Traits::kNThreads, Traits::kSmemDq, stream>>>(p, part);
    check_cuda(cudaGetLastError(), "backward dQ kernel launch");
  }
  if (p.dbias != nullptr && p.heads_q > 0) {
    const int threads = 128;
    const unsigned blocks = unsigned((p.heads_q + threads - 1) / threads);
    dbias_reduce_kernel<><<<blocks, threads, 0, stream>>>(part, p.dbias, int(p.batch), int(p.heads_q),
                                                          part != nullptr ? int(m_blocks) : 0);
    check_cuda(cudaGetLastError(), "backward d(bias) reduction launch");
  }
  if (part != nullptr) check_cuda(cudaFreeAsync(part, stream), "cudaFreeAsync(backward d(bias) workspace)");
}

}  // namespace flashsigmoid::cuda::portable
