// CPU forward: one task per (sequence, query head, block of kBlockQ query rows).
// Each task streams the visible key blocks through two tile GEMMs, so memory is
// O(block * D) per thread and no N x N buffer exists. P needs no normalisation,
// so O simply accumulates P V.
#include <vector>

#include "backends.hpp"
#include "cpu/bf16_panels.hpp"
#include "cpu/score_tile.hpp"

namespace flashsigmoid::detail {
namespace cpu {
namespace {

template <typename T, typename Acc>
void forward_impl(const AttnParams& p) {
  const int D = static_cast<int>(p.head_dim);
  const std::int64_t q_blocks = (p.seqlen_q + kBlockQ - 1) / kBlockQ;

  parallel_for(p.batch * p.heads_q * q_blocks, attn_threads(p), [&](std::int64_t task) {
    const auto [b, h, i0] = block_task(task, p.heads_q, q_blocks, kBlockQ, true);
    const SeqInfo s = seq_info(p, b);
    if (i0 >= s.len_q) return;
    const ScoreTransform t = make_score_transform(p, s, b, h);
    const std::int64_t kvh = h / p.group_size();

    thread_local std::vector<Acc> buf;
    buf.assign(static_cast<std::size_t>(3 * kBlockQ * D + D * kBlockK + kBlockQ * kBlockK), Acc(0));
    Acc* Qt = buf.data();          // [D][kBlockQ]: transposed once per task
    Acc* O = Qt + kBlockQ * D;     // [kBlockQ][D]
    Acc* V = O + kBlockQ * D;      // [kBlockK][D]
    Acc* K = V + kBlockK * D;      // [kBlockK][D]
    Acc* St = K + D * kBlockK;     // [kBlockK][kBlockQ]: S^T, then P^T

    const auto q = head_rows<T>(p.q, p.q_stride, b, s.q_begin, h, s.len_q);
    const auto k = head_rows<T>(p.k, p.k_stride, b, s.k_begin, kvh, s.len_k);
    const auto v = head_rows<T>(p.v, p.v_stride, b, s.k_begin, kvh, s.len_k);
    load_tile_transposed(q, i0, kBlockQ, D, Qt);

    const std::int64_t i_last = std::min<std::int64_t>(i0 + kBlockQ, s.len_q);
    const std::int64_t j_end = t.key_end(i_last);
    for (std::int64_t j0 = t.key_begin(i0); j0 < j_end; j0 += kBlockK) {
      // S^T = K Q^T keeps both K and V loads contiguous (only Q, once, is transposed). Storage
      // already in the accumulation type is read in place when the block has all its rows.
      const Acc *Kb = K, *Vb = V;
      int ldk = D, ldv = D;
      if constexpr (std::is_same_v<T, Acc>) {
        if (j0 + kBlockK <= s.len_k && k.row_stride <= INT32_MAX && v.row_stride <= INT32_MAX) {
          Kb = k.row(j0), Vb = v.row(j0);
          ldk = static_cast<int>(k.row_stride), ldv = static_cast<int>(v.row_stride);
        }
      }
      if (Kb == K) {
        load_tile(k, j0, kBlockK, D, K);
        load_tile(v, j0, kBlockK, D, V);
      }
      std::fill(St, St + kBlockK * kBlockQ, Acc(0));
      gemm_acc(Kb, ldk, Qt, kBlockQ, St, kBlockQ, kBlockK, kBlockQ, D);
      scores_to_probs<true>(t, i0, kBlockQ, j0, kBlockK, St);
      if (t.block_unmasked(i0, i0 + kBlockQ, j0, j0 + kBlockK)) {
        gemm_acc<true>(St, kBlockQ, Vb, ldv, O, D, kBlockQ, D, kBlockK);  // O += (P^T)^T V
      } else {
        // Masked keys are skipped, not multiplied by P = 0: their V rows may hold NaN or Inf.
        int lo[kBlockQ], hi[kBlockQ];
        visible_keys(t, i0, kBlockQ, j0, kBlockK, lo, hi);
        gemm_acc_rows<true>(St, kBlockQ, Vb, ldv, O, D, kBlockQ, D, lo, hi);
      }
    }
    store_tile<T>(O, kBlockQ, D, Acc(1), head_rows_out<T>(p.o, p.o_stride, b, s.q_begin, h), p.o_stride.row, i0,
                  s.len_q);
  });
  if (p.is_varlen()) zero_rows<T>(p.o, p.o_stride, p.cu_seqlens_q[p.batch], p.total_q, p.heads_q, D);
}

#if defined(FLASHSIGMOID_CPU_AVX512BF16)

// The bf16 forward on bf16 GEMMs: S = Q K^T and O += P V take bf16 operands (P rounded to bf16,
// as a bf16 framework's P V does) and accumulate in fp32. K and V are packed once per call. Partially masked tiles multiply P V in
// fp32 with the masked terms skipped (gemm_acc_rows), as forward_impl does.
void forward_bf16(const AttnParams& p) {
  const int D = static_cast<int>(p.head_dim);
  static_assert(Panels::kBlock == kBlockQ && Panels::kBlock == kBlockK);
  const Panels qp(p, p.q, p.q_stride, p.heads_q, false, Pack::rows);
  const Panels kp(p, p.k, p.k_stride, p.heads_kv, true, Pack::pairs_t);
  const Panels vp(p, p.v, p.v_stride, p.heads_kv, true, Pack::pairs);
  const std::int64_t q_blocks = (p.seqlen_q + kBlockQ - 1) / kBlockQ;

  parallel_for(p.batch * p.heads_q * q_blocks, attn_threads(p), [&](std::int64_t task) {
    const auto [b, h, i0] = block_task(task, p.heads_q, q_blocks, kBlockQ, true);
    const SeqInfo s = seq_info(p, b);
    if (i0 >= s.len_q) return;
    const ScoreTransform t = make_score_transform(p, s, b, h);
    const std::int64_t kvh = h / p.group_size();
    const AmxTiles tiles;

    thread_local std::vector<float> fbuf;
    thread_local std::vector<bf16_bits> P(static_cast<std::size_t>(kBlockQ * kBlockK));  // [kBlockQ][kBlockK]
    fbuf.assign(static_cast<std::size_t>(2 * kBlockQ * D + kBlockQ * kBlockK), 0.0f);
    float* O = fbuf.data();        // [kBlockQ][D]
    float* Vf = O + kBlockQ * D;   // [kBlockK][D]: V of a partially masked tile
    float* S = Vf + kBlockK * D;   // [kBlockQ][kBlockK]: S, then P
    const bf16_bits* Q = qp.block(s, b, h, i0);
    const auto v = head_rows<bfloat16_t>(p.v, p.v_stride, b, s.k_begin, kvh, s.len_k);

    const std::int64_t i_last = std::min<std::int64_t>(i0 + kBlockQ, s.len_q);
    const std::int64_t j_end = t.key_end(i_last);
    // Key blocks start on the packed panels' block boundaries (a window's first key need not).
    for (std::int64_t j0 = t.key_begin(i0) / kBlockK * kBlockK; j0 < j_end; j0 += kBlockK) {
      gemm_bf16(Q, D, kp.block(s, b, kvh, j0), kBlockK, S, kBlockK, kBlockQ, kBlockK, D, false);
      scores_to_probs(t, i0, kBlockQ, j0, kBlockK, S);
      if (t.block_unmasked(i0, i0 + kBlockQ, j0, j0 + kBlockK)) {
        to_bf16(S, kBlockQ, kBlockK, P.data());
        gemm_bf16(P.data(), kBlockK, vp.block(s, b, kvh, j0), D, O, D, kBlockQ, D, kBlockK, true);
      } else {
        // Masked keys are skipped, not multiplied by P = 0: their V rows may hold NaN or Inf.
        int lo[kBlockQ], hi[kBlockQ];
        visible_keys(t, i0, kBlockQ, j0, kBlockK, lo, hi);
        load_tile(v, j0, kBlockK, D, Vf);
        gemm_acc_rows(S, kBlockK, Vf, D, O, D, kBlockQ, D, lo, hi);
      }
    }
    store_tile<bfloat16_t>(O, kBlockQ, D, 1.0f, head_rows_out<bfloat16_t>(p.o, p.o_stride, b, s.q_begin, h),
                           p.o_stride.row, i0, s.len_q);
  });
  if (p.is_varlen()) zero_rows<bfloat16_t>(p.o, p.o_stride, p.cu_seqlens_q[p.batch], p.total_q, p.heads_q, D);
}

#endif  // FLASHSIGMOID_CPU_AVX512BF16

}  // namespace
}  // namespace cpu

void FLASHSIGMOID_CPU_ENTRY(cpu_forward)(const AttnParams& p) {
#if defined(FLASHSIGMOID_CPU_AVX512BF16)
  // bf16 inputs on the bf16 GEMMs; every supported head dim (a multiple of 32) fits their tiles.
  if (p.dtype == DType::bfloat16 && p.head_dim % 32 == 0 && p.head_dim <= 256) return cpu::forward_bf16(p);
#endif
  cpu::dispatch_dtype(p.dtype, [&]<typename T, typename Acc>() { cpu::forward_impl<T, Acc>(p); });
}

}  // namespace flashsigmoid::detail
