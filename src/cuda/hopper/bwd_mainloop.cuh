// Hopper backward mainloop: the producer (TMA loads of K, V once and Q, dO per step) and the consumers
// (five wgmma GEMMs and the score -> P -> dS steps per step; dQ parts added to the workspace).
//
// Barrier protocol (one CTA per key block, not persistent; all mbarriers are used for one tile):
//   barrier_kv (ClusterTransactionBarrier, arrival count 1; phase 0 only)
//     arrives: the producer thread, arrive_and_expect_tx(2 kTmaBytesKV), then the TMA loads of K and V
//              complete the bytes.
//     waits:   every consumer thread, wait(0), before its first GEMM.
//   pipe_qdo.full[s] (PipelineTmaAsync, arrival count 1 = the producer thread)
//     arrives: the producer thread in producer_acquire (expect 2 kTmaBytesQ: Q and dO of one step);
//              the two TMA loads complete them.
//     waits:   every consumer thread in consumer_wait, before the step's S^T and dP^T GEMMs.
//   pipe_qdo.empty[s] (arrival count 256 = every consumer thread)
//     arrives: every consumer thread in consumer_release, after a warpgroup_wait shows its
//              warpgroup's dV and dK GEMMs (the last readers of Q and dO) have finished.
//     waits:   the producer thread in producer_acquire before refilling the stage (its state starts at
//              phase 1, so the first kStages acquires pass at once).
//   Named barrier kBarDsReady (256 consumer threads), once per step t: each warpgroup has written
//     its 64 rows of dS^T(t) into ds buffer t & 1 (and fenced them for the async proxy) before the
//     dQ GEMM of either warpgroup reads all 128 rows. The buffer is double-buffered, so this one
//     barrier also protects the rewrite: a warpgroup writes buffer t & 1 again at step t + 2 only
//     after passing kBarDsReady(t + 1), which the other warpgroup reaches only after its
//     warpgroup_wait on the dQ GEMM of step t.
//   dQ staging tile of warpgroup w (fp32, written by its 128 threads, read by its TMA reduce-add):
//     named barrier kBarDqStaged + w (128 threads) after every thread has written its dQ part of step
//     t and fenced it for the async proxy; then its thread 0 issues the reduce-add and commits it.
//     Before the tile is rewritten at step t + 1, that thread waits until the reduce-add has read it
//     (cp.async.bulk.wait_group.read 0), then passes kBarDsReady(t + 1), which every consumer thread
//     passes before writing the tile again.
//   Named barrier kBarDbias (256), at the last step of each query head when d(bias) is requested:
//     the warps' sums are in warp_sums before consumer thread 0 adds them (the next write to
//     warp_sums comes after a later kBarDsReady, which thread 0 reaches after its read).
//   Named barrier kBarEpilogue (256): both warpgroups' dQ GEMMs (which read every row of K) are done
//     before dK is staged in K's space.
// Producer and consumers derive the same step count from the same inputs, so every full barrier
// phase is completed once and waited on once by each consumer thread; a key block that no query
// sees loads nothing and writes zero dK, dV.
#pragma once

#include <cstdint>
#include <type_traits>
#include <utility>

#include <cutlass/arch/barrier.h>

#include "common/score_transform.hpp"
#include "cuda/common/block_sum.cuh"
#include "cuda/common/dscores.cuh"
#include "cuda/common/scores_to_probs.cuh"
#include "cuda/common/wgmma.cuh"
#include "cuda/hopper/bwd_dq_order.cuh"
#include "cuda/hopper/bwd_traits.cuh"
#include "cuda/hopper/named_barriers.hpp"

namespace flashsigmoid::cuda::hopper {

// Varlen: the TMA descriptors span the packed rows as one "batch" (index 0) and a sequence's rows
// start at SeqInfo::q_begin / k_begin; dense: one descriptor batch per sequence, starting at row 0.
__device__ __forceinline__ int tma_batch_index(const detail::BwdParams& p, int b) {
  return p.cu_seqlens_q != nullptr ? 0 : b;
}

// A query block that overhangs its sequence's end holds rows that are not this sequence's queries:
// zero-filled past a dense tensor (dO = 0 there, so they add nothing), but the next sequence's rows
// in a packed (varlen) tensor. P = 0 for those columns of P^T makes their dS = dP P (1 - P) exactly 0,
// so they add nothing to dV, dK or d(bias), and their rows of the staged dQ are exactly 0: the TMA
// reduce-add of the whole block into the next sequence's rows then leaves those unchanged.
template <class AccS, class CoordS>
__device__ __forceinline__ void drop_queries_from(AccS& acc_s, const CoordS& tScS, int q_end) {
  CUTE_UNROLL
  for (int i = 0; i < size(acc_s); ++i) {
    if (int(get<1>(tScS(i))) >= q_end) acc_s(i) = 0.0f;  // tScS: (key, query) of S^T
  }
}

// Which steps a key block runs: the query heads of its GQA group times the visible query blocks.
struct BwdSteps {
  int group = 1;    // query heads per kv head
  int m_begin = 0;  // first visible query block
  int m_count = 0;  // visible query blocks (the same for every head: masks do not depend on it)
  __host__ __device__ int count() const { return group * m_count; }
};

template <class Traits>
__device__ __forceinline__ BwdSteps make_steps(const detail::BwdParams& p, const detail::SeqInfo& seq, int b, int hk,
                                               std::int64_t j0, std::int64_t keys) {
  BwdSteps s;
  s.group = int(p.heads_q / p.heads_kv);
  if (keys <= 0) return s;  // varlen: this sequence has no keys at this block
  const detail::ScoreTransform st = detail::make_score_transform(p, seq, b, std::int64_t(hk) * s.group);
  std::int64_t m_begin = 0, m_count = 0;
  st.query_blocks(j0, j0 + keys, seq.len_q, Traits::kBlockM, m_begin, m_count);
  s.m_begin = int(m_begin);
  s.m_count = int(m_count);
  return s;
}

// Stores an fp32 accumulator fragment into a shared-memory tile: elements 2i, 2i+1 (neighbouring
// columns of one row, BwdTraits checks it) by one st.shared.v2.f32 at offsets(row, column) floats
// past the 32-bit shared address `base` (the swizzle keeps each pair in one 16-byte chunk). A CuTe
// copy into the swizzled tile compiled to one generic 64-bit store per element (SASS).
template <class Acc, class Coord, class Offsets>
__device__ __forceinline__ void store_pairs_shared(const Acc& acc, const Coord& tCc, const Offsets& offsets,
                                                   uint32_t base) {
  CUTE_UNROLL
  for (int i = 0; i < size(acc); i += 2) {
    const uint32_t addr = base + 4u * uint32_t(offsets(get<0>(tCc(i)), get<1>(tCc(i))));
    asm volatile("st.shared.v2.f32 [%0], {%1, %2};\n" ::"r"(addr), "f"(acc(i)), "f"(acc(i + 1)) : "memory");
  }
}

// ---------------------------------------------------------------------------------------------
// Producer: one thread loads K and V once, then Q and dO of every step into the 2-stage pipeline.
template <class Traits>
__device__ __forceinline__ void bwd_produce(const BwdKernelParams<Traits>& prm, typename Traits::SharedStorage& ss,
                                            typename Traits::PipelineQdO& pipe, const BwdSteps& steps,
                                            const detail::SeqInfo& seq, int n_block, int hk, int b) {
  constexpr int BM = Traits::kBlockM;
  constexpr int BN = Traits::kBlockN;
  constexpr int D = Traits::kHeadDim;
  Tensor sK = make_tensor(make_smem_ptr(ss.k.data()), typename Traits::SmemLayoutK{});
  Tensor sV = make_tensor(make_smem_ptr(ss.v.data()), typename Traits::SmemLayoutV{});
  Tensor sQ = make_tensor(make_smem_ptr(ss.q.data()), typename Traits::SmemLayoutQ{});
  Tensor sdO = make_tensor(make_smem_ptr(ss.dout.data()), typename Traits::SmemLayoutDo{});

  const int bb = tma_batch_index(prm.p, b);
  Tensor mK = domain_offset(make_coord(seq.k_begin, _0{}), prm.tma_k.get_tma_tensor(prm.shape_k)(_, _, hk, bb));
  Tensor mV = domain_offset(make_coord(seq.k_begin, _0{}), prm.tma_v.get_tma_tensor(prm.shape_k)(_, _, hk, bb));
  Tensor gK = local_tile(mK, Shape<Int<BN>, Int<D>>{}, make_coord(n_block, _0{}));
  Tensor gV = local_tile(mV, Shape<Int<BN>, Int<D>>{}, make_coord(n_block, _0{}));
  auto [tKgK, tKsK] = tma_partition(prm.tma_k, _0{}, Layout<_1>{}, group_modes<0, 2>(sK), group_modes<0, 2>(gK));
  auto [tVgV, tVsV] = tma_partition(prm.tma_v, _0{}, Layout<_1>{}, group_modes<0, 2>(sV), group_modes<0, 2>(gV));
  // Rows past the key end are zero-filled (and counted in the transaction bytes), or, varlen, the next
  // sequence's keys: masked either way.
  ss.barrier_kv.arrive_and_expect_tx(2 * Traits::kTmaBytesKV);
  using BarrierType = cutlass::arch::ClusterTransactionBarrier::ValueType;
  copy(prm.tma_k.with(reinterpret_cast<BarrierType&>(ss.barrier_kv)), tKgK, tKsK);
  copy(prm.tma_v.with(reinterpret_cast<BarrierType&>(ss.barrier_kv)), tVgV, tVsV);

  auto state = cutlass::make_producer_start_state<typename Traits::PipelineQdO>();
  for (int g = 0; g < steps.group; ++g) {
    const int h = hk * steps.group + g;
    // (BM, D, query blocks) of head h; rows past the query end are zero-filled or the next sequence's
    // (the consumers drop them: drop_queries_from).
    Tensor mQ = domain_offset(make_coord(seq.q_begin, _0{}), prm.tma_q.get_tma_tensor(prm.shape_q)(_, _, h, bb));
    Tensor mdO = domain_offset(make_coord(seq.q_begin, _0{}), prm.tma_do.get_tma_tensor(prm.shape_q)(_, _, h, bb));
    Tensor gQ = local_tile(mQ, Shape<Int<BM>, Int<D>>{}, make_coord(_, _0{}));
    Tensor gdO = local_tile(mdO, Shape<Int<BM>, Int<D>>{}, make_coord(_, _0{}));
    auto [tQgQ, tQsQ] = tma_partition(prm.tma_q, _0{}, Layout<_1>{}, group_modes<0, 2>(sQ), group_modes<0, 2>(gQ));
    auto [tDgD, tDsD] = tma_partition(prm.tma_do, _0{}, Layout<_1>{}, group_modes<0, 2>(sdO), group_modes<0, 2>(gdO));
    for (int m = 0; m < steps.m_count; ++m) {
      pipe.producer_acquire(state);  // the stage is empty; arms its full barrier with 2 kTmaBytesQ
      copy(prm.tma_q.with(*pipe.producer_get_barrier(state)), tQgQ(_, steps.m_begin + m), tQsQ(_, state.index()));
      copy(prm.tma_do.with(*pipe.producer_get_barrier(state)), tDgD(_, steps.m_begin + m), tDsD(_, state.index()));
      ++state;
    }
  }
  // No producer_tail: not in a cluster, and the consumers wait for every load before the CTA ends.
}

// ---------------------------------------------------------------------------------------------
// Consumers.

// One step of the walk: query head h, query rows [i0, i1) of the sequence, the score transform.
struct BwdStep {
  int h = 0;
  int i0 = 0;
  std::int64_t i1 = 0;
  bool full = false;  // no element of the (query block, key block) pair is masked
  detail::SeqInfo seq;
  detail::ScoreTransform st;  // pre-scaled by 0.5: logit() = s / 2
};

// Rebuilt every step rather than kept per head: registers are the limit at D 128 (a few parameter
// loads per step are cheap next to five 64 x kBlockM x D GEMMs).
template <class Traits>
__device__ __forceinline__ BwdStep make_step(const detail::BwdParams& p, const BwdSteps& steps, int b, int hk,
                                             std::int64_t j0, int t) {
  constexpr int BM = Traits::kBlockM;
  BwdStep s;
  s.h = hk * steps.group + t / steps.m_count;
  s.i0 = (steps.m_begin + t % steps.m_count) * BM;
  s.seq = detail::seq_info(p, b);
  s.st = detail::make_score_transform(p, s.seq, b, s.h).scaled_by(0.5f);
  s.i1 = s.seq.len_q - s.i0 < BM ? s.seq.len_q : s.i0 + BM;
  s.full = s.st.block_unmasked(s.i0, s.i1, j0, j0 + Traits::kBlockN);
  return s;
}

// S^T = K Q^T and dP^T = V dO^T of one step, then acc_s := P^T and acc_dp := dS^T; returns this
// thread's sum of dS^T. while_gemms_run() is called once both GEMMs are issued.
template <class Traits, class Mma, class FragK, class FragQ, class FragV, class FragDo, class CoordS, class Acc,
          class F>
__device__ __forceinline__ float probs_and_dscores(Mma& mma_sdp, const FragK& tSrK, const FragQ& tSrQ,
                                                   const FragV& tSrV, const FragDo& tSrDo, const CoordS& tScS,
                                                   const BwdStep& s, std::int64_t j0, Acc& acc_s, Acc& acc_dp,
                                                   F&& while_gemms_run) {
  using Element = typename Traits::Element;
  constexpr int BM = Traits::kBlockM;
  sm90::wgmma_gemm<true>(mma_sdp, tSrK, tSrQ, acc_s);    // S^T = K Q^T
  sm90::wgmma_gemm<true>(mma_sdp, tSrV, tSrDo, acc_dp);  // dP^T = V dO^T
  while_gemms_run();
  warpgroup_wait<1>();  // S^T is done; dP^T may still run under the sigmoid
  warpgroup_fence_operand(acc_s);
  scores_to_probs<Element, true>(acc_s, tScS, s.st, s.i0, j0, s.full);
  if (s.i0 + BM > s.seq.len_q) drop_queries_from(acc_s, tScS, int(s.seq.len_q - s.i0));
  warpgroup_wait<0>();
  warpgroup_fence_operand(acc_dp);
  return probs_to_dscores<true>(acc_dp, acc_s);  // acc_dp := dS^T
}

// A consumer thread's views of the shared-memory tiles (bwd_traits.cuh): K, V; Q, dO per stage and
// the transposed views the dV / dK GEMMs read as B; K^T, the dQ GEMM's B; dS^T as the S^T accumulator
// holds it and dS, the dQ GEMM's A, per buffer.
template <class Traits>
struct BwdSmemViews {
  using Element = typename Traits::Element;
  template <class Layout>
  using View = decltype(make_tensor(make_smem_ptr(static_cast<Element*>(nullptr)), Layout{}));
  View<typename Traits::SmemLayoutK> sK;
  View<typename Traits::SmemLayoutV> sV;
  View<typename Traits::SmemLayoutQ> sQ;
  View<typename Traits::SmemLayoutDo> sdO;
  View<typename Traits::SmemLayoutQt> sQt, sdOt;
  View<typename Traits::SmemLayoutKt> sKt;
  View<typename Traits::SmemLayoutDsT> sDsT;
  View<typename Traits::SmemLayoutDs> sDs;

  __device__ __forceinline__ explicit BwdSmemViews(typename Traits::SharedStorage& ss)
      : sK(make_tensor(make_smem_ptr(ss.k.data()), typename Traits::SmemLayoutK{})),
        sV(make_tensor(make_smem_ptr(ss.v.data()), typename Traits::SmemLayoutV{})),
        sQ(make_tensor(make_smem_ptr(ss.q.data()), typename Traits::SmemLayoutQ{})),
        sdO(make_tensor(make_smem_ptr(ss.dout.data()), typename Traits::SmemLayoutDo{})),
        sQt(make_tensor(make_smem_ptr(ss.q.data()), typename Traits::SmemLayoutQt{})),
        sdOt(make_tensor(make_smem_ptr(ss.dout.data()), typename Traits::SmemLayoutQt{})),
        sKt(make_tensor(make_smem_ptr(ss.k.data()), typename Traits::SmemLayoutKt{})),
        sDsT(make_tensor(make_smem_ptr(ss.ds.data()), typename Traits::SmemLayoutDsT{})),
        sDs(make_tensor(make_smem_ptr(ss.ds.data()), typename Traits::SmemLayoutDs{})) {}
};

// A consumer thread's wgmma operands: shared-memory descriptors of its warpgroup's slice of each tiled
// MMA (warp-uniform: sm90::descriptor_slice). S^T, dP^T: this warpgroup's 64 keys of K / V against
// Q / dO (per stage); dV, dK: B = dO^T / Q^T (D, queries, stage); dQ: A = dS (queries, keys, buffer),
// B = this warpgroup's D / 2 columns of K^T.
template <class Traits>
struct BwdWgmmaOperands {
  using Views = BwdSmemViews<Traits>;
  template <class Mma>  // sm90::descriptor_slice's type (a device function cannot name it here)
  using Slice = decltype(std::declval<Mma&>().get_slice(0));
  template <class Mma, class Smem>
  using FragA = decltype(std::declval<Slice<Mma>&>().partition_fragment_A(std::declval<Smem&>()));
  template <class Mma, class Smem>
  using FragB = decltype(std::declval<Slice<Mma>&>().partition_fragment_B(std::declval<Smem&>()));
  using SdP = typename Traits::TiledMmaSdP;
  using DKV = typename Traits::TiledMmaDKV;
  using DQ = typename Traits::TiledMmaDQ;
  FragA<SdP, decltype(Views::sK)> tSrK;
  FragA<SdP, decltype(Views::sV)> tSrV;
  FragB<SdP, decltype(Views::sQ)> tSrQ;    // (MMA, MMA_N, MMA_K, stage)
  FragB<SdP, decltype(Views::sdO)> tSrDo;  // (MMA, MMA_N, MMA_K, stage)
  FragB<DKV, decltype(Views::sdOt)> tKVrDo;
  FragB<DKV, decltype(Views::sQt)> tKVrQ;
  FragA<DQ, decltype(Views::sDs)> tQrDs;   // (MMA, MMA_M, MMA_K, buffer)
  FragB<DQ, decltype(Views::sKt)> tQrK;

  __device__ __forceinline__ BwdWgmmaOperands(SdP& mma_sdp, DKV& mma_dkv, DQ& mma_dq, Views& v, int ctid) {
    auto desc_sdp = sm90::descriptor_slice(mma_sdp, ctid);
    auto desc_dkv = sm90::descriptor_slice(mma_dkv, ctid);
    auto desc_dq = sm90::descriptor_slice(mma_dq, ctid);
    tSrK = desc_sdp.partition_fragment_A(v.sK);
    tSrV = desc_sdp.partition_fragment_A(v.sV);
    tSrQ = desc_sdp.partition_fragment_B(v.sQ);
    tSrDo = desc_sdp.partition_fragment_B(v.sdO);
    tKVrDo = desc_dkv.partition_fragment_B(v.sdOt);
    tKVrQ = desc_dkv.partition_fragment_B(v.sQt);
    tQrDs = desc_dq.partition_fragment_A(v.sDs);
    tQrK = desc_dq.partition_fragment_B(v.sKt);
  }
};

// A consumer thread's dQ path through shared memory. dS^T: registers -> the ds buffer by stmatrix (one
// 32-bit shared address for the whole tile), read by both warpgroups' dQ GEMMs. dQ part: registers ->
// this warpgroup's staging tile at the (row, column) each register has in a one-warpgroup MMA of its
// D / 2 columns (tDqcDq) -> one TMA reduce-add into the workspace, issued by the warpgroup's first
// thread (dq_issuer).
template <class Traits>
struct DqStaging {
  using SmemLayoutDq = typename Traits::SmemLayoutDq;
  using TileDq = Shape<Int<Traits::kBlockM>, Int<Traits::kDqCols>>;
  using SmemDq = decltype(make_tensor(make_smem_ptr(static_cast<float*>(nullptr)), SmemLayoutDq{}));
  using TmaSlice = decltype(std::declval<const typename Traits::TmaDq&>().get_slice(_0{}));
  using R2S = decltype(make_tiled_copy_C(typename Traits::R2SAtom{}, std::declval<typename Traits::TiledMmaSdP&>()));
  using SmemDsT = decltype(BwdSmemViews<Traits>::sDsT);
  int wg;
  bool dq_issuer;
  uint32_t sdq_base;
  decltype(typename Traits::TiledMmaDQPart{}.get_thread_slice(0).partition_C(make_identity_tensor(TileDq{}))) tDqcDq;
  TmaSlice tma_dq;
  decltype(std::declval<TmaSlice&>().partition_S(std::declval<SmemDq&>())) tDqsDqTma;
  R2S r2s_ds;
  decltype(r2s_ds.get_thread_slice(0)) r2s_ds_thr;
  decltype(r2s_ds_thr.partition_D(std::declval<SmemDsT&>())) tR2SsDs;  // (CPY, CPY_M, CPY_N, buffer)

  __device__ __forceinline__ DqStaging(const BwdKernelParams<Traits>& prm, typename Traits::SharedStorage& ss,
                                       BwdSmemViews<Traits>& v, int ctid)
      : wg(ctid / 128),
        dq_issuer(ctid % 128 == 0),
        sdq_base(cast_smem_ptr_to_uint(tile(ss, wg))),
        tDqcDq(typename Traits::TiledMmaDQPart{}.get_thread_slice(ctid % 128).partition_C(
            make_identity_tensor(TileDq{}))),
        tma_dq(prm.tma_dq.get_slice(_0{})),
        tDqsDqTma(tma_dq.partition_S(make_tensor(make_smem_ptr(tile(ss, wg)), SmemLayoutDq{}))),
        r2s_ds_thr(r2s_ds.get_thread_slice(ctid)),
        tR2SsDs(r2s_ds_thr.partition_D(v.sDsT)) {}

  // Warpgroup wg's staging tile.
  static __device__ __forceinline__ float* tile(typename Traits::SharedStorage& ss, int wg) {
    return ss.dq.data() + wg * cosize_v<SmemLayoutDq>;
  }
};

// This warpgroup's dQ part of step s (acc_dq) -> its staging tile -> one TMA reduce-add into the
// workspace, issued by the warpgroup's first thread, in the deterministic mode once `order` says it
// is this key block's turn.
template <class Traits, bool kOrderedDq, class AccDq>
__device__ __forceinline__ void add_dq_part(const BwdKernelParams<Traits>& prm, const AccDq& acc_dq,
                                            const DqStaging<Traits>& dq, const BwdStep& s, int b, std::int64_t j0,
                                            DqOrder& order) {
  constexpr int BM = Traits::kBlockM;
  static_assert(decltype(size(acc_dq))::value == decltype(size(dq.tDqcDq))::value, "dQ staging partition");
  store_pairs_shared(acc_dq, dq.tDqcDq, typename Traits::SmemOffsetsDq{}, dq.sdq_base);
  cutlass::arch::fence_view_async_shared();  // visible to the TMA (async proxy)
  cutlass::arch::NamedBarrier::sync(128, kBarDqStaged + dq.wg);
  if (dq.dq_issuer) {
    // (kBlockM, D / 2) tile (i0 / kBlockM, wg) of head h, from the sequence's first row; rows past
    // the tensor's end are clipped, rows of the next sequence (varlen) get exact zeros added.
    Tensor mDq = domain_offset(make_coord(s.seq.q_begin, _0{}),
                               prm.tma_dq.get_tma_tensor(prm.shape_q)(_, _, s.h, tma_batch_index(prm.p, b)));
    Tensor gDq = local_tile(mDq, Shape<Int<BM>, Int<Traits::kDqCols>>{}, make_coord(s.i0 / BM, dq.wg));
    if constexpr (kOrderedDq) {
      order = DqOrder::make<Traits>(prm, b, s.h, int(j0 / Traits::kBlockN), s.i0, s.i1, dq.wg);
      order.wait_turn();
    }
    copy(prm.tma_dq, dq.tDqsDqTma, dq.tma_dq.partition_D(gDq));
    tma_store_arrive();
  }
}

// One step's GEMMs after probs_and_dscores (acc_s = P^T, acc_dp = dS^T of step s, Q and dO in `stage`,
// dS buffer buf): dS^T -> shared memory, dV += P^T dO, dK += dS^T Q, dQ part = dS K, added by
// add_dq_part. Releases the stage once dK, its last reader, is done.
template <class Traits, bool kOrderedDq, class AccS, class AccKV>
__device__ __forceinline__ void gradient_gemms(const BwdKernelParams<Traits>& prm,
                                               typename Traits::TiledMmaDKV& mma_dkv,
                                               typename Traits::TiledMmaDQ& mma_dq,
                                               const BwdWgmmaOperands<Traits>& ops, DqStaging<Traits>& dq,
                                               typename Traits::PipelineQdO& pipe,
                                               typename Traits::PipelineState& state, const BwdStep& s, int b,
                                               std::int64_t j0, int stage, int buf, AccS& acc_s, AccS& acc_dp,
                                               AccKV& acc_dk, AccKV& acc_dv, DqOrder& order) {
  using Element = typename Traits::Element;
  constexpr int BM = Traits::kBlockM;
  constexpr int BN = Traits::kBlockN;
  // P^T and dS^T in the input dtype, viewed as the RS GEMMs' register A operand. Per step (not
  // kept across the loop, where they would cost 32 registers during the S^T / dP^T GEMMs); the
  // fences after this step's last warpgroup_wait keep their registers reserved until the RS
  // wgmmas that read them asynchronously are done.
  Tensor rP = convert_fragment<Element>(acc_s);
  Tensor rdS = convert_fragment<Element>(acc_dp);
  Tensor tPrP = make_tensor(rP.data(), sm90::acc_layout_as_a_operand(rP.layout()));
  Tensor tdSrdS = make_tensor(rdS.data(), sm90::acc_layout_as_a_operand(rdS.layout()));
  static_assert(std::is_same_v<decltype(shape(tPrP)), decltype(partition_shape_A(mma_dkv, Shape<Int<BN>, Int<BM>>{}))>,
                "P^T is not laid out as the dV wgmma's A operand");

  // dS^T -> shared memory (this warpgroup's 64 key rows) by stmatrix, visible to the async proxy (wgmma).
  copy(dq.r2s_ds, dq.r2s_ds_thr.retile_S(rdS), dq.tR2SsDs(_, _, _, buf));
  cutlass::arch::fence_view_async_shared();

  // dV, dK first: they need only this warpgroup's registers, so they run while the other warpgroup
  // finishes its dS^T rows. dQ is issued once P^T's registers are free (at D 128, acc_dQ next to
  // P^T, dS^T, acc_dK and acc_dV made the consumers spill).
  sm90::wgmma_gemm<false>(mma_dkv, tPrP, ops.tKVrDo(_, _, _, stage), acc_dv);   // dV += P^T dO
  sm90::wgmma_gemm<false>(mma_dkv, tdSrdS, ops.tKVrQ(_, _, _, stage), acc_dk);  // dK += dS^T Q
  if (dq.dq_issuer) tma_store_wait<0>();  // the previous step's dQ reduce-add has read the staging tile
  cutlass::arch::NamedBarrier::sync(Traits::kNConsumerThreads, kBarDsReady);  // both warpgroups' dS^T rows are in
  warpgroup_wait<1>();  // dV is done: P^T's registers are free
  warpgroup_fence_operand(acc_dv);
  warpgroup_fence_operand(rP);
  Tensor acc_dq = partition_fragment_C(mma_dq, Shape<Int<BM>, Int<Traits::kHeadDim>>{});
  sm90::wgmma_gemm<true>(mma_dq, ops.tQrDs(_, _, _, buf), ops.tQrK, acc_dq);  // dQ part = dS K
  warpgroup_wait<1>();  // dK is done: Q and dO of this stage are no longer read
  warpgroup_fence_operand(acc_dk);
  warpgroup_fence_operand(rdS);
  pipe.consumer_release(state);
  ++state;
  warpgroup_wait<0>();
  warpgroup_fence_operand(acc_dq);
  add_dq_part<Traits, kOrderedDq>(prm, acc_dq, dq, s, b, j0, order);
}

// Every step of the key block into acc_dk (unscaled) and acc_dv; dQ into the workspace; d(bias)
// partials (ctid: the thread's index among the 256 consumer threads).
template <class Traits, bool kOrderedDq, class AccKV>
__device__ __forceinline__ void bwd_consume(const BwdKernelParams<Traits>& prm, typename Traits::SharedStorage& ss,
                                            typename Traits::PipelineQdO& pipe, const BwdSteps& steps,
                                            int b, int hk, std::int64_t j0,
                                            float* part, AccKV& acc_dk, AccKV& acc_dv, int ctid) {
  constexpr int BM = Traits::kBlockM;
  constexpr int BN = Traits::kBlockN;
  constexpr int kThreads = Traits::kNConsumerThreads;

  BwdSmemViews<Traits> views(ss);
  typename Traits::TiledMmaSdP mma_sdp;
  typename Traits::TiledMmaDKV mma_dkv;
  typename Traits::TiledMmaDQ mma_dq;
  auto thr_sdp = mma_sdp.get_thread_slice(ctid);
  const BwdWgmmaOperands<Traits> ops(mma_sdp, mma_dkv, mma_dq, views, ctid);
  // (key, query) of each S^T / dP^T register.
  Tensor tScS = thr_sdp.partition_C(make_identity_tensor(Shape<Int<BN>, Int<BM>>{}));
  DqStaging<Traits> dq(prm, ss, views, ctid);

  float db = 0.0f;  // this thread's sum of dS over the current query head's steps
  DqOrder order;   // deterministic mode: the last dQ add issued, counted by done()

  ss.barrier_kv.wait(0);  // K and V have landed
  typename Traits::PipelineState state;  // consumers start at stage 0, phase 0
  for (int t = 0; t < steps.count(); ++t) {
    const BwdStep s = make_step<Traits>(prm.p, steps, b, hk, j0, t);
    const int stage = state.index();

    // In the loop, so that the compiler sees them dead after the conversions (the wgmma asm lists
    // its accumulator as read even when ScaleOut::Zero ignores it).
    Tensor acc_s = partition_fragment_C(mma_sdp, Shape<Int<BN>, Int<BM>>{});
    Tensor acc_dp = partition_fragment_C(mma_sdp, Shape<Int<BN>, Int<BM>>{});
    pipe.consumer_wait(state);
    db += probs_and_dscores<Traits>(mma_sdp, ops.tSrK, ops.tSrQ(_, _, _, stage), ops.tSrV, ops.tSrDo(_, _, _, stage),
                                    tScS, s, j0, acc_s, acc_dp, [&] {
                                      if constexpr (kOrderedDq) {  // the previous step's add
                                        if (dq.dq_issuer && t > 0) order.done();
                                      }
                                    });
    gradient_gemms<Traits, kOrderedDq>(prm, mma_dkv, mma_dq, ops, dq, pipe, state, s, b, j0, stage, t & 1, acc_s,
                                       acc_dp, acc_dk, acc_dv, order);

    if (part != nullptr && t % steps.m_count == steps.m_count - 1) {  // the head's last step: fixed order
      store_block_sum<kThreads / 32>(db, ss.warp_sums, ctid, part + std::int64_t(t / steps.m_count) * gridDim.x,
                                     [] { cutlass::arch::NamedBarrier::sync(kThreads, kBarDbias); });
      db = 0.0f;
    }
  }
  if (dq.dq_issuer) tma_store_wait<0>();  // the last reduce-add has read the staging tile before the CTA ends
  if constexpr (kOrderedDq) {
    if (dq.dq_issuer && steps.count() > 0) order.done();
  }
}

}  // namespace flashsigmoid::cuda::hopper
