// Hopper forward mainloop: the producer (TMA loads) and the consumers (two wgmma GEMMs and the
// sigmoid per key block).
//
// Barrier protocol (all mbarriers live in SharedStorage, initialised before the role split):
//
// A CTA is persistent (tile_scheduler.cuh): it runs several tiles, and "use u" below is its u-th
// tile with at least one visible key block (q_uses counts them on both sides).
//
//   barrier_q (ClusterTransactionBarrier, arrival count 1; phase u = the Q of use u)
//     arrives: the producer thread, arrive_and_expect_tx(kTmaBytesQ), then the TMA load of Q
//              completes the transaction bytes.
//     waits:   every consumer thread, wait(u & 1), before its first S GEMM of use u.
//   barrier_q_empty (ClusterBarrier, arrival count kNConsumerThreads; phase u = Q's space is free
//              after use u)
//     arrives: every consumer thread once per use: after its last GEMM of the tile when O has its own
//              buffer (kOwnO), else after its epilogue has read O back out of Q's space.
//     waits:   the producer thread, wait((u & 1) ^ 1), before loading the Q of use u (the first
//              wait, on the phase "before" phase 0, passes at once).
//   pipe_k.full[s] / pipe_v.full[s] (PipelineTmaAsync, arrival count 1 = the producer thread)
//     arrives: the producer thread in producer_acquire (arrive_and_expect_tx(kTmaBytesKV)); the TMA
//              load of that K (V) block completes the bytes.
//     waits:   every consumer thread in consumer_wait(state), before the S (PV) GEMM of that block.
//   pipe_k.empty[s] / pipe_v.empty[s] (arrival count kNConsumerThreads = 256)
//     arrives: every consumer thread in consumer_release(state), after a warpgroup_wait shows
//              its warpgroup's wgmma reading that stage has finished (consume() says which).
//     waits:   the producer thread in producer_acquire(state), before refilling that stage (the
//              producer's state starts at phase 1, so the first kStages acquires pass at once).
//
// Producer and consumers walk the same tiles and, per tile, the same key blocks [n_begin, n_begin +
// n_blocks) (WorkTile below, computed identically by both roles), so every full barrier phase is
// completed exactly once and waited on exactly once by each consumer thread; a tile with
// n_blocks == 0 touches no barrier and loads no Q (its consumers write zeros). The K/V pipeline
// states carry over from tile to tile.
#pragma once

#include <cstdint>
#include <type_traits>

#include "common/score_transform.hpp"
#include "cuda/common/mma_copy.cuh"
#include "cuda/common/sigmoid.cuh"
#include "cuda/common/wgmma.cuh"
#include "cuda/hopper/fwd_traits.cuh"
#include "cuda/hopper/tile_scheduler.cuh"
#include "cuda/common/scores_to_probs.cuh"  // the one score -> P step

namespace flashsigmoid::cuda::hopper {

// One tile of work: query block m_block of (batch b, head h) and its visible key blocks.
struct WorkTile {
  int m_block = 0, h = 0, b = 0;
  std::int64_t m0 = 0;    // first query row of the tile (within the sequence)
  std::int64_t rows = 0;  // valid query rows in the tile (<= kBlockM); <= 0: nothing to do
  int n_begin = 0;        // first visible key block
  int n_blocks = 0;       // visible key blocks (0: the output rows are zeros)
  detail::SeqInfo seq;    // where the sequence starts in the packed layout (varlen) and its lengths
  detail::ScoreTransform st;  // pre-scaled by 0.5: logit() returns s / 2, the argument of tanh
};

template <class Traits>
__device__ __forceinline__ WorkTile make_work_tile(const detail::AttnParams& p, TileCoord c) {
  constexpr int BM = Traits::kBlockM;
  constexpr int BN = Traits::kBlockN;
  WorkTile w;
  w.m_block = c.m_block;
  w.h = c.h;
  w.b = c.b;
  w.seq = detail::seq_info(p, w.b);
  w.m0 = std::int64_t(w.m_block) * BM;
  w.rows = w.seq.len_q - w.m0 < BM ? w.seq.len_q - w.m0 : BM;
  if (w.rows <= 0) return w;
  w.st = detail::make_score_transform(p, w.seq, w.b, w.h).scaled_by(0.5f);
  w.st.key_blocks(w.m0, w.m0 + w.rows, BN, w.n_begin, w.n_blocks);
  return w;
}

// ---------------------------------------------------------------------------------------------
// Producer: a single thread (threadIdx.x == 0, lane 0 of warp 0) issues every TMA load of one
// tile. The pipeline states and q_uses (the Q loads so far) carry over from tile to tile.
template <class Traits>
__device__ __forceinline__ void produce(const FwdParams<Traits>& prm, typename Traits::SharedStorage& ss,
                                        typename Traits::PipelineKV& pipe_k, typename Traits::PipelineKV& pipe_v,
                                        const WorkTile& w, typename Traits::PipelineState& state_k,
                                        typename Traits::PipelineState& state_v, int q_uses) {
  constexpr int BM = Traits::kBlockM;
  constexpr int BN = Traits::kBlockN;
  constexpr int D = Traits::kHeadDim;
  const int hk = w.h / int(prm.p.heads_q / prm.p.heads_kv);  // GQA / MQA

  Tensor sQ = make_tensor(make_smem_ptr(ss.q.data()), typename Traits::SmemLayoutQ{});
  Tensor sK = make_tensor(make_smem_ptr(ss.k.data()), typename Traits::SmemLayoutK{});
  Tensor sV = make_tensor(make_smem_ptr(ss.v.data()), typename Traits::SmemLayoutV{});

  // Coordinate tensors of the TMA descriptors: (rows, D, heads, batch). Varlen: one packed
  // "batch" of total rows, and this sequence's rows start at seq.q_begin / seq.k_begin. Tiles then
  // overhang into the next sequence's rows (or past the tensor, zero-filled): those keys are masked
  // (P = 0, and their finite values add nothing), those queries are computed but never stored.
  const int bb = prm.p.cu_seqlens_q != nullptr ? 0 : w.b;  // varlen: the one packed "batch"
  Tensor mQ = domain_offset(make_coord(w.seq.q_begin, _0{}), prm.tma_q.get_tma_tensor(prm.shape_q)(_, _, w.h, bb));
  Tensor mK = domain_offset(make_coord(w.seq.k_begin, _0{}), prm.tma_k.get_tma_tensor(prm.shape_k)(_, _, hk, bb));
  Tensor mV = domain_offset(make_coord(w.seq.k_begin, _0{}), prm.tma_v.get_tma_tensor(prm.shape_k)(_, _, hk, bb));
  Tensor gQ = local_tile(mQ, Shape<Int<BM>, Int<D>>{}, make_coord(w.m_block, _0{}));  // (BM, D)
  Tensor gK = local_tile(mK, Shape<Int<BN>, Int<D>>{}, make_coord(_, _0{}));  // (BN, D, nblk)
  Tensor gV = local_tile(mV, Shape<Int<BN>, Int<D>>{}, make_coord(_, _0{}));  // (BN, D, nblk)

  auto [tQgQ, tQsQ] = tma_partition(prm.tma_q, _0{}, Layout<_1>{}, group_modes<0, 2>(sQ), group_modes<0, 2>(gQ));
  auto [tKgK, tKsK] = tma_partition(prm.tma_k, _0{}, Layout<_1>{}, group_modes<0, 2>(sK), group_modes<0, 2>(gK));
  auto [tVgV, tVsV] = tma_partition(prm.tma_v, _0{}, Layout<_1>{}, group_modes<0, 2>(sV), group_modes<0, 2>(gV));

  // Q: once per tile, after the consumers are done with the previous one (q_empty's phase q_uses - 1;
  // the first wait passes at once). barrier_q expects kTmaBytesQ; the TMA completes them.
  ss.barrier_q_empty.wait((q_uses & 1) ^ 1);
  ss.barrier_q.arrive_and_expect_tx(Traits::kTmaBytesQ);
  copy(prm.tma_q.with(reinterpret_cast<cutlass::arch::ClusterTransactionBarrier::ValueType&>(ss.barrier_q)), tQgQ,
       tQsQ);

  // K and V blocks: producer_acquire waits until the stage is empty (all 256 consumer threads
  // released it) and arms the stage's full barrier with kTmaBytesKV; the TMA completes them.
  for (int it = 0; it < w.n_blocks; ++it) {
    const int n = w.n_begin + it;
    pipe_k.producer_acquire(state_k);
    copy(prm.tma_k.with(*pipe_k.producer_get_barrier(state_k)), tKgK(_, n), tKsK(_, state_k.index()));
    ++state_k;
    pipe_v.producer_acquire(state_v);
    copy(prm.tma_v.with(*pipe_v.producer_get_barrier(state_v)), tVgV(_, n), tVsV(_, state_v.index()));
    ++state_v;
  }
  // No producer_tail: the CTA is not in a cluster, and its consumers wait for every load, so the
  // CTA cannot exit with a TMA load in flight.
}

// ---------------------------------------------------------------------------------------------
// Consumers.

// Runs the key loop of one consumer thread (ctid in [0, kNConsumerThreads)) into acc_o.
//
// Software-pipelined inside the warpgroup: while the tensor cores run S(it) = Q K(it)^T and
// O += P(it-1) V(it-1), the thread turns S(it) into probabilities as soon as S(it) lands, so the
// sigmoid (MUFU) overlaps the PV GEMM. wgmma batches complete in issue order, so wait<1> after
// issuing S(it) then PV(it-1) means S(it) is done; wait<0> then frees P's registers and V(it-1).
template <class Traits, class AccO>
__device__ __forceinline__ void consume(typename Traits::SharedStorage& ss, typename Traits::PipelineKV& pipe_k,
                                        typename Traits::PipelineKV& pipe_v, const WorkTile& w, AccO& acc_o,
                                        int ctid, typename Traits::PipelineState& state_k,
                                        typename Traits::PipelineState& state_v, int q_uses) {
  using Element = typename Traits::Element;
  constexpr int BM = Traits::kBlockM;
  constexpr int BN = Traits::kBlockN;

  Tensor sQ = make_tensor(make_smem_ptr(ss.q.data()), typename Traits::SmemLayoutQ{});
  Tensor sK = make_tensor(make_smem_ptr(ss.k.data()), typename Traits::SmemLayoutK{});
  Tensor sVt = make_tensor(make_smem_ptr(ss.v.data()), typename Traits::SmemLayoutVt{});

  typename Traits::TiledMmaQK mma_qk;
  typename Traits::TiledMmaPV mma_pv;
  auto thr_qk = mma_qk.get_thread_slice(ctid);
  auto thr_pv = mma_pv.get_thread_slice(ctid);
  Tensor tSrQ = thr_qk.partition_fragment_A(sQ);   // wgmma descriptors (this warpgroup's 64 rows)
  Tensor tSrK = thr_qk.partition_fragment_B(sK);   // (MMA, MMA_N, MMA_K, stage)
  Tensor tOrV = thr_pv.partition_fragment_B(sVt);  // (MMA, MMA_N, MMA_K, stage)
  // (row, col) inside the 128 x kBlockN score tile of each accumulator register.
  Tensor tScS = thr_qk.partition_C(make_identity_tensor(Shape<Int<BM>, Int<BN>>{}));

  Tensor acc_s = partition_fragment_C(mma_qk, Shape<Int<BM>, Int<BN>>{});
  // P(it) in the input dtype, laid out as the PV wgmma's register A operand.
  Tensor rP = make_tensor<Element>(acc_s.layout());
  Tensor tOrP = make_tensor(rP.data(), sm90::acc_layout_as_a_operand(rP.layout()));
  static_assert(decltype(size(tOrP))::value * 128 == BM / Traits::kNConsumerWarpGroups * BN &&
                decltype(size<2>(tOrP))::value == BN / 16, "P is not laid out as the PV wgmma's A operand");
  static_assert(std::is_same_v<decltype(shape(tOrP)), decltype(partition_shape_A(mma_pv, Shape<Int<BM>, Int<BN>>{}))>,
                "P is not laid out as the PV wgmma's A operand");

  // S -> 2P for key block `it` (in place in acc_s; fp32): acc_o accumulates 2 P V, and the kernel
  // halves it before the epilogue (sigmoid.cuh's twice_sigmoid_of_half_logit).
  auto probs = [&](int it) {
    const std::int64_t j0 = std::int64_t(w.n_begin + it) * BN;
    scores_to_probs<Element, false, true>(acc_s, tScS, w.st, w.m0, j0, w.st.block_unmasked(w.m0, w.m0 + w.rows, j0, j0 + BN));
  };
  // P(it) into rP; called only when no wgmma reads rP. The fences keep the compiler from moving
  // these register writes above the preceding warpgroup_wait (wgmma reads rP asynchronously).
  auto to_operand = [&] {
    warpgroup_fence_operand(rP);
    Tensor converted = convert_fragment<Element>(acc_s);
    CUTE_UNROLL
    for (int i = 0; i < size(rP); ++i) rP(i) = converted(i);
    warpgroup_fence_operand(rP);
  };

  ss.barrier_q.wait(q_uses & 1);  // this tile's Q has landed

  // Prologue: S(0), P(0).
  pipe_k.consumer_wait(state_k);
  sm90::wgmma_gemm<true>(mma_qk, tSrQ, tSrK(_, _, _, state_k.index()), acc_s);
  warpgroup_wait<0>();
  warpgroup_fence_operand(acc_s);
  pipe_k.consumer_release(state_k);
  ++state_k;
  probs(0);
  to_operand();

  for (int it = 1; it < w.n_blocks; ++it) {
    pipe_k.consumer_wait(state_k);
    sm90::wgmma_gemm<true>(mma_qk, tSrQ, tSrK(_, _, _, state_k.index()), acc_s);  // S(it)
    pipe_v.consumer_wait(state_v);
    sm90::wgmma_gemm<false>(mma_pv, tOrP, tOrV(_, _, _, state_v.index()), acc_o);  // O += P(it-1) V(it-1)
    warpgroup_wait<1>();  // S(it) is done (PV may still run)
    warpgroup_fence_operand(acc_s);
    pipe_k.consumer_release(state_k);
    ++state_k;
    probs(it);            // MUFU work under the PV GEMM
    warpgroup_wait<0>();  // PV(it-1) is done: rP and V(it-1) are free
    warpgroup_fence_operand(acc_o);
    pipe_v.consumer_release(state_v);
    ++state_v;
    to_operand();
  }

  // Epilogue: O += P(last) V(last).
  pipe_v.consumer_wait(state_v);
  sm90::wgmma_gemm<false>(mma_pv, tOrP, tOrV(_, _, _, state_v.index()), acc_o);
  warpgroup_wait<0>();
  warpgroup_fence_operand(acc_o);
  pipe_v.consumer_release(state_v);
  ++state_v;
}

}  // namespace flashsigmoid::cuda::hopper
