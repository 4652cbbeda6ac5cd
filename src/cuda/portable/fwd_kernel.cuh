// Portable (sm_80+) sigmoid-attention forward: FlashAttention-2's structure without softmax
// statistics. Per CTA: kBlockM query rows of one (batch, head); for each visible key block,
// S = Q K^T (fp32 registers), P = sigmoid(transform(S)) in registers, O += P V. No row max, no
// row sum, no rescaling: partial sums over key blocks simply add.
#pragma once

#include <cstdint>

#include "common/score_transform.hpp"
#include "cuda/common/scores_to_probs.cuh"
#include "cuda/portable/fwd_epilogue.cuh"
#include "cuda/portable/fwd_traits.cuh"

namespace flashsigmoid::cuda::portable {

template <class Traits>
__global__ void __launch_bounds__(Traits::kNThreads, Traits::kMinBlocks)
    fwd_kernel(const __grid_constant__ detail::AttnParams p) {
  using Element = typename Traits::Element;
  constexpr int BM = Traits::kBlockM;
  constexpr int BN = Traits::kBlockN;
  constexpr int D = Traits::kHeadDim;
  extern __shared__ __align__(128) unsigned char smem_raw[];

  const int tid = threadIdx.x;
  // Causal: the last query blocks see the most keys, so they are scheduled first.
  const int m_block = p.causal ? int(gridDim.x - 1 - blockIdx.x) : int(blockIdx.x);
  const int h = blockIdx.y;
  const int b = blockIdx.z;

  const detail::SeqInfo seq = detail::seq_info(p, b);
  const std::int64_t m0 = std::int64_t(m_block) * BM;
  if (m0 >= seq.len_q) return;  // varlen: this sequence is shorter than max_seqlen_q
  const std::int64_t rows = seq.len_q - m0 < BM ? seq.len_q - m0 : BM;

  // Pre-scaled by 0.5 so that logit() returns s / 2, the argument of tanh.
  const detail::ScoreTransform st = detail::make_score_transform(p, seq, b, h).scaled_by(0.5f);
  int n_begin = 0, n_blocks = 0;
  st.key_blocks(m0, m0 + rows, BN, n_begin, n_blocks);

  const std::int64_t hk = h / (p.heads_q / p.heads_kv);  // GQA / MQA
  const Element* q_ptr = static_cast<const Element*>(p.q) + p.q_stride.offset(b, seq.q_begin + m0, h);
  const Element* k_ptr = static_cast<const Element*>(p.k) + p.k_stride.offset(b, seq.k_begin, hk);
  const Element* v_ptr = static_cast<const Element*>(p.v) + p.v_stride.offset(b, seq.k_begin, hk);
  Element* o_ptr = static_cast<Element*>(p.o) + p.o_stride.offset(b, seq.q_begin + m0, h);

  using TileQ = Shape<Int<BM>, Int<D>>;
  using TileKV = Shape<Int<BN>, Int<D>>;
  Tensor gQ = make_tensor(make_gmem_ptr(q_ptr), TileQ{}, make_stride(p.q_stride.row, _1{}));
  Tensor gO = make_tensor(make_gmem_ptr(o_ptr), TileQ{}, make_stride(p.o_stride.row, _1{}));

  Element* smem_q = reinterpret_cast<Element*>(smem_raw);
  Element* smem_k = smem_q + cosize(typename Traits::SmemLayoutQ{});
  Element* smem_v = smem_k + cosize(typename Traits::SmemLayoutKV{});
  Tensor sQ = make_tensor(make_smem_ptr(smem_q), typename Traits::SmemLayoutQ{});
  Tensor sK = make_tensor(make_smem_ptr(smem_k), typename Traits::SmemLayoutKV{});   // (BN, D, stage)
  Tensor sV = make_tensor(make_smem_ptr(smem_v), typename Traits::SmemLayoutKV{});   // (BN, D, stage)
  Tensor sVt = make_tensor(make_smem_ptr(smem_v), typename Traits::SmemLayoutVt{});  // (D, BN, stage)

  typename Traits::TiledMma mma;
  auto thr_mma = mma.get_thread_slice(tid);
  Tensor acc_o = partition_fragment_C(mma, TileQ{});
  clear(acc_o);

  if (n_blocks > 0) {
    // ---- loads: global -> shared (cp.async), rows past the end zero-filled ----
    typename Traits::GmemLoad g2s;
    auto g2s_thr = g2s.get_thread_slice(tid);
    Tensor tQsQ = g2s_thr.partition_D(sQ);
    Tensor tKsK = g2s_thr.partition_D(sK);
    Tensor tVsV = g2s_thr.partition_D(sV);
    Tensor tQcQ = g2s_thr.partition_S(make_identity_tensor(TileQ{}));
    Tensor tKVc = g2s_thr.partition_S(make_identity_tensor(TileKV{}));
    auto load_k = [&](int n, int stage) {
      Tensor gK = make_tensor(make_gmem_ptr(k_ptr + std::int64_t(n) * BN * p.k_stride.row), TileKV{},
                              make_stride(p.k_stride.row, _1{}));
      copy_rows_zfill(g2s, g2s_thr.partition_S(gK), tKsK(_, _, _, stage), tKVc, seq.len_k - std::int64_t(n) * BN);
    };
    auto load_v = [&](int n, int stage) {
      Tensor gV = make_tensor(make_gmem_ptr(v_ptr + std::int64_t(n) * BN * p.v_stride.row), TileKV{},
                              make_stride(p.v_stride.row, _1{}));
      copy_rows_zfill(g2s, g2s_thr.partition_S(gV), tVsV(_, _, _, stage), tKVc, seq.len_k - std::int64_t(n) * BN);
    };

    // ---- shared -> registers (ldmatrix) ----
    Tensor tSrQ = thr_mma.partition_fragment_A(sQ);
    Tensor tSrK = thr_mma.partition_fragment_B(sK(_, _, 0));
    Tensor tOrVt = thr_mma.partition_fragment_B(sVt(_, _, 0));
    auto s2r_q = typename Traits::SmemCopyQK{};
    auto s2r_q_thr = s2r_q.get_thread_slice(tid);
    Tensor tSsQ = s2r_q_thr.partition_S(sQ);
    auto s2r_k = typename Traits::SmemCopyK{};
    auto s2r_k_thr = s2r_k.get_thread_slice(tid);
    Tensor tSsK = s2r_k_thr.partition_S(sK);
    auto s2r_v = typename Traits::SmemCopyVt{};
    auto s2r_v_thr = s2r_v.get_thread_slice(tid);
    Tensor tOsVt = s2r_v_thr.partition_S(sVt);
    // (row, col) inside the score tile of each accumulator register.
    Tensor tScS = thr_mma.partition_C(make_identity_tensor(Shape<Int<BM>, Int<BN>>{}));

    // ---- pipeline: one cp.async group per K or V block, always committed (possibly empty)
    // so that the wait counts below are the same in every iteration. Issue order:
    // [Q+K0] [V0] [K1] | it: [V(it+1)] [K(it+2)] ...  K runs two blocks ahead, V one.
    copy_rows_zfill(g2s, g2s_thr.partition_S(gQ), tQsQ, tQcQ, rows);
    load_k(n_begin, 0);
    cp_async_fence();
    load_v(n_begin, 0);
    cp_async_fence();
    if (n_blocks > 1) load_k(n_begin + 1, 1);
    cp_async_fence();

    for (int it = 0; it < n_blocks; ++it) {
      const int n = n_begin + it;
      const int stage = it & 1;
      cp_async_wait<2>();  // K(it) (and Q) landed for this thread ...
      __syncthreads();     // ... and for every thread

      Tensor acc_s = partition_fragment_C(mma, Shape<Int<BM>, Int<BN>>{});
      clear(acc_s);
      gemm_ss(acc_s, tSrQ, tSrK, tSsQ, tSsK(_, _, _, stage), mma, s2r_q, s2r_k, s2r_q_thr, s2r_k_thr);

      const std::int64_t j0 = std::int64_t(n) * BN;
      scores_to_probs<Element>(acc_s, tScS, st, m0, j0, st.block_unmasked(m0, m0 + rows, j0, j0 + BN));
      Tensor rP = convert_fragment<Element>(acc_s);
      Tensor tOrP = make_tensor(rP.data(), acc_layout_as_a_operand(rP.layout()));

      cp_async_wait<1>();  // V(it) landed
      __syncthreads();     // and every warp is done reading K(it) and V(it-1): their buffers are free
      if (it + 1 < n_blocks) load_v(n + 1, stage ^ 1);
      cp_async_fence();
      if (it + 2 < n_blocks) load_k(n + 2, stage);
      cp_async_fence();

      gemm_rs(acc_o, tOrP, tOrVt, tOsVt(_, _, _, stage), mma, s2r_v, s2r_v_thr);
    }
    cp_async_wait<0>();
  }

  store_output<Traits>(acc_o, smem_q, gO, rows, tid);
}

}  // namespace flashsigmoid::cuda::portable
