// Portable (sm_80+) sigmoid-attention backward. Sigmoid needs no saved statistics and no
// rowsum(dO * O) pre-pass: each kernel recomputes P = sigmoid(logit) with the forward's score
// transform and sigmoid, then
//   dP = dO V^T,  dS = dP * P * (1 - P)  (masked: P = 0, so dS = 0 exactly),
//   dV = P^T dO,  dK = scale * dS^T Q,  dQ = scale * dS K,  d(bias)_h = sum of dS.
// Deterministic mode (no atomics): dkdv_kernel owns dK, dV of one key block; dq_kernel owns dQ of
// one query block and writes that block's partial sum of dS; dbias_reduce_kernel adds the partials
// per head in a fixed order (common/bwd_workspace.cu).
// Default mode (DkDvMode::fused_dq): dkdv_kernel also adds dS K of each query step to an fp32 dQ workspace
// with atomics (so dQ's bits depend on their order) and writes per-key-block partials of d(bias);
// dq_convert_kernel scales and converts the workspace into dQ. dK, dV and d(bias) stay bitwise
// reproducible in both modes. The workspaces and their finishing kernels: common/bwd_workspace.hpp.
// Tiles and the shared-memory plan: bwd_traits.cuh.
#pragma once

#include <cstdint>
#include <utility>

#include "common/score_transform.hpp"
#include "cuda/common/block_sum.cuh"
#include "cuda/common/bwd_workspace.hpp"     // dq_accum_strides
#include "cuda/common/dscores.cuh"
#include "cuda/common/scores_to_probs.cuh"  // the forward's P, element for element
#include "cuda/common/sigmoid.cuh"
#include "cuda/portable/bwd_traits.cuh"
#include "cuda/portable/fwd_epilogue.cuh"
#include "cuda/portable/fwd_kernel.cuh"

namespace flashsigmoid::cuda::portable {

// dst[r * row_stride + c] += acc at the fragment's (r, c) (tCc: its coordinates), rows r <
// rows_left only (the rest lie past the sequence end: other sequences' rows or out of bounds).
// Elements 2i, 2i+1 of an SM80 C fragment are columns c, c+1 of one row (the atom's value mode
// (2, 2) runs along N first: BwdTraits checks it), so sm_90 adds each pair with one 8-byte reduction.
// Coordinates are taken relative to the thread's first element, so that each offset is a
// compile-time constant: one base pointer, no per-element 64-bit address arithmetic.
template <class Acc, class Coord>
__device__ __forceinline__ void atomic_add_rows(const Acc& acc, const Coord& tCc, float* dst,
                                                std::int64_t row_stride, std::int64_t rows_left) {
  const int r0 = get<0>(tCc(0));
  const int c0 = get<1>(tCc(0));
  float* base = dst + r0 * row_stride + c0;
  const std::int64_t rows_after_r0 = rows_left - r0;
  CUTE_UNROLL
  for (int i = 0; i < size(acc); i += 2) {
    const int dr = get<0>(tCc(i)) - r0;
    const int dc = get<1>(tCc(i)) - c0;
    if (dr < rows_after_r0) {
      float* at = base + dr * row_stride + dc;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
      atomicAdd(reinterpret_cast<float2*>(at), make_float2(acc(i), acc(i + 1)));
#else
      atomicAdd(at, acc(i));
      atomicAdd(at + 1, acc(i + 1));
#endif
    }
  }
}

// What one launch of the dK/dV kernel computes. A template value rather than a run-time flag so that
// the deterministic kernel keeps its registers and code.
enum class DkDvMode : int {
  dk_dv,    // dK and dV together (deterministic mode)
  dv_only,  // dV alone, then a second launch for
  dk_only,  // dK alone: head dims whose accumulators do not fit twice in registers (BwdTile::kSplitDkDv)
  fused_dq  // dK and dV, plus dQ added to dq_accum (fp32, see dq_accum_strides; unscaled) with atomics
            // and, with dbias_part, this key block's sum of dS per query head (default mode)
};

// The keys a dK/dV CTA owns (j0 .. j0 + keys of sequence seq) and the steps it walks: the query heads
// of its kv head's GQA group times the query blocks [m_begin, m_begin + m_count) that see its keys.
struct KeyBlock {
  detail::SeqInfo seq;
  std::int64_t j0 = 0;
  std::int64_t keys = 0;  // <= 0: past the sequence end (varlen), nothing to do
  int group = 1;
  int m_begin = 0;
  int m_count = 0;
  __device__ int steps() const { return group * m_count; }
  // Step t: query head hk * group + t / m_count, query block m_begin + t % m_count (block_q rows each).
  __device__ std::int64_t step_head(int hk, int t) const { return std::int64_t(hk) * group + t / m_count; }
  __device__ std::int64_t step_row0(int t, int block_q) const {
    return std::int64_t(m_begin + t % m_count) * block_q;
  }
};

template <int BK, int BQ>
__device__ __forceinline__ KeyBlock make_key_block(const detail::BwdParams& p, int n_block, int hk, int b) {
  KeyBlock kb;
  kb.seq = detail::seq_info(p, b);
  kb.j0 = std::int64_t(n_block) * BK;
  kb.group = int(p.heads_q / p.heads_kv);
  if (kb.j0 >= kb.seq.len_k) return kb;  // varlen: this sequence has fewer keys
  kb.keys = kb.seq.len_k - kb.j0 < BK ? kb.seq.len_k - kb.j0 : BK;
  // The visible query range depends only on the masks, not on the head (bias / ALiBi do not mask).
  const detail::ScoreTransform st = detail::make_score_transform(p, kb.seq, b, std::int64_t(hk) * kb.group);
  std::int64_t m_begin = 0, m_count = 0;
  st.query_blocks(kb.j0, kb.j0 + kb.keys, kb.seq.len_q, BQ, m_begin, m_count);
  kb.m_begin = int(m_begin);
  kb.m_count = int(m_count);
  return kb;
}

// Fused mode, one step: dQ(h, rows i0..) += dS K, kDqChunk columns at a time (sDs: this step's dS,
// sKt: K^T), added to the fp32 workspace row dqa with atomics.
template <class Traits, class SmemDs, class SmemKt, class CopyDs>
__device__ __forceinline__ void add_dq_fused(const SmemDs& sDs, const SmemKt& sKt, const CopyDs& tsDs, float* dqa,
                                             std::int64_t row_stride, std::int64_t rows_left, int tid) {
  constexpr int BK = Traits::kBlockKeys;
  constexpr int BQ = Traits::kBlockQA;
  using TileDq = Shape<Int<BQ>, Int<Traits::kDqChunk>>;
  typename Traits::TiledMmaDq mma_dq;
  auto thr_mma_dq = mma_dq.get_thread_slice(tid);
  auto s2r_dq_a = typename Traits::SmemCopyDqA{};
  auto s2r_dq_a_thr = s2r_dq_a.get_thread_slice(tid);
  auto s2r_dq_b = typename Traits::SmemCopyDqB{};
  auto s2r_dq_b_thr = s2r_dq_b.get_thread_slice(tid);
  Tensor tQcQ = thr_mma_dq.partition_C(make_identity_tensor(TileDq{}));  // (query, column in the chunk)
  CUTE_UNROLL
  for (int c = 0; c < Traits::kHeadDim / Traits::kDqChunk; ++c) {
    Tensor sKtc = local_tile(sKt, Shape<Int<Traits::kDqChunk>, Int<BK>>{}, make_coord(c, 0));
    Tensor rDs = thr_mma_dq.partition_fragment_A(sDs);
    Tensor rKt = thr_mma_dq.partition_fragment_B(sKtc);
    Tensor acc_dq = partition_fragment_C(mma_dq, TileDq{});
    clear(acc_dq);
    gemm_ss(acc_dq, rDs, rKt, tsDs, s2r_dq_b_thr.partition_S(sKtc), mma_dq, s2r_dq_a, s2r_dq_b, s2r_dq_a_thr,
            s2r_dq_b_thr);
    atomic_add_rows(acc_dq, tQcQ, dqa + c * Traits::kDqChunk, row_stride, rows_left);
  }
}

// This thread's MMA and the ldmatrix copies that feed it from shared memory: the machinery of every
// GEMM of a backward step. ss: acc += A B^T with both operands from shared memory; rs: acc += A Bt^T
// with A already in registers (an accumulator viewed as an A operand). regs: StepRegs.
template <class Traits>
struct StepMma {
  using ThrMma = decltype(std::declval<typename Traits::TiledMma&>().get_thread_slice(0));
  using CopyA = typename Traits::SmemCopyA;
  using CopyB = typename Traits::SmemCopyB;
  using CopyBt = typename Traits::SmemCopyBt;
  template <class Copy, class Smem>  // a thread's source partition of a tile (shared -> registers)
  using PartS = decltype(std::declval<Copy&>().get_thread_slice(0).partition_S(std::declval<Smem&>()));
  template <class Copy, class Smem>  // a thread's destination partition of a tile (registers -> shared)
  using PartD = decltype(std::declval<Copy&>().get_thread_slice(0).partition_D(std::declval<Smem&>()));

  typename Traits::TiledMma mma;
  ThrMma thr_mma;
  CopyA s2r_a;
  decltype(s2r_a.get_thread_slice(0)) s2r_a_thr;
  CopyB s2r_b;
  decltype(s2r_b.get_thread_slice(0)) s2r_b_thr;
  CopyBt s2r_bt;
  decltype(s2r_bt.get_thread_slice(0)) s2r_bt_thr;

  __device__ __forceinline__ explicit StepMma(int tid)
      : thr_mma(mma.get_thread_slice(tid)),
        s2r_a_thr(s2r_a.get_thread_slice(tid)),
        s2r_b_thr(s2r_b.get_thread_slice(tid)),
        s2r_bt_thr(s2r_bt.get_thread_slice(tid)) {}

  template <class Acc, class Regs, class TsA, class TsB>
  __device__ __forceinline__ void ss(Acc& acc, Regs& regs, const TsA& tsA, const TsB& tsB) {
    gemm_ss(acc, regs.rA, regs.rB, tsA, tsB, mma, s2r_a, s2r_b, s2r_a_thr, s2r_b_thr);
  }
  template <class Acc, class Regs, class FragA, class TsBt>
  __device__ __forceinline__ void rs(Acc& acc, Regs& regs, const FragA& tA, const TsBt& tsBt) {
    gemm_rs(acc, tA, regs.rBt, tsBt, mma, s2r_bt, s2r_bt_thr);
  }
};

// The operand registers that every GEMM of a step reuses: rA (an A tile), rB (one stage of a B tile),
// rBt (one stage of a transposed B tile). Not members of StepMma: one struct holding both compiled to
// different SASS (register allocation), and so did one holding them with the partitions.
template <class Traits, class SmemA, class SmemB, class SmemBt>
struct StepRegs {
  using ThrMma = typename StepMma<Traits>::ThrMma;
  decltype(std::declval<ThrMma&>().partition_fragment_A(std::declval<SmemA&>())) rA;
  decltype(std::declval<ThrMma&>().partition_fragment_B(std::declval<SmemB&>()(_, _, 0))) rB;
  decltype(std::declval<ThrMma&>().partition_fragment_B(std::declval<SmemBt&>()(_, _, 0))) rBt;

  __device__ __forceinline__ StepRegs(const ThrMma& thr_mma, SmemA& sA, SmemB& sB, SmemBt& sBt)
      : rA(thr_mma.partition_fragment_A(sA)),
        rB(thr_mma.partition_fragment_B(sB(_, _, 0))),
        rBt(thr_mma.partition_fragment_B(sBt(_, _, 0))) {}
};

// The dK/dV kernel's shared memory (bwd_traits.cuh's plan): K, V of the key block, two stages of Q
// and dO, and (fused_dq only, kSmemDs) one step's dS, with the views of the same bytes that the GEMMs
// read.
template <class Traits>
struct DkDvSmem {
  using Element = typename Traits::Element;
  template <class Layout>
  using View = decltype(make_tensor(make_smem_ptr(static_cast<Element*>(nullptr)), Layout{}));
  View<typename Traits::SmemLayoutKeys> sK, sV;    // (BK, D)
  View<typename Traits::SmemLayoutQA> sQ, sdO;     // (BQ, D, stage)
  View<typename Traits::SmemLayoutQAt> sQt, sdOt;  // (D, BQ, stage)
  View<typename Traits::SmemLayoutDsT> sDsT;       // (BK, BQ): dS^T as the accumulator holds it
  View<typename Traits::SmemLayoutDs> sDs;         // (BQ, BK)
  View<typename Traits::SmemLayoutKeysT> sKt;      // (D, BK)

  __device__ __forceinline__ explicit DkDvSmem(unsigned char* smem_raw) {
    Element* smem_k = reinterpret_cast<Element*>(smem_raw);
    Element* smem_v = smem_k + cosize(typename Traits::SmemLayoutKeys{});
    Element* smem_q = smem_v + cosize(typename Traits::SmemLayoutKeys{});
    Element* smem_do = smem_q + cosize(typename Traits::SmemLayoutQA{});
    Element* smem_ds = smem_do + cosize(typename Traits::SmemLayoutQA{});
    sK = make_tensor(make_smem_ptr(smem_k), typename Traits::SmemLayoutKeys{});
    sV = make_tensor(make_smem_ptr(smem_v), typename Traits::SmemLayoutKeys{});
    sQ = make_tensor(make_smem_ptr(smem_q), typename Traits::SmemLayoutQA{});
    sdO = make_tensor(make_smem_ptr(smem_do), typename Traits::SmemLayoutQA{});
    sQt = make_tensor(make_smem_ptr(smem_q), typename Traits::SmemLayoutQAt{});
    sdOt = make_tensor(make_smem_ptr(smem_do), typename Traits::SmemLayoutQAt{});
    sDsT = make_tensor(make_smem_ptr(smem_ds), typename Traits::SmemLayoutDsT{});
    sDs = make_tensor(make_smem_ptr(smem_ds), typename Traits::SmemLayoutDs{});
    sKt = make_tensor(make_smem_ptr(smem_k), typename Traits::SmemLayoutKeysT{});
  }
};

// This thread's partitions of the dK/dV kernel's tiles, made with g's copies: A = K or V (the CTA's
// keys are the MMA's M), B = Q or dO, B^T = Q^T or dO^T (per stage); tScS: (key, query) of each score
// element. Fused: dS^T registers -> sDsT (the accumulator's own layout, 4-byte stores); dQ += dS K
// reads sDs (its (query, key) view) as A (tsDs) and sKt (K^T, (D, key)) as B, both ldmatrix.trans.
template <class Traits, class Smem = DkDvSmem<Traits>>
struct DkDvPartitions {
  using Mma = StepMma<Traits>;
  using Regs = StepRegs<Traits, decltype(Smem::sK), decltype(Smem::sQ), decltype(Smem::sQt)>;
  using TileS = Shape<Int<Traits::kBlockKeys>, Int<Traits::kBlockQA>>;
  using CopyDs = typename Traits::SmemCopyDs;
  typename Mma::template PartS<typename Mma::CopyA, decltype(Smem::sK)> tsK, tsV;
  typename Mma::template PartS<typename Mma::CopyB, decltype(Smem::sQ)> tsQ, tsdO;
  typename Mma::template PartS<typename Mma::CopyBt, decltype(Smem::sQt)> tsQt, tsdOt;
  decltype(std::declval<typename Mma::ThrMma&>().partition_C(make_identity_tensor(TileS{}))) tScS;
  CopyDs r2s_ds;
  decltype(r2s_ds.get_thread_slice(0)) r2s_ds_thr;
  typename Mma::template PartD<CopyDs, decltype(Smem::sDsT)> tDSsDS;
  typename Mma::template PartS<typename Traits::SmemCopyDqA, decltype(Smem::sDs)> tsDs;

  __device__ __forceinline__ DkDvPartitions(const Mma& g, Smem& s, int tid)
      : tsK(g.s2r_a_thr.partition_S(s.sK)),
        tsV(g.s2r_a_thr.partition_S(s.sV)),
        tsQ(g.s2r_b_thr.partition_S(s.sQ)),
        tsdO(g.s2r_b_thr.partition_S(s.sdO)),
        tsQt(g.s2r_bt_thr.partition_S(s.sQt)),
        tsdOt(g.s2r_bt_thr.partition_S(s.sdOt)),
        tScS(g.thr_mma.partition_C(make_identity_tensor(TileS{}))),
        r2s_ds_thr(r2s_ds.get_thread_slice(tid)),
        tDSsDS(r2s_ds_thr.partition_D(s.sDsT)),
        tsDs(typename Traits::SmemCopyDqA{}.get_thread_slice(tid).partition_S(s.sDs)) {}
};

// K and V of the key block into shared memory by cp.async (rows past the key end: zero, and masked).
template <class Traits>
__device__ __forceinline__ void load_key_block(const detail::BwdParams& p, const KeyBlock& kb, int hk, int b,
                                               DkDvSmem<Traits>& smem, int tid) {
  using Element = typename Traits::Element;
  using TileK = Shape<Int<Traits::kBlockKeys>, Int<Traits::kHeadDim>>;
  typename Traits::GmemLoad g2s;
  auto g2s_thr = g2s.get_thread_slice(tid);
  Tensor tKc = g2s_thr.partition_S(make_identity_tensor(TileK{}));
  const Element* k_ptr = static_cast<const Element*>(p.k) + p.k_stride.offset(b, kb.seq.k_begin + kb.j0, hk);
  const Element* v_ptr = static_cast<const Element*>(p.v) + p.v_stride.offset(b, kb.seq.k_begin + kb.j0, hk);
  Tensor gK = make_tensor(make_gmem_ptr(k_ptr), TileK{}, make_stride(p.k_stride.row, _1{}));
  Tensor gV = make_tensor(make_gmem_ptr(v_ptr), TileK{}, make_stride(p.v_stride.row, _1{}));
  copy_rows_zfill(g2s, g2s_thr.partition_S(gK), g2s_thr.partition_D(smem.sK), tKc, kb.keys);
  copy_rows_zfill(g2s, g2s_thr.partition_S(gV), g2s_thr.partition_D(smem.sV), tKc, kb.keys);
}

// The dK/dV walk's per-step loads: Q and dO of step t into `stage` by cp.async, through this
// thread's partitions (computed once, before the walk) from row 0 of sequence b, head 0, of q and dO.
// A struct: the same loads as a closure returned by a function compiled to different SASS.
template <class Traits>
struct QdOLoads {
  using Element = typename Traits::Element;
  using TileQ = Shape<Int<Traits::kBlockQA>, Int<Traits::kHeadDim>>;
  using Smem = DkDvSmem<Traits>;
  typename Traits::GmemLoad g2s;
  decltype(g2s.get_thread_slice(0)) g2s_thr;
  decltype(g2s_thr.partition_D(std::declval<decltype(Smem::sQ)&>())) tQsQ, tDsD;
  decltype(g2s_thr.partition_S(make_identity_tensor(TileQ{}))) tQc;
  const Element* q_base;
  const Element* do_base;

  __device__ __forceinline__ QdOLoads(const detail::BwdParams& p, const KeyBlock& kb, int b, Smem& smem, int tid)
      : g2s_thr(g2s.get_thread_slice(tid)),
        tQsQ(g2s_thr.partition_D(smem.sQ)),
        tDsD(g2s_thr.partition_D(smem.sdO)),
        tQc(g2s_thr.partition_S(make_identity_tensor(TileQ{}))),
        q_base(static_cast<const Element*>(p.q) + b * p.q_stride.batch + kb.seq.q_begin * p.q_stride.row),
        do_base(static_cast<const Element*>(p.dout) + b * p.do_stride.batch + kb.seq.q_begin * p.do_stride.row) {}

  __device__ __forceinline__ void load(const detail::BwdParams& p, const KeyBlock& kb, int hk, int t, int stage) {
    const std::int64_t h = kb.step_head(hk, t);
    const std::int64_t i0 = kb.step_row0(t, Traits::kBlockQA);
    Tensor gQ = make_tensor(make_gmem_ptr(q_base + i0 * p.q_stride.row + h * p.q_stride.head), TileQ{},
                            make_stride(p.q_stride.row, _1{}));
    Tensor gdO = make_tensor(make_gmem_ptr(do_base + i0 * p.do_stride.row + h * p.do_stride.head), TileQ{},
                             make_stride(p.do_stride.row, _1{}));
    // Rows past the sequence end are zero: dO = 0 there makes their dP, dS and P^T dO terms 0.
    copy_rows_zfill(g2s, g2s_thr.partition_S(gQ), tQsQ(_, _, _, stage), tQc, kb.seq.len_q - i0);
    copy_rows_zfill(g2s, g2s_thr.partition_S(gdO), tDsD(_, _, _, stage), tQc, kb.seq.len_q - i0);
  }
};

// One step's GEMMs on Q, dO of `stage` (query rows i0.., st: the step's head): P^T = sigmoid(K Q^T)
// (rows past the key end or masked: 0), dV += P^T dO, dS^T = (V dO^T) * P^T * (1 - P^T) (db += this
// thread's sum), dK += dS^T Q; fused, dS^T also into sDsT for the dQ GEMM.
template <class Traits, DkDvMode kMode, class Regs, class Tiles, class AccKV>
__device__ __forceinline__ void dkdv_step(StepMma<Traits>& mma, Regs& regs, Tiles& tiles, AccKV& acc_dk, AccKV& acc_dv,
                                          const detail::ScoreTransform& st, std::int64_t i0, std::int64_t j0,
                                          bool full, int stage, float& db) {
  using Element = typename Traits::Element;
  using TileS = typename Tiles::TileS;
  Tensor acc_s = partition_fragment_C(mma.mma, TileS{});
  clear(acc_s);
  mma.ss(acc_s, regs, tiles.tsK, tiles.tsQ(_, _, _, stage));
  scores_to_probs<Element, true>(acc_s, tiles.tScS, st, i0, j0, full);

  if constexpr (kMode != DkDvMode::dk_only) {  // dV += P^T dO
    Tensor rP = convert_fragment<Element>(acc_s);
    Tensor tPr = make_tensor(rP.data(), acc_layout_as_a_operand(rP.layout()));
    mma.rs(acc_dv, regs, tPr, tiles.tsdOt(_, _, _, stage));
  }
  if constexpr (kMode != DkDvMode::dv_only) {  // dS^T = (V dO^T) * P^T * (1 - P^T);  dK += dS^T Q
    constexpr bool kFused = kMode == DkDvMode::fused_dq;
    Tensor acc_dp = partition_fragment_C(mma.mma, TileS{});
    clear(acc_dp);
    mma.ss(acc_dp, regs, tiles.tsV, tiles.tsdO(_, _, _, stage));
    db += probs_to_dscores<kFused>(acc_dp, acc_s);
    Tensor rdS = convert_fragment<Element>(acc_dp);
    // sDsT was last read in step t-1, which ended with a __syncthreads.
    if constexpr (kFused) copy(tiles.r2s_ds, tiles.r2s_ds_thr.retile_S(rdS), tiles.tDSsDS);
    Tensor tdSr = make_tensor(rdS.data(), acc_layout_as_a_operand(rdS.layout()));
    mma.rs(acc_dk, regs, tdSr, tiles.tsQt(_, _, _, stage));
  }
}

// The dK/dV kernel's walk over its steps (kb.steps() > 0): K, V stay in shared memory; Q and dO of
// step t + 1 load (cp.async) while step t computes P^T, dV += P^T dO, dS^T, dK += dS^T Q and, fused,
// dQ and the d(bias) partials part[step's head * gridDim.x].
template <class Traits, DkDvMode kMode, class AccKV>
__device__ __forceinline__ void dkdv_mainloop(const detail::BwdParams& p, const KeyBlock& kb, int hk, int b,
                                              unsigned char* smem_raw, AccKV& acc_dk, AccKV& acc_dv,
                                              float* dq_accum, float* part, float* warp_sums, int tid) {
  constexpr int BK = Traits::kBlockKeys;  // keys of this CTA (MMA M)
  constexpr int BQ = Traits::kBlockQA;    // queries per step
  constexpr bool kDoDQ = kMode == DkDvMode::fused_dq;
  const detail::SeqInfo& seq = kb.seq;
  const std::int64_t j0 = kb.j0;

  DkDvSmem<Traits> smem(smem_raw);
  QdOLoads<Traits> loads(p, kb, b, smem, tid);
  StepMma<Traits> mma(tid);
  typename DkDvPartitions<Traits>::Regs regs(mma.thr_mma, smem.sK, smem.sQ, smem.sQt);
  DkDvPartitions<Traits> tiles(mma, smem, tid);
  const detail::OperandStrides acc_stride = dq_accum_strides<Traits::kHeadDim>(p);
  float db = 0.0f;  // this thread's sum of dS over the current query head's steps

  // Group 0: K, V and step 0's Q, dO.
  load_key_block<Traits>(p, kb, hk, b, smem, tid);
  loads.load(p, kb, hk, 0, 0);
  cp_async_fence();

  std::int64_t cur_head = -1;
  detail::ScoreTransform st;
  for (int t = 0; t < kb.steps(); ++t) {
    const int stage = t & 1;
    // Stage (t+1)&1 was last read in step t-1, which ended with a __syncthreads.
    if (t + 1 < kb.steps()) loads.load(p, kb, hk, t + 1, stage ^ 1);
    cp_async_fence();  // always commit (possibly empty) so the wait count is the same every step
    cp_async_wait<1>();
    __syncthreads();

    const std::int64_t h = kb.step_head(hk, t);
    const std::int64_t i0 = kb.step_row0(t, BQ);
    if (h != cur_head) {
      cur_head = h;
      st = detail::make_score_transform(p, seq, b, h).scaled_by(0.5f);  // logit() = s / 2
    }
    const std::int64_t i1 = seq.len_q - i0 < BQ ? seq.len_q : i0 + BQ;
    const bool full = st.block_unmasked(i0, i1, j0, j0 + BK);
    dkdv_step<Traits, kMode>(mma, regs, tiles, acc_dk, acc_dv, st, i0, j0, full, stage, db);
    if constexpr (kDoDQ) {
      __syncthreads();  // every warp's keys of dS^T are in sDsT
      add_dq_fused<Traits>(smem.sDs, smem.sKt, tiles.tsDs, dq_accum + acc_stride.offset(b, seq.q_begin + i0, h),
                           acc_stride.row, seq.len_q - i0, tid);
    }
    __syncthreads();  // every warp is done with this stage (and sDsT) before step t+1 refills it
    if constexpr (kDoDQ) {
      if (part != nullptr && t % kb.m_count == kb.m_count - 1) {  // the head's last step: its partial
        // warp_sums: tid 0's last read was before this step's syncs.
        store_block_sum<Traits::kNWarps>(db, warp_sums, tid, part + std::int64_t(t / kb.m_count) * gridDim.x,
                                         [] { __syncthreads(); });
        db = 0.0f;
      }
    }
  }
  cp_async_wait<0>();
}

// dK and dV of one key block (grid: key blocks, kv heads, batch), as kMode says; fused, also dQ's terms
// in dq_accum and, with dbias_part, this key block's sum of dS per query head h at
// dbias_part[(b * Hq + h) * gridDim.x + n_block].
template <class Traits, DkDvMode kMode>
__global__ void __launch_bounds__(Traits::kNThreads, 1)
    dkdv_kernel(const __grid_constant__ detail::BwdParams p, float* __restrict__ dq_accum,
                float* __restrict__ dbias_part) {
  using Element = typename Traits::Element;
  constexpr int BK = Traits::kBlockKeys;
  constexpr bool kFused = kMode == DkDvMode::fused_dq;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  __shared__ float warp_sums[kFused ? Traits::kNWarps : 1];
  const int tid = threadIdx.x;
  const int n_block = blockIdx.x;
  const int hk = blockIdx.y;
  const int b = blockIdx.z;

  const KeyBlock kb = make_key_block<BK, Traits::kBlockQA>(p, n_block, hk, b);
  // Fused d(bias): this key block's partial of query head hk * group + g is part[g * gridDim.x].
  float* part = kFused && dbias_part != nullptr
                    ? dbias_part + (std::int64_t(b) * p.heads_q + std::int64_t(hk) * kb.group) * gridDim.x + n_block
                    : nullptr;
  if (kb.steps() == 0 && part != nullptr) {  // past the sequence end, or no query sees it: adds 0
    for (int g = tid; g < kb.group; g += Traits::kNThreads) part[std::int64_t(g) * gridDim.x] = 0.0f;
  }
  if (kb.keys <= 0) return;  // varlen: this sequence has fewer keys

  typename Traits::TiledMma mma;
  Tensor acc_dk = partition_fragment_C(mma, Shape<Int<BK>, Int<Traits::kHeadDim>>{});
  Tensor acc_dv = partition_fragment_C(mma, Shape<Int<BK>, Int<Traits::kHeadDim>>{});
  clear(acc_dk);
  clear(acc_dv);
  if (kb.steps() > 0) {
    dkdv_mainloop<Traits, kMode>(p, kb, hk, b, smem_raw, acc_dk, acc_dv, dq_accum, part, warp_sums, tid);
  }

  // Epilogue: through K's and V's shared memory (store_output synchronises before writing it); rows
  // that no query sees are zeros.
  Element* smem_k = reinterpret_cast<Element*>(smem_raw);
  Element* smem_v = smem_k + cosize(typename Traits::SmemLayoutKeys{});
  const std::int64_t key_row = kb.seq.k_begin + kb.j0;
  if constexpr (kMode != DkDvMode::dk_only) {
    Element* dv_ptr = static_cast<Element*>(p.dv) + p.dv_stride.offset(b, key_row, hk);
    Tensor gdV = make_tensor(make_gmem_ptr(dv_ptr), Shape<Int<BK>, Int<Traits::kHeadDim>>{},
                             make_stride(p.dv_stride.row, _1{}));
    store_output<typename Traits::StoreKeys>(acc_dv, smem_v, gdV, kb.keys, tid);
  }
  if constexpr (kMode != DkDvMode::dv_only) {
    scale_fragment(acc_dk, p.scale);
    Element* dk_ptr = static_cast<Element*>(p.dk) + p.dk_stride.offset(b, key_row, hk);
    Tensor gdK = make_tensor(make_gmem_ptr(dk_ptr), Shape<Int<BK>, Int<Traits::kHeadDim>>{},
                             make_stride(p.dk_stride.row, _1{}));
    store_output<typename Traits::StoreKeys>(acc_dk, smem_k, gdK, kb.keys, tid);
  }
}

// The dQ kernel's shared memory (bwd_traits.cuh's plan): Q and dO of the query block, two stages of
// K and V, and K^T, the view of K's bytes that dQ += dS K reads.
template <class Traits>
struct DqSmem {
  using Element = typename Traits::Element;
  template <class Layout>
  using View = decltype(make_tensor(make_smem_ptr(static_cast<Element*>(nullptr)), Layout{}));
  View<typename Traits::SmemLayoutQ> sQ, sdO;  // (BM, D)
  View<typename Traits::SmemLayoutKB> sK, sV;  // (BN, D, stage)
  View<typename Traits::SmemLayoutKBt> sKt;    // (D, BN, stage)

  __device__ __forceinline__ explicit DqSmem(unsigned char* smem_raw) {
    Element* smem_q = reinterpret_cast<Element*>(smem_raw);
    Element* smem_do = smem_q + cosize(typename Traits::SmemLayoutQ{});
    Element* smem_k = smem_do + cosize(typename Traits::SmemLayoutQ{});
    Element* smem_v = smem_k + cosize(typename Traits::SmemLayoutKB{});
    sQ = make_tensor(make_smem_ptr(smem_q), typename Traits::SmemLayoutQ{});
    sdO = make_tensor(make_smem_ptr(smem_do), typename Traits::SmemLayoutQ{});
    sK = make_tensor(make_smem_ptr(smem_k), typename Traits::SmemLayoutKB{});
    sV = make_tensor(make_smem_ptr(smem_v), typename Traits::SmemLayoutKB{});
    sKt = make_tensor(make_smem_ptr(smem_k), typename Traits::SmemLayoutKBt{});
  }
};

// This thread's partitions of the dQ kernel's tiles, made with g's copies: A = Q or dO (the block's
// queries are the MMA's M), B = K or V, B^T = K^T (per stage); tScS: (query, key) of each score element.
template <class Traits, class Smem = DqSmem<Traits>>
struct DqPartitions {
  using Mma = StepMma<Traits>;
  using Regs = StepRegs<Traits, decltype(Smem::sQ), decltype(Smem::sK), decltype(Smem::sKt)>;
  using TileS = Shape<Int<Traits::kBlockQ>, Int<Traits::kBlockKB>>;
  typename Mma::template PartS<typename Mma::CopyA, decltype(Smem::sQ)> tsQ, tsdO;
  typename Mma::template PartS<typename Mma::CopyB, decltype(Smem::sK)> tsK, tsV;
  typename Mma::template PartS<typename Mma::CopyBt, decltype(Smem::sKt)> tsKt;
  decltype(std::declval<typename Mma::ThrMma&>().partition_C(make_identity_tensor(TileS{}))) tScS;

  __device__ __forceinline__ DqPartitions(const Mma& g, Smem& s)
      : tsQ(g.s2r_a_thr.partition_S(s.sQ)),
        tsdO(g.s2r_a_thr.partition_S(s.sdO)),
        tsK(g.s2r_b_thr.partition_S(s.sK)),
        tsV(g.s2r_b_thr.partition_S(s.sV)),
        tsKt(g.s2r_bt_thr.partition_S(s.sKt)),
        tScS(g.thr_mma.partition_C(make_identity_tensor(TileS{}))) {}
};

// The dQ kernel's global memory: rows m0.. of query head h in q, dO and dQ, and the keys of its kv
// head from the sequence's first key row in k, v.
template <class Element>
struct DqPointers {
  const Element* q;
  const Element* dout;
  const Element* k;
  const Element* v;
  Element* dq;
};

template <class Element>
__device__ __forceinline__ DqPointers<Element> dq_pointers(const detail::BwdParams& p, const detail::SeqInfo& seq,
                                                           int b, int h, std::int64_t m0) {
  const std::int64_t hk = h / (p.heads_q / p.heads_kv);
  DqPointers<Element> ptr;
  ptr.q = static_cast<const Element*>(p.q) + b * p.q_stride.batch + (seq.q_begin + m0) * p.q_stride.row +
          h * p.q_stride.head;
  ptr.dout = static_cast<const Element*>(p.dout) + b * p.do_stride.batch + (seq.q_begin + m0) * p.do_stride.row +
             h * p.do_stride.head;
  ptr.k = static_cast<const Element*>(p.k) + b * p.k_stride.batch + seq.k_begin * p.k_stride.row + hk * p.k_stride.head;
  ptr.v = static_cast<const Element*>(p.v) + b * p.v_stride.batch + seq.k_begin * p.v_stride.row + hk * p.v_stride.head;
  ptr.dq = static_cast<Element*>(p.dq) + b * p.dq_stride.batch + (seq.q_begin + m0) * p.dq_stride.row +
           h * p.dq_stride.head;
  return ptr;
}

// The dQ kernel's cp.async loads through this thread's partitions: Q and dO of the block once (rows
// past the sequence end zero: their dS is 0), K and V of key block n into `stage` per step (rows past
// the key end zero, and masked).
template <class Traits>
struct DqLoads {
  using Element = typename Traits::Element;
  using TileQ = Shape<Int<Traits::kBlockQ>, Int<Traits::kHeadDim>>;
  using TileKV = Shape<Int<Traits::kBlockKB>, Int<Traits::kHeadDim>>;
  using Smem = DqSmem<Traits>;
  typename Traits::GmemLoad g2s;
  decltype(g2s.get_thread_slice(0)) g2s_thr;
  decltype(g2s_thr.partition_D(std::declval<decltype(Smem::sQ)&>())) tQsQ, tDsD;
  decltype(g2s_thr.partition_D(std::declval<decltype(Smem::sK)&>())) tKsK, tVsV;
  decltype(g2s_thr.partition_S(make_identity_tensor(TileQ{}))) tQc;
  decltype(g2s_thr.partition_S(make_identity_tensor(TileKV{}))) tKVc;

  __device__ __forceinline__ DqLoads(Smem& smem, int tid)
      : g2s_thr(g2s.get_thread_slice(tid)),
        tQsQ(g2s_thr.partition_D(smem.sQ)),
        tDsD(g2s_thr.partition_D(smem.sdO)),
        tKsK(g2s_thr.partition_D(smem.sK)),
        tVsV(g2s_thr.partition_D(smem.sV)),
        tQc(g2s_thr.partition_S(make_identity_tensor(TileQ{}))),
        tKVc(g2s_thr.partition_S(make_identity_tensor(TileKV{}))) {}

  __device__ __forceinline__ void queries(const detail::BwdParams& p, const DqPointers<Element>& ptr,
                                          std::int64_t rows) {
    Tensor gQ = make_tensor(make_gmem_ptr(ptr.q), TileQ{}, make_stride(p.q_stride.row, _1{}));
    Tensor gdO = make_tensor(make_gmem_ptr(ptr.dout), TileQ{}, make_stride(p.do_stride.row, _1{}));
    copy_rows_zfill(g2s, g2s_thr.partition_S(gQ), tQsQ, tQc, rows);
    copy_rows_zfill(g2s, g2s_thr.partition_S(gdO), tDsD, tQc, rows);
  }
  __device__ __forceinline__ void keys(const detail::BwdParams& p, const DqPointers<Element>& ptr,
                                       std::int64_t len_k, int n, int stage) {
    const std::int64_t r0 = std::int64_t(n) * Traits::kBlockKB;
    Tensor gK = make_tensor(make_gmem_ptr(ptr.k + r0 * p.k_stride.row), TileKV{}, make_stride(p.k_stride.row, _1{}));
    Tensor gV = make_tensor(make_gmem_ptr(ptr.v + r0 * p.v_stride.row), TileKV{}, make_stride(p.v_stride.row, _1{}));
    copy_rows_zfill(g2s, g2s_thr.partition_S(gK), tKsK(_, _, _, stage), tKVc, len_k - r0);
    copy_rows_zfill(g2s, g2s_thr.partition_S(gV), tVsV(_, _, _, stage), tKVc, len_k - r0);
  }
};

// dQ of one query block; with dbias_part, also the block's sum of dS at
// dbias_part[(b * Hq + h) * gridDim.x + m_block] (0 for blocks past the sequence end). Q and dO stay
// in shared memory; K and V of key block n + 1 load (cp.async) while block n computes P, dS (db: this
// thread's sum) and dQ += dS K. The step stays in the loop: as a function it compiled to other SASS.
template <class Traits>
__global__ void __launch_bounds__(Traits::kNThreads, 1)
    dq_kernel(const __grid_constant__ detail::BwdParams p, float* __restrict__ dbias_part) {
  using Element = typename Traits::Element;
  constexpr int BM = Traits::kBlockQ;
  constexpr int BN = Traits::kBlockKB;
  using TileQ = Shape<Int<BM>, Int<Traits::kHeadDim>>;
  using TileS = Shape<Int<BM>, Int<BN>>;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  __shared__ float warp_sums[Traits::kNWarps];
  const int tid = threadIdx.x;
  // Causal: the last query blocks see the most keys, so they are scheduled first.
  const int m_block = p.causal ? int(gridDim.x - 1 - blockIdx.x) : int(blockIdx.x);
  const int h = blockIdx.y;
  const int b = blockIdx.z;
  float* part = dbias_part != nullptr
                    ? dbias_part + (std::int64_t(b) * p.heads_q + h) * std::int64_t(gridDim.x) + m_block
                    : nullptr;
  const detail::SeqInfo seq = detail::seq_info(p, b);
  const std::int64_t m0 = std::int64_t(m_block) * BM;
  if (m0 >= seq.len_q) {
    if (part != nullptr && tid == 0) *part = 0.0f;
    return;
  }
  const std::int64_t rows = seq.len_q - m0 < BM ? seq.len_q - m0 : BM;
  const detail::ScoreTransform st = detail::make_score_transform(p, seq, b, h).scaled_by(0.5f);
  int n_begin = 0, n_blocks = 0;
  st.key_blocks(m0, m0 + rows, BN, n_begin, n_blocks);
  const DqPointers<Element> ptr = dq_pointers<Element>(p, seq, b, h, m0);

  DqSmem<Traits> smem(smem_raw);
  typename Traits::TiledMma tiled_mma;
  Tensor acc_dq = partition_fragment_C(tiled_mma, TileQ{});
  clear(acc_dq);
  float db = 0.0f;
  if (n_blocks > 0) {
    DqLoads<Traits> loads(smem, tid);
    StepMma<Traits> mma(tid);
    typename DqPartitions<Traits>::Regs regs(mma.thr_mma, smem.sQ, smem.sK, smem.sKt);
    DqPartitions<Traits> tiles(mma, smem);
    loads.queries(p, ptr, rows);  // group 0: Q, dO and key block 0
    loads.keys(p, ptr, seq.len_k, n_begin, 0);
    cp_async_fence();
    for (int it = 0; it < n_blocks; ++it) {
      const int n = n_begin + it;
      const int stage = it & 1;
      if (it + 1 < n_blocks) loads.keys(p, ptr, seq.len_k, n + 1, stage ^ 1);  // freed by step it-1's last sync
      cp_async_fence();
      cp_async_wait<1>();
      __syncthreads();
      const std::int64_t j0 = std::int64_t(n) * BN;
      Tensor acc_s = partition_fragment_C(mma.mma, TileS{});  // P = sigmoid(Q K^T) (masked: 0)
      clear(acc_s);
      mma.ss(acc_s, regs, tiles.tsQ, tiles.tsK(_, _, _, stage));
      scores_to_probs<Element>(acc_s, tiles.tScS, st, m0, j0, st.block_unmasked(m0, m0 + rows, j0, j0 + BN));
      Tensor acc_dp = partition_fragment_C(mma.mma, TileS{});  // dS = (dO V^T) * P * (1 - P)
      clear(acc_dp);
      mma.ss(acc_dp, regs, tiles.tsdO, tiles.tsV(_, _, _, stage));
      db += probs_to_dscores<true>(acc_dp, acc_s);
      Tensor rdS = convert_fragment<Element>(acc_dp);  // dQ += dS K
      Tensor tdSr = make_tensor(rdS.data(), acc_layout_as_a_operand(rdS.layout()));
      mma.rs(acc_dq, regs, tdSr, tiles.tsKt(_, _, _, stage));
      __syncthreads();  // every warp is done with this stage before the next prefetch refills it
    }
    cp_async_wait<0>();
  }
  if (part != nullptr) store_block_sum<Traits::kNWarps>(db, warp_sums, tid, part, [] { __syncthreads(); });

  scale_fragment(acc_dq, p.scale);
  Tensor gdQ = make_tensor(make_gmem_ptr(ptr.dq), TileQ{}, make_stride(p.dq_stride.row, _1{}));
  store_output<typename Traits::StoreQ>(acc_dq, reinterpret_cast<Element*>(smem_raw), gdQ, rows, tid);
}

}  // namespace flashsigmoid::cuda::portable
