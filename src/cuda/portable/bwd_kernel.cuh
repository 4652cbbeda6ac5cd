// Portable (sm_80+) sigmoid-attention backward. Sigmoid needs no saved statistics and no
// rowsum(dO * O) pre-pass: each kernel recomputes P = sigmoid(logit) with the forward's score
// transform and sigmoid, then
//   dP = dO V^T,  dS = dP * P * (1 - P)  (masked: P = 0, so dS = 0 exactly),
//   dV = P^T dO,  dK = scale * dS^T Q,  dQ = scale * dS K,  d(bias)_h = sum of dS.
// Deterministic mode (no atomics): dkdv_kernel owns dK, dV of one key block; dq_kernel owns dQ of
// one query block and writes that block's partial sum of dS; dbias_reduce_kernel adds the partials
// per head in a fixed order (common/bwd_workspace.cu).
// Default mode (kPass 3): dkdv_kernel also adds dS K of each query step to an fp32 dQ workspace
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

// kPass: 0 = dK and dV together; 1 = dV only; 2 = dK only (head dims whose accumulators do not fit
// twice in registers: BwdTile::kSplitDkDv); 3 = dK and dV, plus dQ added to dq_accum (fp32, see
// dq_accum_strides; unscaled) with atomics and, with dbias_part, this key block's sum of dS per query
// head h at dbias_part[(b * Hq + h) * gridDim.x + n_block] (non-deterministic mode). A template
// value rather than a runtime flag so that the deterministic kernel keeps its registers and code.
template <class Traits, int kPass>
__global__ void __launch_bounds__(Traits::kNThreads, 1)
    dkdv_kernel(const __grid_constant__ detail::BwdParams p, float* __restrict__ dq_accum,
                float* __restrict__ dbias_part) {
  using Element = typename Traits::Element;
  constexpr int BK = Traits::kBlockKeys;  // keys of this CTA (MMA M)
  constexpr int BQ = Traits::kBlockQA;    // queries per step
  constexpr int D = Traits::kHeadDim;
  constexpr bool kDoDV = kPass != 2;
  constexpr bool kDoDK = kPass != 1;
  constexpr bool kDoDQ = kPass == 3;
  constexpr int kNWarps = Traits::kNWarps;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  __shared__ float warp_sums[kDoDQ ? kNWarps : 1];

  const int tid = threadIdx.x;
  const int n_block = blockIdx.x;
  const int hk = blockIdx.y;
  const int b = blockIdx.z;

  const detail::SeqInfo seq = detail::seq_info(p, b);
  const std::int64_t j0 = std::int64_t(n_block) * BK;
  const int group = int(p.heads_q / p.heads_kv);
  // Fused d(bias): this key block's partial of query head hk * group + g is part[g * gridDim.x].
  float* part = kDoDQ && dbias_part != nullptr
                    ? dbias_part + (std::int64_t(b) * p.heads_q + std::int64_t(hk) * group) * gridDim.x + n_block
                    : nullptr;
  auto zero_parts = [&] {  // a key block that no query sees (or past the sequence end) adds 0
    if (part != nullptr) {
      for (int g = tid; g < group; g += Traits::kNThreads) part[std::int64_t(g) * gridDim.x] = 0.0f;
    }
  };
  if (j0 >= seq.len_k) {  // varlen: this sequence has fewer keys
    zero_parts();
    return;
  }
  const std::int64_t keys = seq.len_k - j0 < BK ? seq.len_k - j0 : BK;

  // The visible query range depends only on the masks, not on the head (bias / ALiBi do not mask).
  const detail::ScoreTransform st_range = detail::make_score_transform(p, seq, b, std::int64_t(hk) * group);
  std::int64_t m_first = 0, m_blocks = 0;
  st_range.query_blocks(j0, j0 + keys, seq.len_q, BQ, m_first, m_blocks);
  const int m_begin = int(m_first);
  const int m_count = int(m_blocks);
  const int n_steps = group * m_count;

  const Element* k_ptr = static_cast<const Element*>(p.k) + b * p.k_stride.batch +
                         (seq.k_begin + j0) * p.k_stride.row + hk * p.k_stride.head;
  const Element* v_ptr = static_cast<const Element*>(p.v) + b * p.v_stride.batch +
                         (seq.k_begin + j0) * p.v_stride.row + hk * p.v_stride.head;
  // Row 0 of sequence b, head 0, of q and dO.
  const Element* q_base = static_cast<const Element*>(p.q) + b * p.q_stride.batch + seq.q_begin * p.q_stride.row;
  const Element* do_base =
      static_cast<const Element*>(p.dout) + b * p.do_stride.batch + seq.q_begin * p.do_stride.row;
  Element* dk_ptr = static_cast<Element*>(p.dk) + b * p.dk_stride.batch + (seq.k_begin + j0) * p.dk_stride.row +
                    hk * p.dk_stride.head;
  Element* dv_ptr = static_cast<Element*>(p.dv) + b * p.dv_stride.batch + (seq.k_begin + j0) * p.dv_stride.row +
                    hk * p.dv_stride.head;

  using TileK = Shape<Int<BK>, Int<D>>;
  using TileQ = Shape<Int<BQ>, Int<D>>;

  Element* smem_k = reinterpret_cast<Element*>(smem_raw);
  Element* smem_v = smem_k + cosize(typename Traits::SmemLayoutKeys{});
  Element* smem_q = smem_v + cosize(typename Traits::SmemLayoutKeys{});
  Element* smem_do = smem_q + cosize(typename Traits::SmemLayoutQA{});
  Element* smem_ds = smem_do + cosize(typename Traits::SmemLayoutQA{});  // kPass 3 only (kSmemDs)
  Tensor sK = make_tensor(make_smem_ptr(smem_k), typename Traits::SmemLayoutKeys{});     // (BK, D)
  Tensor sV = make_tensor(make_smem_ptr(smem_v), typename Traits::SmemLayoutKeys{});     // (BK, D)
  Tensor sQ = make_tensor(make_smem_ptr(smem_q), typename Traits::SmemLayoutQA{});       // (BQ, D, stage)
  Tensor sdO = make_tensor(make_smem_ptr(smem_do), typename Traits::SmemLayoutQA{});     // (BQ, D, stage)
  Tensor sQt = make_tensor(make_smem_ptr(smem_q), typename Traits::SmemLayoutQAt{});     // (D, BQ, stage)
  Tensor sdOt = make_tensor(make_smem_ptr(smem_do), typename Traits::SmemLayoutQAt{});   // (D, BQ, stage)

  typename Traits::TiledMma mma;
  auto thr_mma = mma.get_thread_slice(tid);
  Tensor acc_dk = partition_fragment_C(mma, TileK{});
  Tensor acc_dv = partition_fragment_C(mma, TileK{});
  clear(acc_dk);
  clear(acc_dv);

  if (n_steps == 0) zero_parts();
  if (n_steps > 0) {
    typename Traits::GmemLoad g2s;
    auto g2s_thr = g2s.get_thread_slice(tid);
    Tensor tKsK = g2s_thr.partition_D(sK);
    Tensor tVsV = g2s_thr.partition_D(sV);
    Tensor tQsQ = g2s_thr.partition_D(sQ);
    Tensor tDsD = g2s_thr.partition_D(sdO);
    Tensor tKc = g2s_thr.partition_S(make_identity_tensor(TileK{}));
    Tensor tQc = g2s_thr.partition_S(make_identity_tensor(TileQ{}));

    // Step t: query head hk * group + t / m_count, query block m_begin + t % m_count.
    auto step_head = [&](int t) { return std::int64_t(hk) * group + t / m_count; };
    auto step_row0 = [&](int t) { return std::int64_t(m_begin + t % m_count) * BQ; };
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
    typename Traits::TiledMmaDq mma_dq;
    auto thr_mma_dq = mma_dq.get_thread_slice(tid);
    auto s2r_dq_a = typename Traits::SmemCopyDqA{};
    auto s2r_dq_a_thr = s2r_dq_a.get_thread_slice(tid);
    auto s2r_dq_b = typename Traits::SmemCopyDqB{};
    auto s2r_dq_b_thr = s2r_dq_b.get_thread_slice(tid);
    Tensor tsDs = s2r_dq_a_thr.partition_S(sDs);
    using TileDq = Shape<Int<BQ>, Int<Traits::kDqChunk>>;
    Tensor tQcQ = thr_mma_dq.partition_C(make_identity_tensor(TileDq{}));  // (query, column in the chunk)
    const detail::OperandStrides acc_stride = dq_accum_strides<D>(p);
    float db = 0.0f;  // this thread's sum of dS over the current query head's steps

    // Group 0: K, V and step 0's Q, dO.
    Tensor gK = make_tensor(make_gmem_ptr(k_ptr), TileK{}, make_stride(p.k_stride.row, _1{}));
    Tensor gV = make_tensor(make_gmem_ptr(v_ptr), TileK{}, make_stride(p.v_stride.row, _1{}));
    copy_rows_zfill(g2s, g2s_thr.partition_S(gK), tKsK, tKc, keys);
    copy_rows_zfill(g2s, g2s_thr.partition_S(gV), tVsV, tKc, keys);
    load_q_do(0, 0);
    cp_async_fence();

    std::int64_t cur_head = -1;
    detail::ScoreTransform st;
    for (int t = 0; t < n_steps; ++t) {
      const int stage = t & 1;
      // Stage (t+1)&1 was last read in step t-1, which ended with a __syncthreads.
      if (t + 1 < n_steps) load_q_do(t + 1, stage ^ 1);
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
      if constexpr (kDoDQ) {  // dQ(h, rows i0..) += dS K, kDqChunk columns at a time
        __syncthreads();      // every warp's keys of dS^T are in sDsT
        float* dqa = dq_accum + acc_stride.offset(b, seq.q_begin + i0, h);
        CUTE_UNROLL
        for (int c = 0; c < D / Traits::kDqChunk; ++c) {
          Tensor sKtc = local_tile(sKt, Shape<Int<Traits::kDqChunk>, Int<BK>>{}, make_coord(c, 0));
          Tensor rDs = thr_mma_dq.partition_fragment_A(sDs);
          Tensor rKt = thr_mma_dq.partition_fragment_B(sKtc);
          Tensor acc_dq = partition_fragment_C(mma_dq, TileDq{});
          clear(acc_dq);
          gemm_ss(acc_dq, rDs, rKt, tsDs, s2r_dq_b_thr.partition_S(sKtc), mma_dq, s2r_dq_a, s2r_dq_b, s2r_dq_a_thr,
                  s2r_dq_b_thr);
          atomic_add_rows(acc_dq, tQcQ, dqa + c * Traits::kDqChunk, acc_stride.row, seq.len_q - i0);
        }
      }
      __syncthreads();  // every warp is done with this stage (and sDsT) before step t+1 refills it
      if constexpr (kDoDQ) {
        if (part != nullptr && t % m_count == m_count - 1) {  // the head's last step: its partial
          // warp_sums: tid 0's last read was before this step's syncs.
          store_block_sum<kNWarps>(db, warp_sums, tid, part + std::int64_t(t / m_count) * gridDim.x,
                                   [] { __syncthreads(); });
          db = 0.0f;
        }
      }
    }
    cp_async_wait<0>();
  }

  // Epilogue: through K's and V's shared memory (store_output synchronises before writing it).
  if constexpr (kDoDV) {
    Tensor gdV = make_tensor(make_gmem_ptr(dv_ptr), TileK{}, make_stride(p.dv_stride.row, _1{}));
    store_output<typename Traits::StoreKeys>(acc_dv, smem_v, gdV, keys, tid);
  }
  if constexpr (kDoDK) {
    scale_fragment(acc_dk, p.scale);
    Tensor gdK = make_tensor(make_gmem_ptr(dk_ptr), TileK{}, make_stride(p.dk_stride.row, _1{}));
    store_output<typename Traits::StoreKeys>(acc_dk, smem_k, gdK, keys, tid);
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
