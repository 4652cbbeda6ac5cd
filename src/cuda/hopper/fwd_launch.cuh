// Host side of the Hopper forward: TMA descriptors, grid, shared-memory opt-in, launch on
// params.stream. No allocation and no synchronisation, so the launch can be captured in a CUDA
// graph (the descriptors travel inside the kernel parameters).
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <string>

#include "cuda/hopper/fwd_kernel.cuh"
#include "cuda/common/device_info.hpp"
#include "cuda/hopper/launch.hpp"
#include "cuda/hopper/tile_scheduler.cuh"
#include "cuda/common/check.hpp"
#include "cuda/common/launch_limits.hpp"

namespace flashsigmoid::cuda::hopper {

// A (rows, D, heads, batch) view of one operand for make_tma_copy. TMA wants every global stride
// a multiple of 16 bytes (backend.cu's check_alignment guarantees it); a mode of extent 1 is never
// indexed past 0, so its stride (which may be 0 or anything for such a mode) is replaced by one
// TMA accepts. Value: the element type seen (the inputs: const Element; the backward's fp32 dQ
// workspace, which a TMA reduce-add writes: float).
template <class Traits, class Value = const typename Traits::Element>
auto tma_view(const void* ptr, std::int64_t rows, std::int64_t heads, std::int64_t batch,
              const detail::OperandStrides& s) {
  auto safe = [](std::int64_t extent, std::int64_t stride) { return extent == 1 ? std::int64_t(8) : stride; };
  auto shape = typename Traits::ShapeQKV{int32_t(rows), int32_t(Traits::kHeadDim), int32_t(heads), int32_t(batch)};
  auto stride = typename Traits::StrideQKV{safe(rows, s.row), _1{}, safe(heads, s.head), safe(batch, s.batch)};
  return make_tensor(make_gmem_ptr(static_cast<Value*>(const_cast<void*>(ptr))), make_layout(shape, stride));
}

template <int D, class Element>
void run_fwd(const detail::AttnParams& p, const Schedule& schedule) {
  using Traits = FwdTraits<D, Element>;
  constexpr int kSmem = Traits::kSmemBytes;
  const std::int64_t m_blocks = (p.seqlen_q + Traits::kBlockM - 1) / Traits::kBlockM;
  if (m_blocks == 0 || p.batch == 0) return;  // nothing to write
  // Rows the TMA descriptors span: the packed tensors (varlen) or one sequence (dense).
  const bool varlen = p.is_varlen();
  const std::int64_t rows_q = varlen ? p.total_q : p.seqlen_q;
  const std::int64_t rows_k = varlen ? p.total_k : p.seqlen_k;
  const std::int64_t tma_batch = varlen ? 1 : p.batch;
  if (rows_q == 0) return;  // varlen with no query rows: nothing to write
  check_launch_limits("Hopper forward", {{"query blocks", m_blocks, kMaxGridX},
                                         {"heads", p.heads_q, kMaxGridYZ},
                                         {"sequences (batch)", p.batch, kMaxGridYZ},
                                         {"query rows", rows_q, kMaxGridX},
                                         {"key rows", rows_k, kMaxGridX}});

  FwdParams<Traits> prm{};
  prm.p = p;
  auto gQ = tma_view<Traits>(p.q, rows_q, p.heads_q, tma_batch, p.q_stride);
  auto gK = tma_view<Traits>(p.k, rows_k, p.heads_kv, tma_batch, p.k_stride);
  auto gV = tma_view<Traits>(p.v, rows_k, p.heads_kv, tma_batch, p.v_stride);
  prm.shape_q = gQ.shape();
  prm.shape_k = gK.shape();
  prm.tma_q = make_tma_copy(SM90_TMA_LOAD{}, gQ, typename Traits::SmemLayoutQ{},
                            Shape<Int<Traits::kBlockM>, Int<D>>{}, _1{});
  prm.tma_k = make_tma_copy(SM90_TMA_LOAD{}, gK, take<0, 2>(typename Traits::SmemLayoutK{}),
                            Shape<Int<Traits::kBlockN>, Int<D>>{}, _1{});
  prm.tma_v = make_tma_copy(SM90_TMA_LOAD{}, gV, take<0, 2>(typename Traits::SmemLayoutV{}),
                            Shape<Int<Traits::kBlockN>, Int<D>>{}, _1{});

  const std::int64_t tiles = m_blocks * p.heads_q * p.batch;
  check_launch_limits("Hopper forward", {{"tiles of 128 query rows", tiles, kMaxGridX}});
  FwdProblem problem;
  problem.m_blocks = m_blocks;
  problem.heads = p.heads_q;
  problem.batch = p.batch;
  problem.causal = p.causal;
  problem.seqlen_k = p.seqlen_k;
  problem.mean_keys = varlen ? (p.total_k + p.batch - 1) / std::max<std::int64_t>(p.batch, 1) : p.seqlen_k;
  problem.kv_bytes_per_key = 2 * D * std::int64_t(sizeof(Element));
  problem.group_size = p.group_size();
  const DeviceInfo device = device_info(p.device.index);
  const FwdLaunchPlan plan = plan_forward(problem, device.sms, device.l2_bytes, schedule);
  prm.sched = plan.sched;

  auto kernel = &fwd_kernel<Traits>;
  check_cuda(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem),
             "cudaFuncSetAttribute(Hopper forward shared memory)");
  const dim3 grid(unsigned(plan.grid));  // plan_forward (tile_scheduler.cuh) says why
  kernel<<<grid, Traits::kNThreads, kSmem, static_cast<cudaStream_t>(p.stream)>>>(prm);
  check_cuda(cudaGetLastError(), "Hopper forward kernel launch");
}

}  // namespace flashsigmoid::cuda::hopper
