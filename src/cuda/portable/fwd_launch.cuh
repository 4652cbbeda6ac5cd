// Host side of the portable forward: grid, shared-memory opt-in, launch on params.stream.
// No allocation and no synchronisation, so the launch can be captured in a CUDA graph.
#pragma once

#include <cuda_runtime.h>

#include <string>

#include "cuda/common/launch_limits.hpp"
#include "cuda/portable/fwd_kernel.cuh"
#include "cuda/portable/launch.hpp"

namespace flashsigmoid::cuda::portable {

template <int D, class Element>
void run_fwd(const detail::AttnParams& p) {
  using Traits = FwdTraits<D, Element>;
  constexpr int kSmem = Traits::kSmemBytes;
  const std::int64_t m_blocks = (p.seqlen_q + Traits::kBlockM - 1) / Traits::kBlockM;
  if (m_blocks == 0 || p.batch == 0) return;  // nothing to write
  check_launch_limits("CUDA forward", {{"query blocks", m_blocks, kMaxGridX},
                                       {"heads", p.heads_q, kMaxGridYZ},
                                       {"sequences (batch)", p.batch, kMaxGridYZ}});
  auto kernel = &fwd_kernel<Traits>;
  if constexpr (kSmem > 48 * 1024) {
    check_cuda(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem),
               "cudaFuncSetAttribute(forward shared memory)");
  }
  const dim3 grid(unsigned(m_blocks), unsigned(p.heads_q), unsigned(p.batch));
  kernel<<<grid, Traits::kNThreads, kSmem, static_cast<cudaStream_t>(p.stream)>>>(p);
  check_cuda(cudaGetLastError(), "forward kernel launch");
}

}  // namespace flashsigmoid::cuda::portable
