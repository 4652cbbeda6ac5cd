// Hopper (sm_90a) sigmoid-attention forward: TMA + mbarrier pipeline, warp specialisation
// (1 producer warpgroup, 2 consumer warpgroups with setmaxnreg), wgmma for S = Q K^T (SS) and
// O += P V (RS, P from registers). No row max, no row sum, no rescaling: partial sums over key
// blocks simply add. Persistent: at most one CTA per SM, each running a static sequence of tiles
// (tile_scheduler.cuh); while its consumers store one tile's O, its producer already loads the
// next tile's Q, K and V.
//
// Only sm_90a device code is generated (cmake/cuda_kernels.cmake compiles these units for arch
// 90a only); the body is guarded so that any other device pass compiles to an empty kernel.
#pragma once

#include <cstdint>

#include <cutlass/arch/reg_reconfig.h>

#include "cuda/hopper/fwd_epilogue.cuh"
#include "cuda/hopper/fwd_mainloop.cuh"
#include "cuda/hopper/fwd_traits.cuh"
#include "cuda/hopper/shared_storage.cuh"

namespace flashsigmoid::cuda::hopper {

template <class Traits>
__global__ void __launch_bounds__(Traits::kNThreads, 1) fwd_kernel(const __grid_constant__ FwdParams<Traits> prm) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using Element = typename Traits::Element;
  using SharedStorage = typename Traits::SharedStorage;
  using PipelineKV = typename Traits::PipelineKV;
  SharedStorage& ss = shared_storage<SharedStorage>();
  const detail::AttnParams& p = prm.p;

  const int warp_group = threadIdx.x / 128;  // 0: producer, 1..2: consumers
  const bool producer = warp_group == 0;
  const TileScheduler& sched = prm.sched;

  // ---- barriers (see fwd_mainloop.cuh for who arrives and who waits) ----
  if (threadIdx.x == 0) {
    ss.barrier_q.init(1);                                  // the producer thread's arrive_and_expect_tx
    ss.barrier_q_empty.init(Traits::kNConsumerThreads);    // every consumer thread, once per use
  }
  typename PipelineKV::Params pipe_params;
  pipe_params.role = producer ? PipelineKV::ThreadCategory::Producer : PipelineKV::ThreadCategory::Consumer;
  pipe_params.is_leader = threadIdx.x == 0;  // the one thread that arms the full barriers
  pipe_params.num_consumers = Traits::kNConsumerThreads;  // empty barriers: one arrival per consumer thread
  pipe_params.transaction_bytes = Traits::kTmaBytesKV;
  // The constructors initialise the barriers (warp 0, one elected lane) and fence the init.
  PipelineKV pipe_k(ss.pipe_k, pipe_params, Shape<_1, _1, _1>{});
  PipelineKV pipe_v(ss.pipe_v, pipe_params, Shape<_1, _1, _1>{});
  cutlass::arch::fence_barrier_init();
  __syncthreads();  // every barrier is initialised before anyone arrives or waits

  if (producer) {
    cutlass::arch::warpgroup_reg_dealloc<Traits::kProducerRegs>();
    if (threadIdx.x == 0) {
      cute::prefetch_tma_descriptor(prm.tma_q.get_tma_descriptor());
      cute::prefetch_tma_descriptor(prm.tma_k.get_tma_descriptor());
      cute::prefetch_tma_descriptor(prm.tma_v.get_tma_descriptor());
      auto state_k = cutlass::make_producer_start_state<PipelineKV>();
      auto state_v = cutlass::make_producer_start_state<PipelineKV>();
      int q_uses = 0;
      for (int round = 0, t = sched.tile(0); t < sched.num_tiles(); t = sched.tile(++round)) {
        const WorkTile w = make_work_tile<Traits>(p, sched.coord(t));
        if (w.rows <= 0 || w.n_blocks == 0) continue;
        produce<Traits>(prm, ss, pipe_k, pipe_v, w, state_k, state_v, q_uses);
        ++q_uses;
      }
      // No producer_tail: the CTA is not in a cluster, and its consumers wait for every load, so
      // the CTA cannot exit with a TMA load in flight.
    }
  } else {
    cutlass::arch::warpgroup_reg_alloc<Traits::kConsumerRegs>();
    const int ctid = int(threadIdx.x) - 128;
    typename Traits::TiledMmaPV mma_pv;
    Tensor acc_o = partition_fragment_C(mma_pv, Shape<Int<Traits::kBlockM>, Int<Traits::kHeadDim>>{});
    typename Traits::PipelineState state_k;  // consumers start at stage 0, phase 0
    typename Traits::PipelineState state_v;
    int q_uses = 0;
    for (int round = 0, t = sched.tile(0); t < sched.num_tiles(); t = sched.tile(++round)) {
      const WorkTile w = make_work_tile<Traits>(p, sched.coord(t));
      if (w.rows <= 0) continue;  // varlen: this sequence is shorter than max_seqlen_q
      clear(acc_o);
      const bool used_q = w.n_blocks > 0;
      if (used_q) {
        consume<Traits>(ss, pipe_k, pipe_v, w, acc_o, ctid, state_k, state_v, q_uses);
        if constexpr (Traits::kOwnO) ss.barrier_q_empty.arrive();  // every GEMM reading Q is done
      }
      Element* o_tile = static_cast<Element*>(p.o) + p.o_stride.offset(w.b, w.seq.q_begin + w.m0, w.h);
      CUTE_UNROLL
      for (int i = 0; i < size(acc_o); ++i) acc_o(i) *= 0.5f;  // the mainloop accumulated 2 P V (exact)
      store_output<Traits>(acc_o, ss, o_tile, p.o_stride.row, w.rows, ctid);
      if constexpr (!Traits::kOwnO) {
        if (used_q) ss.barrier_q_empty.arrive();  // O has been read back out of Q's space
      }
      if (used_q) ++q_uses;
    }
  }
#endif
}

}  // namespace flashsigmoid::cuda::hopper
