// Host side of the Hopper backward: workspaces, TMA descriptors, then on params.stream the wgmma
// dK/dV/dQ kernel, dQ's conversion (dQ = scale * workspace, in dQ's dtype) and, with d(bias), the
// reduction of the per-key-block partials. Workspaces and their finishing kernels:
// common/bwd_workspace.hpp, as in the portable backward.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "cuda/common/bwd_workspace.hpp"
#include "cuda/common/check.hpp"
#include "cuda/common/launch_limits.hpp"
#include "cuda/hopper/bwd_kernel.cuh"
#include "cuda/hopper/fwd_launch.cuh"  // tma_view
#include "cuda/hopper/launch.hpp"

namespace flashsigmoid::cuda::hopper {

// Dense or varlen problems with at least one query and one key row in all, either mode (backend.cu's
// try_hopper_backward decides). Varlen: one CTA column per key block of the longest sequence; the
// blocks past a shorter sequence's end find no keys and write nothing.
template <int D, class Element>
void run_bwd(const detail::BwdParams& p) {
  using Traits = BwdTraits<D, Element>;
  const auto stream = static_cast<cudaStream_t>(p.stream);
  const std::int64_t n_blocks = (p.seqlen_k + Traits::kBlockN - 1) / Traits::kBlockN;
  // Rows the TMA descriptors span: the packed tensors (varlen) or one sequence (dense), as the forward.
  const bool varlen = p.is_varlen();
  const std::int64_t rows_q = varlen ? p.total_q : p.seqlen_q;
  const std::int64_t rows_k = varlen ? p.total_k : p.seqlen_k;
  const std::int64_t tma_batch = varlen ? 1 : p.batch;
  check_launch_limits("Hopper backward", {{"key blocks", n_blocks, kMaxGridX},
                                          {"heads", p.heads_q, kMaxGridYZ},
                                          {"sequences (batch)", p.batch, kMaxGridYZ},
                                          {"query rows", rows_q, kMaxGridX},
                                          {"key rows", rows_k, kMaxGridX}});
  if (p.batch == 0 || n_blocks == 0) return;

  const std::int64_t m_blocks = (p.seqlen_q + Traits::kBlockM - 1) / Traits::kBlockM;
  const std::int64_t n_flags = p.batch * p.heads_q * m_blocks * Traits::kNConsumerWarpGroups;
  if (p.deterministic) check_launch_limits("Hopper backward (deterministic)", {{"dQ order flags", n_flags, kMaxGridX}});

  // d(bias) partials per (batch, query head, key block) and the zeroed fp32 dQ workspace.
  BwdWorkspace ws(p, p.batch * p.heads_q * n_blocks, true, stream, "Hopper backward");

  BwdKernelParams<Traits> prm{};
  prm.p = p;
  prm.dbias_part = ws.part;
  // Deterministic mode: the flags that order the dQ adds (bwd_kernel.cuh's DqOrder).
  prm.dq_order = p.deterministic ? ws.zeroed_flags(n_flags, stream) : nullptr;
  prm.m_blocks = int(m_blocks);
  auto gQ = tma_view<Traits>(p.q, rows_q, p.heads_q, tma_batch, p.q_stride);
  auto gdO = tma_view<Traits>(p.dout, rows_q, p.heads_q, tma_batch, p.do_stride);
  auto gK = tma_view<Traits>(p.k, rows_k, p.heads_kv, tma_batch, p.k_stride);
  auto gV = tma_view<Traits>(p.v, rows_k, p.heads_kv, tma_batch, p.v_stride);
  prm.shape_q = gQ.shape();
  prm.shape_k = gK.shape();
  const auto tile_q = Shape<Int<Traits::kBlockM>, Int<D>>{};
  const auto tile_k = Shape<Int<Traits::kBlockN>, Int<D>>{};
  prm.tma_q = make_tma_copy(SM90_TMA_LOAD{}, gQ, take<0, 2>(typename Traits::SmemLayoutQ{}), tile_q, _1{});
  prm.tma_do = make_tma_copy(SM90_TMA_LOAD{}, gdO, take<0, 2>(typename Traits::SmemLayoutDo{}), tile_q, _1{});
  prm.tma_k = make_tma_copy(SM90_TMA_LOAD{}, gK, typename Traits::SmemLayoutK{}, tile_k, _1{});
  prm.tma_v = make_tma_copy(SM90_TMA_LOAD{}, gV, typename Traits::SmemLayoutV{}, tile_k, _1{});
  // The dQ workspace: one warpgroup's (kBlockM, D / 2) part per reduce-add.
  auto gDq = tma_view<Traits, float>(ws.dq_accum, rows_q, p.heads_q, tma_batch, dq_accum_strides<D>(p));
  prm.tma_dq = make_tma_copy(SM90_TMA_REDUCE_ADD{}, gDq, typename Traits::SmemLayoutDq{},
                             Shape<Int<Traits::kBlockM>, Int<Traits::kDqCols>>{}, _1{});

  auto kernel = p.deterministic ? &bwd_kernel<Traits, true> : &bwd_kernel<Traits, false>;
  check_cuda(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Traits::kSmemBytes),
             "cudaFuncSetAttribute(Hopper backward shared memory)");
  const dim3 grid(unsigned(n_blocks), unsigned(p.heads_kv), unsigned(p.batch));
  kernel<<<grid, Traits::kNThreads, Traits::kSmemBytes, stream>>>(prm);
  check_cuda(cudaGetLastError(), "Hopper backward kernel launch");

  ws.convert_dq(p, stream);  // dQ = scale * dq_accum, as the portable fused mode
  if (ws.part != nullptr && p.heads_q > 0) ws.reduce_dbias(p, n_blocks, stream);
  ws.release(stream);
}

}  // namespace flashsigmoid::cuda::hopper
