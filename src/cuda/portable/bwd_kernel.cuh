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

// The dK/dV kernel's walk over its steps (kb.steps() > 0): K, V stay in shared memory; Q and dO of
// step t + 1 load (cp.async) while step t computes P^T, dV += P^T dO, dS^T, dK += dS^T Q and, fused,
// dQ and the d(bias) partials part[step's head * gridDim.x].
template <class Traits, DkDvMode kMode, class AccKV>
__device__ __forceinline__ void dkdv_mainloop(const detail::BwdParams& p, const KeyBlock& kb, int hk, int b,
                                              unsigned char* smem_raw, AccKV& acc_dk, AccKV& acc_dv,
                                              float* dq_accum, float* part, float* warp_sums, int tid) {
  using Element = typename Traits::Element;
  constexpr int BK = Traits::kBlockKeys;  // keys of this CTA (MMA M)
  constexpr int BQ = Traits::kBlockQA;    // queries per step
  constexpr int D = Traits::kHeadDim;
  constexpr bool kDoDV = kMode != DkDvMode::dk_only;
  constexpr bool kDoDK = kMode != DkDvMode::dv_only;
  constexpr bool kDoDQ = kMode == DkDvMode::fused_dq;
  using TileK = Shape<Int<BK>, Int<D>>;
  using TileQ = Shape<Int<BQ>, Int<D>>;
  const detail::SeqInfo& seq = kb.seq;
  const std::int64_t j0 = kb.j0;

  Element* smem_k = reinterpret_cast<Element*>(smem_raw);
  Element* smem_v = smem_k + cosize(typename Traits::SmemLayoutKeys{});
  Element* smem_q = smem_v + cosize(typename Traits::SmemLayoutKeys{});
  Element* smem_do = smem_q + cosize(typename Traits::SmemLayoutQA{});
  Element* smem_ds = smem_do + cosize(typename Traits::SmemLayoutQA{});  // fused_dq only (kSmemDs)
  Tensor sK = make_tensor(make_smem_ptr(smem_k), typename Traits::SmemLayoutKeys{});     // (BK, D)
  Tensor sV = make_tensor(make_smem_ptr(smem_v), typename Traits::SmemLayoutKeys{});     // (BK, D)
  Tensor sQ = make_tensor(make_smem_ptr(smem_q), typename Traits::SmemLayoutQA{});       // (BQ, D, stage)
  Tensor sdO = make_tensor(make_smem_ptr(smem_do), typename Traits::SmemLayoutQA{});     // (BQ, D, stage)
  Tensor sQt = make_tensor(make_smem_ptr(smem_q), typename Traits::SmemLayoutQAt{});     // (D, BQ, stage)
  Tensor sdOt = make_tensor(make_smem_ptr(smem_do), typename Traits::SmemLayoutQAt{});   // (D, BQ, stage)

  typename Traits::GmemLoad g2s;
  auto g2s_thr = g2s.get_thread_slice(tid);
  Tensor tQsQ = g2s_thr.partition_D(sQ);
  Tensor tDsD = g2s_thr.partition_D(sdO);
  Tensor tKc = g2s_thr.partition_S(make_identity_tensor(TileK{}));
  Tensor tQc = g2s_thr.partition_S(make_identity_tensor(TileQ{}));
  // Row 0 of sequence b, head 0, of q and dO.
  const Element* q_base = static_cast<const Element*>(p.q) + b * p.q_stride.batch + seq.q_begin * p.q_stride.row;
  const Element* do_base =
      static_cast<const Element*>(p.dout) + b * p.do_stride.batch + seq.q_begin * p.do_stride.row;

  // Step t: query head hk * group + t / m_count, query block m_begin + t % m_count.
  auto step_head = [&](int t) { return std::int64_t(hk) * kb.group + t / kb.m_count; };
  auto step_row0 = [&](int t) { return std::int64_t(kb.m_begin + t % kb.m_count) * BQ; };
  auto load_q_do = [&](int t, int stage) {
    const std::int64_t h = step_head(t);
    const std::int64_t i0 = step_row0(t);
    Tensor gQ = make_tensor(make_gmem_ptr(q_base + i0 * p.q_stride.row + h * p.q_stride.head), TileQ{},
                            make_stride(p.q_stride.row, _1{}));
    Tensor gdO = make_tensor(make_gmem_ptr(do_base + i0 * p.do_stride.row + h * p.do_stride.head), TileQ{},
                             make_stride(p.do_stride.row, _1{}));
    // Rows past the sequence end are zero: dO = 0 there makes their dP, dS and P^T dO terms 0.
    copy_rows_zfill(g2s, g2s_thr.partition_S(gQ), tQsQ(_, _, _, stage), tQc, seq.len_q - i0);
    copy_rows_zfill(g2s, g2s_thr.partition_S(gdO), tDsD(_, _, _, stage), tQc, seq.len_q - i0);
  };

  // Shared -> registers.
  typename Traits::TiledMma mma;
  auto thr_mma = mma.get_thread_slice(tid);
  auto s2r_a = typename Traits::SmemCopyA{};
  auto s2r_a_thr = s2r_a.get_thread_slice(tid);
  auto s2r_b = typename Traits::SmemCopyB{};
  auto s2r_b_thr = s2r_b.get_thread_slice(tid);
  auto s2r_bt = typename Traits::SmemCopyBt{};
  auto s2r_bt_thr = s2r_bt.get_thread_slice(tid);
  Tensor rA = thr_mma.partition_fragment_A(sK);               // K or V
  Tensor rB = thr_mma.partition_fragment_B(sQ(_, _, 0));      // Q or dO
  Tensor rBt = thr_mma.partition_fragment_B(sQt(_, _, 0));    // Q^T or dO^T
  Tensor tsK = s2r_a_thr.partition_S(sK);
  Tensor tsV = s2r_a_thr.partition_S(sV);
  Tensor tsQ = s2r_b_thr.partition_S(sQ);
  Tensor tsdO = s2r_b_thr.partition_S(sdO);
  Tensor tsQt = s2r_bt_thr.partition_S(sQt);
  Tensor tsdOt = s2r_bt_thr.partition_S(sdOt);
  Tensor tScS = thr_mma.partition_C(make_identity_tensor(Shape<Int<BK>, Int<BQ>>{}));  // (key, query)

  // Fused dQ: dS^T registers -> sDsT (the accumulator's own layout, 4-byte stores); dQ += dS K
  // reads sDs (its (query, key) view) as A and sKt (K^T, (D, key)) as B, both ldmatrix.trans.
  Tensor sDsT = make_tensor(make_smem_ptr(smem_ds), typename Traits::SmemLayoutDsT{});     // (BK, BQ)
  Tensor sDs = make_tensor(make_smem_ptr(smem_ds), typename Traits::SmemLayoutDs{});       // (BQ, BK)
  Tensor sKt = make_tensor(make_smem_ptr(smem_k), typename Traits::SmemLayoutKeysT{});    // (D, BK)
  auto r2s_ds = typename Traits::SmemCopyDs{};
  auto r2s_ds_thr = r2s_ds.get_thread_slice(tid);
  Tensor tDSsDS = r2s_ds_thr.partition_D(sDsT);
  Tensor tsDs = typename Traits::SmemCopyDqA{}.get_thread_slice(tid).partition_S(sDs);
  const detail::OperandStrides acc_stride = dq_accum_strides<D>(p);
  float db = 0.0f;  // this thread's sum of dS over the current query head's steps

  // Group 0: K, V and step 0's Q, dO.
  const Element* k_ptr = static_cast<const Element*>(p.k) + p.k_stride.offset(b, seq.k_begin + j0, hk);
  const Element* v_ptr = static_cast<const Element*>(p.v) + p.v_stride.offset(b, seq.k_begin + j0, hk);
  Tensor gK = make_tensor(make_gmem_ptr(k_ptr), TileK{}, make_stride(p.k_stride.row, _1{}));
  Tensor gV = make_tensor(make_gmem_ptr(v_ptr), TileK{}, make_stride(p.v_stride.row, _1{}));
  copy_rows_zfill(g2s, g2s_thr.partition_S(gK), g2s_thr.partition_D(sK), tKc, kb.keys);
  copy_rows_zfill(g2s, g2s_thr.partition_S(gV), g2s_thr.partition_D(sV), tKc, kb.keys);
  load_q_do(0, 0);
  cp_async_fence();

  std::int64_t cur_head = -1;
  detail::ScoreTransform st;
  for (int t = 0; t < kb.steps(); ++t) {
    const int stage = t & 1;
    // Stage (t+1)&1 was last read in step t-1, which ended with a __syncthreads.
    if (t + 1 < kb.steps()) load_q_do(t + 1, stage ^ 1);
    cp_async_fence();  // always commit (possibly empty) so the wait count is the same every step
    cp_async_wait<1>();
    __syncthreads();

    const std::int64_t h = step_head(t);
    const std::int64_t i0 = step_row0(t);
    if (h != cur_head) {
      cur_head = h;
      st = detail::make_score_transform(p, seq, b, h).scaled_by(0.5f);  // logit() = s / 2
    }
    const std::int64_t i1 = seq.len_q - i0 < BQ ? seq.len_q : i0 + BQ;
    const bool full = st.block_unmasked(i0, i1, j0, j0 + BK);

    // P^T = sigmoid(K Q^T) (rows past the key end or masked: 0).
    Tensor acc_s = partition_fragment_C(mma, Shape<Int<BK>, Int<BQ>>{});
    clear(acc_s);
    gemm_ss(acc_s, rA, rB, tsK, tsQ(_, _, _, stage), mma, s2r_a, s2r_b, s2r_a_thr, s2r_b_thr);
    scores_to_probs<Element, true>(acc_s, tScS, st, i0, j0, full);

    if constexpr (kDoDV) {  // dV += P^T dO
      Tensor rP = convert_fragment<Element>(acc_s);
      Tensor tPr = make_tensor(rP.data(), acc_layout_as_a_operand(rP.layout()));
      gemm_rs(acc_dv, tPr, rBt, tsdOt(_, _, _, stage), mma, s2r_bt, s2r_bt_thr);
    }
    if constexpr (kDoDK) {  // dS^T = (V dO^T) * P^T * (1 - P^T);  dK += dS^T Q
      Tensor acc_dp = partition_fragment_C(mma, Shape<Int<BK>, Int<BQ>>{});
      clear(acc_dp);
      gemm_ss(acc_dp, rA, rB, tsV, tsdO(_, _, _, stage), mma, s2r_a, s2r_b, s2r_a_thr, s2r_b_thr);
      db += probs_to_dscores<kDoDQ>(acc_dp, acc_s);
      Tensor rdS = convert_fragment<Element>(acc_dp);
      // sDsT was last read in step t-1, which ended with a __syncthreads.
      if constexpr (kDoDQ) copy(r2s_ds, r2s_ds_thr.retile_S(rdS), tDSsDS);
      Tensor tdSr = make_tensor(rdS.data(), acc_layout_as_a_operand(rdS.layout()));
      gemm_rs(acc_dk, tdSr, rBt, tsQt(_, _, _, stage), mma, s2r_bt, s2r_bt_thr);
    }
    if constexpr (kDoDQ) {
      __syncthreads();  // every warp's keys of dS^T are in sDsT
      add_dq_fused<Traits>(sDs, sKt, tsDs, dq_accum + acc_stride.offset(b, seq.q_begin + i0, h), acc_stride.row,
                           seq.len_q - i0, tid);
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

// dQ of one query block; with dbias_part, also the block's sum of dS at
// dbias_part[(b * Hq + h) * gridDim.x + m_block] (0 for blocks past the sequence end).
template <class Traits>
__global__ void __launch_bounds__(Traits::kNThreads, 1)
    dq_kernel(const __grid_constant__ detail::BwdParams p, float* __restrict__ dbias_part) {
  using Element = typename Traits::Element;
  constexpr int BM = Traits::kBlockQ;
  constexpr int BN = Traits::kBlockKB;
  constexpr int D = Traits::kHeadDim;
  constexpr int kNWarps = Traits::kNWarps;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  __shared__ float warp_sums[kNWarps];

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

  const std::int64_t hk = h / (p.heads_q / p.heads_kv);
  const Element* q_ptr = static_cast<const Element*>(p.q) + b * p.q_stride.batch +
                         (seq.q_begin + m0) * p.q_stride.row + h * p.q_stride.head;
  const Element* do_ptr = static_cast<const Element*>(p.dout) + b * p.do_stride.batch +
                          (seq.q_begin + m0) * p.do_stride.row + h * p.do_stride.head;
  const Element* k_ptr =
      static_cast<const Element*>(p.k) + b * p.k_stride.batch + seq.k_begin * p.k_stride.row + hk * p.k_stride.head;
  const Element* v_ptr =
      static_cast<const Element*>(p.v) + b * p.v_stride.batch + seq.k_begin * p.v_stride.row + hk * p.v_stride.head;
  Element* dq_ptr = static_cast<Element*>(p.dq) + b * p.dq_stride.batch + (seq.q_begin + m0) * p.dq_stride.row +
                    h * p.dq_stride.head;

  using TileQ = Shape<Int<BM>, Int<D>>;
  using TileKV = Shape<Int<BN>, Int<D>>;

  Element* smem_q = reinterpret_cast<Element*>(smem_raw);
  Element* smem_do = smem_q + cosize(typename Traits::SmemLayoutQ{});
  Element* smem_k = smem_do + cosize(typename Traits::SmemLayoutQ{});
  Element* smem_v = smem_k + cosize(typename Traits::SmemLayoutKB{});
  Tensor sQ = make_tensor(make_smem_ptr(smem_q), typename Traits::SmemLayoutQ{});     // (BM, D)
  Tensor sdO = make_tensor(make_smem_ptr(smem_do), typename Traits::SmemLayoutQ{});   // (BM, D)
  Tensor sK = make_tensor(make_smem_ptr(smem_k), typename Traits::SmemLayoutKB{});    // (BN, D, stage)
  Tensor sV = make_tensor(make_smem_ptr(smem_v), typename Traits::SmemLayoutKB{});    // (BN, D, stage)
  Tensor sKt = make_tensor(make_smem_ptr(smem_k), typename Traits::SmemLayoutKBt{});  // (D, BN, stage)

  typename Traits::TiledMma mma;
  auto thr_mma = mma.get_thread_slice(tid);
  Tensor acc_dq = partition_fragment_C(mma, TileQ{});
  clear(acc_dq);
  float db = 0.0f;

  if (n_blocks > 0) {
    typename Traits::GmemLoad g2s;
    auto g2s_thr = g2s.get_thread_slice(tid);
    Tensor tQsQ = g2s_thr.partition_D(sQ);
    Tensor tDsD = g2s_thr.partition_D(sdO);
    Tensor tKsK = g2s_thr.partition_D(sK);
    Tensor tVsV = g2s_thr.partition_D(sV);
    Tensor tQc = g2s_thr.partition_S(make_identity_tensor(TileQ{}));
    Tensor tKVc = g2s_thr.partition_S(make_identity_tensor(TileKV{}));
    auto load_kv = [&](int n, int stage) {
      const std::int64_t r0 = std::int64_t(n) * BN;
      Tensor gK = make_tensor(make_gmem_ptr(k_ptr + r0 * p.k_stride.row), TileKV{}, make_stride(p.k_stride.row, _1{}));
      Tensor gV = make_tensor(make_gmem_ptr(v_ptr + r0 * p.v_stride.row), TileKV{}, make_stride(p.v_stride.row, _1{}));
      copy_rows_zfill(g2s, g2s_thr.partition_S(gK), tKsK(_, _, _, stage), tKVc, seq.len_k - r0);
      copy_rows_zfill(g2s, g2s_thr.partition_S(gV), tVsV(_, _, _, stage), tKVc, seq.len_k - r0);
    };

    auto s2r_a = typename Traits::SmemCopyA{};
    auto s2r_a_thr = s2r_a.get_thread_slice(tid);
    auto s2r_b = typename Traits::SmemCopyB{};
    auto s2r_b_thr = s2r_b.get_thread_slice(tid);
    auto s2r_bt = typename Traits::SmemCopyBt{};
    auto s2r_bt_thr = s2r_bt.get_thread_slice(tid);
    Tensor rA = thr_mma.partition_fragment_A(sQ);              // Q or dO
    Tensor rB = thr_mma.partition_fragment_B(sK(_, _, 0));     // K or V
    Tensor rBt = thr_mma.partition_fragment_B(sKt(_, _, 0));   // K^T
    Tensor tsQ = s2r_a_thr.partition_S(sQ);
    Tensor tsdO = s2r_a_thr.partition_S(sdO);
    Tensor tsK = s2r_b_thr.partition_S(sK);
    Tensor tsV = s2r_b_thr.partition_S(sV);
    Tensor tsKt = s2r_bt_thr.partition_S(sKt);
    Tensor tScS = thr_mma.partition_C(make_identity_tensor(Shape<Int<BM>, Int<BN>>{}));

    // Group 0: Q, dO (rows past the end zero: their dS is 0) and key block 0.
    Tensor gQ = make_tensor(make_gmem_ptr(q_ptr), TileQ{}, make_stride(p.q_stride.row, _1{}));
    Tensor gdO = make_tensor(make_gmem_ptr(do_ptr), TileQ{}, make_stride(p.do_stride.row, _1{}));
    copy_rows_zfill(g2s, g2s_thr.partition_S(gQ), tQsQ, tQc, rows);
    copy_rows_zfill(g2s, g2s_thr.partition_S(gdO), tDsD, tQc, rows);
    load_kv(n_begin, 0);
    cp_async_fence();

    for (int it = 0; it < n_blocks; ++it) {
      const int n = n_begin + it;
      const int stage = it & 1;
      if (it + 1 < n_blocks) load_kv(n + 1, stage ^ 1);  // that stage was freed by step it-1's last sync
      cp_async_fence();
      cp_async_wait<1>();
      __syncthreads();

      const std::int64_t j0 = std::int64_t(n) * BN;
      Tensor acc_s = partition_fragment_C(mma, Shape<Int<BM>, Int<BN>>{});
      clear(acc_s);
      gemm_ss(acc_s, rA, rB, tsQ, tsK(_, _, _, stage), mma, s2r_a, s2r_b, s2r_a_thr, s2r_b_thr);
      scores_to_probs<Element>(acc_s, tScS, st, m0, j0, st.block_unmasked(m0, m0 + rows, j0, j0 + BN));

      Tensor acc_dp = partition_fragment_C(mma, Shape<Int<BM>, Int<BN>>{});
      clear(acc_dp);
      gemm_ss(acc_dp, rA, rB, tsdO, tsV(_, _, _, stage), mma, s2r_a, s2r_b, s2r_a_thr, s2r_b_thr);
      db += probs_to_dscores<true>(acc_dp, acc_s);

      Tensor rdS = convert_fragment<Element>(acc_dp);
      Tensor tdSr = make_tensor(rdS.data(), acc_layout_as_a_operand(rdS.layout()));
      gemm_rs(acc_dq, tdSr, rBt, tsKt(_, _, _, stage), mma, s2r_bt, s2r_bt_thr);
      __syncthreads();  // every warp is done with this stage before the next prefetch refills it
    }
    cp_async_wait<0>();
  }

  if (part != nullptr) store_block_sum<kNWarps>(db, warp_sums, tid, part, [] { __syncthreads(); });

  scale_fragment(acc_dq, p.scale);
  Tensor gdQ = make_tensor(make_gmem_ptr(dq_ptr), TileQ{}, make_stride(p.dq_stride.row, _1{}));
  store_output<typename Traits::StoreQ>(acc_dq, smem_q, gdQ, rows, tid);
}

}  // namespace flashsigmoid::cuda::portable
