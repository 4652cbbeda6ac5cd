// Hopper (sm_90a) sigmoid-attention backward: TMA + mbarrier pipeline, warp specialisation
// (1 producer warpgroup, 2 consumer warpgroups with setmaxnreg), wgmma for every GEMM. Dense and
// varlen problems, head dims 64 / 128 (has_hopper_backward), both modes (deterministic: DqOrder);
// backend.cu routes everything else to the portable kernels. The math is the portable backward's:
// P = sigmoid(transform(S)), dS = dP P (1 - P), dV = P^T dO, dK = scale dS^T Q, dQ = scale dS K (fp32
// TMA reduce-adds into a workspace), d(bias) = sum dS.
// Split as the forward: tiles, shared memory and GEMM operand majors: bwd_traits.cuh; producer,
// consumers and the barrier protocol: bwd_mainloop.cuh; the deterministic mode's dQ order:
// bwd_dq_order.cuh; dK / dV stores: bwd_epilogue.cuh; host side: bwd_launch.cuh.
#pragma once

#include <cstdint>

#include <cutlass/arch/barrier.h>
#include <cutlass/arch/reg_reconfig.h>

#include "cuda/hopper/bwd_epilogue.cuh"
#include "cuda/hopper/bwd_mainloop.cuh"
#include "cuda/hopper/bwd_traits.cuh"
#include "cuda/hopper/shared_storage.cuh"

namespace flashsigmoid::cuda::hopper {

// Grid (key blocks, kv heads, batch); Traits::kNThreads threads; Traits::kSmemBytes dynamic shared memory.
// Only sm_90a device code is generated (cmake/cuda_kernels.cmake); any other device pass compiles
// to an empty kernel.
// kOrderedDq: the deterministic mode (DqOrder); a template flag, not a run-time branch, because its
// few extra values in the loop raised the default mode's spills (ptxas, D 128).
template <class Traits, bool kOrderedDq>
__global__ void __launch_bounds__(Traits::kNThreads, 1) bwd_kernel(const __grid_constant__ BwdKernelParams<Traits> prm) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using Pipeline = typename Traits::PipelineQdO;
  constexpr int BN = Traits::kBlockN;
  constexpr int D = Traits::kHeadDim;
  auto& ss = shared_storage<typename Traits::SharedStorage>();
  const detail::BwdParams& p = prm.p;
  // Deterministic mode: the highest key block first (DqOrder).
  const int n_block = kOrderedDq ? int(gridDim.x) - 1 - int(blockIdx.x) : int(blockIdx.x);
  const int hk = blockIdx.y;
  const int b = blockIdx.z;
  const detail::SeqInfo seq = detail::seq_info(p, b);
  const std::int64_t j0 = std::int64_t(n_block) * BN;
  const std::int64_t keys = seq.len_k - j0 < BN ? seq.len_k - j0 : BN;
  const BwdSteps steps = make_steps<Traits>(p, seq, b, hk, j0, keys);
  // This key block's d(bias) partial of query head hk * group + g is part[g * gridDim.x].
  float* part = prm.dbias_part != nullptr
                    ? prm.dbias_part + (std::int64_t(b) * p.heads_q + std::int64_t(hk) * steps.group) * gridDim.x +
                          n_block
                    : nullptr;

  const bool producer = threadIdx.x < 128;
  if (threadIdx.x == 0) ss.barrier_kv.init(1);  // the producer thread's arrive_and_expect_tx
  typename Pipeline::Params pipe_params;
  pipe_params.role = producer ? Pipeline::ThreadCategory::Producer : Pipeline::ThreadCategory::Consumer;
  pipe_params.is_leader = threadIdx.x == 0;
  pipe_params.num_consumers = Traits::kNConsumerThreads;
  pipe_params.transaction_bytes = 2 * Traits::kTmaBytesQ;  // Q and dO of one step
  Pipeline pipe(ss.pipe_qdo, pipe_params, Shape<_1, _1, _1>{});  // initialises the stage barriers
  cutlass::arch::fence_barrier_init();
  __syncthreads();

  if (producer) {
    cutlass::arch::warpgroup_reg_dealloc<Traits::kProducerRegs>();
    if (threadIdx.x == 0 && steps.count() > 0) {
      cute::prefetch_tma_descriptor(prm.tma_q.get_tma_descriptor());
      cute::prefetch_tma_descriptor(prm.tma_do.get_tma_descriptor());
      cute::prefetch_tma_descriptor(prm.tma_k.get_tma_descriptor());
      cute::prefetch_tma_descriptor(prm.tma_v.get_tma_descriptor());
      bwd_produce<Traits>(prm, ss, pipe, steps, seq, n_block, hk, b);
    }
  } else {
    cutlass::arch::warpgroup_reg_alloc<Traits::kConsumerRegs>();
    const int ctid = int(threadIdx.x) - 128;
    typename Traits::TiledMmaDKV mma_dkv;
    Tensor acc_dk = partition_fragment_C(mma_dkv, Shape<Int<BN>, Int<D>>{});
    Tensor acc_dv = partition_fragment_C(mma_dkv, Shape<Int<BN>, Int<D>>{});
    clear(acc_dk);
    clear(acc_dv);
    if (steps.count() > 0) {
      bwd_consume<Traits, kOrderedDq>(prm, ss, pipe, steps, b, hk, j0, part, acc_dk, acc_dv, ctid);
    } else if (part != nullptr) {  // no query sees this key block: its partials are 0
      for (int g = ctid; g < steps.group; g += Traits::kNConsumerThreads) part[std::int64_t(g) * gridDim.x] = 0.0f;
    }

    store_key_grads<Traits>(p, ss, acc_dk, acc_dv, seq, b, hk, j0, keys, ctid);
  }
#endif
}

}  // namespace flashsigmoid::cuda::hopper