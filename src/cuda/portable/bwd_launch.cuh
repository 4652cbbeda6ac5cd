// Host side of the portable backward, all on params.stream. Deterministic mode: the dK/dV kernel
// (once, or twice at head dims that split dV and dK), the dQ kernel, and the d(bias) reduction.
// Default mode (head dims without the split): the dK/dV kernel also adds dQ with fp32 atomics
// (5 GEMMs per tile pair instead of 7), then dQ is converted and d(bias) reduced. Workspaces and the
// finishing kernels: common/bwd_workspace.hpp.
#pragma once

#include <cuda_runtime.h>

#include <string>

#include "cuda/common/bwd_workspace.hpp"
#include "cuda/common/check.hpp"
#include "cuda/common/launch_limits.hpp"
#include "cuda/portable/bwd_kernel.cuh"
#include "cuda/portable/launch.hpp"

namespace flashsigmoid::cuda::portable {

// Set unconditionally: the 48 KiB default limit counts static shared memory too (the dQ and fused
// dK/dV kernels' warp sums), so a dynamic size at or just under 48 KiB can still need the opt-in.
template <class Kernel>
void set_smem(Kernel kernel, int bytes, const char* what) {
  check_cuda(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes), what);
}

// Deterministic mode (p.deterministic, or a head dim with kSplitDkDv): dK/dV kernel(s), dQ kernel
// (with per-query-block d(bias) partials). Otherwise: the fused dK/dV/dQ kernel (dQ by fp32 atomics
// into a zeroed workspace, per-key-block d(bias) partials), then dq_convert_kernel.
template <int D, class Element>
void run_bwd(const detail::BwdParams& p) {
  using Traits = BwdTraits<D, Element>;
  const auto stream = static_cast<cudaStream_t>(p.stream);
  const std::int64_t n_blocks = (p.seqlen_k + Traits::kBlockKeys - 1) / Traits::kBlockKeys;
  const std::int64_t m_blocks = (p.seqlen_q + Traits::kBlockQ - 1) / Traits::kBlockQ;
  check_launch_limits("CUDA backward", {{"query blocks", m_blocks, kMaxGridX},
                                        {"key blocks", n_blocks, kMaxGridX},
                                        {"heads", p.heads_q, kMaxGridYZ},
                                        {"sequences (batch)", p.batch, kMaxGridYZ}});
  const bool fused = !p.deterministic && !Traits::kSplitDkDv;

  // The d(bias) partials (per key block when fused, else per query block) and, when fused, the zeroed
  // fp32 dQ accumulator.
  const std::int64_t part_blocks = fused ? n_blocks : m_blocks;
  BwdWorkspace ws(p, p.batch * p.heads_q * part_blocks, fused, stream, "backward");
  float* const part = ws.part;
  float* const dq_accum = ws.dq_accum;

  // dK, dV (every key row is written, zeros where no query sees it), and dQ's terms when fused.
  if (n_blocks > 0 && p.batch > 0) {
    const dim3 grid(unsigned(n_blocks), unsigned(p.heads_kv), unsigned(p.batch));
    auto launch = [&](auto kernel, int smem) {
      set_smem(kernel, smem, "cudaFuncSetAttribute(backward dK/dV shared memory)");
      kernel<<<grid, Traits::kNThreads, smem, stream>>>(p, dq_accum, fused ? part : nullptr);
      check_cuda(cudaGetLastError(), "backward dK/dV kernel launch");
    };
    if constexpr (Traits::kSplitDkDv) {
      launch(&dkdv_kernel<Traits, DkDvMode::dv_only>, Traits::kSmemDkDv);
      launch(&dkdv_kernel<Traits, DkDvMode::dk_only>, Traits::kSmemDkDv);
    } else if (fused) {
      launch(&dkdv_kernel<Traits, DkDvMode::fused_dq>, Traits::kSmemDkDv + Traits::kSmemDs);
    } else {
      launch(&dkdv_kernel<Traits, DkDvMode::dk_dv>, Traits::kSmemDkDv);
    }
  }

  if (fused) {
    ws.convert_dq(p, stream);
  } else if (m_blocks > 0 && p.batch > 0) {  // dQ and the per-query-block d(bias) partials
    const dim3 grid(unsigned(m_blocks), unsigned(p.heads_q), unsigned(p.batch));
    auto kernel = &dq_kernel<Traits>;
    set_smem(kernel, Traits::kSmemDq, "cudaFuncSetAttribute(backward dQ shared memory)");
    kernel<<<grid, Traits::kNThreads, Traits::kSmemDq, stream>>>(p, part);
    check_cuda(cudaGetLastError(), "backward dQ kernel launch");
  }
  if (p.dbias != nullptr && p.heads_q > 0) ws.reduce_dbias(p, part_blocks, stream);
  ws.release(stream);
}

}  // namespace flashsigmoid::cuda::portable
