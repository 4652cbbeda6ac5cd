// CPU backward, deterministic and without atomics, in two passes that each own what they write:
//   pass 1, one task per (sequence, kv head, key block): dK and dV of that block, summed over
//           the query heads of its group and the query blocks that see it;
//   pass 2, one task per (sequence, query head, query block): dQ of that block and its share
//           of d(bias), reduced afterwards in a fixed order.
// Both recompute P = sigmoid(S) and dS = (dO V^T) * P * (1 - P) tile by tile: sigmoid
// attention needs no saved statistics and no rowsum(dO * O) pre-pass.
#include <vector>

#include "backends.hpp"
#include "cpu/bf16_panels.hpp"
#include "cpu/score_tile.hpp"

namespace flashsigmoid::detail {
namespace cpu {
namespace {

// Per-thread tiles of one (query block, key block) step.
template <typename Acc>
struct BwdTiles {
  int D;
  std::vector<Acc> buf;
  Acc *Q, *dO, *Kt, *Vt, *Qt, *dOt, *K, *V, *S, *dP, *acc, *acc2;
  // The step's row operands (pass 1: Q, dO; pass 2: K, V): the tiles above or the storage itself.
  const Acc *rows1 = nullptr, *rows2 = nullptr;
  int ld1 = 0, ld2 = 0;

  explicit BwdTiles(int d) : D(d) {
    const int Bq = kBlockQ, Bk = kBlockK;
    const int acc_rows = std::max(Bq, Bk);
    buf.assign(static_cast<std::size_t>(4 * Bq * D + 4 * D * Bk + 2 * Bq * Bk + 2 * acc_rows * D), Acc(0));
    Q = buf.data();       // [Bq][D]   pass 1
    dO = Q + Bq * D;      // [Bq][D]   pass 1
    Kt = dO + Bq * D;     // [D][Bk]   pass 1
    Vt = Kt + D * Bk;     // [D][Bk]   pass 1
    Qt = Vt + D * Bk;     // [D][Bq]   pass 2
    dOt = Qt + D * Bq;    // [D][Bq]   pass 2
    K = dOt + D * Bq;     // [Bk][D]   pass 2
    V = K + Bk * D;       // [Bk][D]   pass 2
    S = V + Bk * D;       // P: [Bq][Bk] (pass 1) or P^T: [Bk][Bq] (pass 2)
    dP = S + Bq * Bk;     // dP then dS, laid out like S
    acc = dP + Bq * Bk;   // [max(Bq, Bk)][D]: dK (pass 1) or dQ (pass 2)
    acc2 = acc + acc_rows * D;  // [Bk][D]: dV (pass 1)
  }

  // Query rows i0.. x key columns j0..: S <- P and dP <- dS. Pass 1 (kKeyMajor false) works
  // from Q, dO (rows1, rows2), Kt, Vt, whose transposes it loads once per key block; pass 2 (kKeyMajor) makes
  // the transposed tiles P^T = K Q^T and dP^T = V dO^T (K, V in rows1, rows2), so only Q and dO, loaded once per query
  // block, are transposed, and the K and V loads of every step stay contiguous. Returns whether
  // the tile is partially masked (the callers' GEMMs then skip the masked terms).
  template <bool kKeyMajor>
  bool probs_and_dscores(const ScoreTransform& t, std::int64_t i0, std::int64_t j0) {
    std::fill(S, S + kBlockQ * kBlockK, Acc(0));
    std::fill(dP, dP + kBlockQ * kBlockK, Acc(0));
    if constexpr (kKeyMajor) {
      gemm_acc(rows1, ld1, Qt, kBlockQ, S, kBlockQ, kBlockK, kBlockQ, D);  // K Q^T
      scores_to_probs<true>(t, i0, kBlockQ, j0, kBlockK, S);
      gemm_acc(rows2, ld2, dOt, kBlockQ, dP, kBlockQ, kBlockK, kBlockQ, D);  // V dO^T
    } else {
      gemm_acc(rows1, ld1, Kt, kBlockK, S, kBlockK, kBlockQ, kBlockK, D);  // Q K^T
      scores_to_probs(t, i0, kBlockQ, j0, kBlockK, S);
      gemm_acc(rows2, ld2, Vt, kBlockK, dP, kBlockK, kBlockQ, kBlockK, D);  // dO V^T
    }
    for (int e = 0; e < kBlockQ * kBlockK; ++e) dP[e] *= S[e] * (Acc(1) - S[e]);
    const bool partial = !t.block_unmasked(i0, i0 + kBlockQ, j0, j0 + kBlockK);
    // A masked dS is 0 by a select: P = 0 there, but dP may be NaN (a NaN / Inf row of V or dO).
    if (partial) zero_masked<kKeyMajor>(t, i0, kBlockQ, j0, kBlockK, dP);
    return partial;
  }
};

template <typename T, typename Acc>
void dkdv_pass(const BwdParams& p) {
  const int D = static_cast<int>(p.head_dim);
  const std::int64_t k_blocks = (p.seqlen_k + kBlockK - 1) / kBlockK;
  parallel_for(p.batch * p.heads_kv * k_blocks, p.num_threads, [&](std::int64_t task) {
    // Causal: the first key blocks see the most queries.
    const auto [b, kvh, j0] = block_task(task, p.heads_kv, k_blocks, kBlockK, false);
    const SeqInfo s = seq_info(p, b);
    if (j0 >= s.len_k) return;

    BwdTiles<Acc> w(D);
    const auto k = head_rows<T>(p.k, p.k_stride, b, s.k_begin, kvh, s.len_k);
    const auto v = head_rows<T>(p.v, p.v_stride, b, s.k_begin, kvh, s.len_k);
    load_tile_transposed(k, j0, kBlockK, D, w.Kt);
    load_tile_transposed(v, j0, kBlockK, D, w.Vt);
    const std::int64_t j_last = std::min<std::int64_t>(j0 + kBlockK, s.len_k);

    for (std::int64_t h = kvh * p.group_size(); h < (kvh + 1) * p.group_size(); ++h) {
      const ScoreTransform t = make_score_transform(p, s, b, h);
      const auto q = head_rows<T>(p.q, p.q_stride, b, s.q_begin, h, s.len_q);
      const auto dout = head_rows<T>(p.dout, p.do_stride, b, s.q_begin, h, s.len_q);
      const std::int64_t i_end = t.query_end(j_last, s.len_q);
      for (std::int64_t i0 = t.query_begin(j0); i0 < i_end; i0 += kBlockQ) {
        w.rows1 = tile_rows(q, i0, kBlockQ, D, w.Q, &w.ld1);
        w.rows2 = tile_rows(dout, i0, kBlockQ, D, w.dO, &w.ld2);
        if (!w.template probs_and_dscores<false>(t, i0, j0)) {
          gemm_acc<true>(w.S, kBlockK, w.rows2, w.ld2, w.acc2, D, kBlockK, D, kBlockQ);  // dV += P^T dO
          gemm_acc<true>(w.dP, kBlockK, w.rows1, w.ld1, w.acc, D, kBlockK, D, kBlockQ);  // dK += dS^T Q
        } else {
          // Queries that cannot see a key are skipped: their Q / dO rows may hold NaN or Inf.
          int lo[kBlockK], hi[kBlockK];
          visible_queries(t, j0, kBlockK, i0, kBlockQ, s.len_q, lo, hi);
          gemm_acc_rows<true>(w.S, kBlockK, w.rows2, w.ld2, w.acc2, D, kBlockK, D, lo, hi);
          gemm_acc_rows<true>(w.dP, kBlockK, w.rows1, w.ld1, w.acc, D, kBlockK, D, lo, hi);
        }
      }
    }
    store_tile<T>(w.acc, kBlockK, D, Acc(p.scale), head_rows_out<T>(p.dk, p.dk_stride, b, s.k_begin, kvh),
                  p.dk_stride.row, j0, s.len_k);
    store_tile<T>(w.acc2, kBlockK, D, Acc(1), head_rows_out<T>(p.dv, p.dv_stride, b, s.k_begin, kvh),
                  p.dv_stride.row, j0, s.len_k);
  });
}

template <typename T, typename Acc>
void dq_pass(const BwdParams& p) {
  const int D = static_cast<int>(p.head_dim);
  const std::int64_t q_blocks = (p.seqlen_q + kBlockQ - 1) / kBlockQ;
  const std::int64_t num_tasks = p.batch * p.heads_q * q_blocks;
  std::vector<double> dbias_part(p.dbias ? static_cast<std::size_t>(num_tasks) : 0, 0.0);

  parallel_for(num_tasks, p.num_threads, [&](std::int64_t task) {
    const auto [b, h, i0] = block_task(task, p.heads_q, q_blocks, kBlockQ, true);
    const SeqInfo s = seq_info(p, b);
    if (i0 >= s.len_q) return;
    const ScoreTransform t = make_score_transform(p, s, b, h);
    const std::int64_t kvh = h / p.group_size();

    BwdTiles<Acc> w(D);
    const auto q = head_rows<T>(p.q, p.q_stride, b, s.q_begin, h, s.len_q);
    const auto dout = head_rows<T>(p.dout, p.do_stride, b, s.q_begin, h, s.len_q);
    const auto k = head_rows<T>(p.k, p.k_stride, b, s.k_begin, kvh, s.len_k);
    const auto v = head_rows<T>(p.v, p.v_stride, b, s.k_begin, kvh, s.len_k);
    load_tile_transposed(q, i0, kBlockQ, D, w.Qt);
    load_tile_transposed(dout, i0, kBlockQ, D, w.dOt);

    double db = 0.0;
    const std::int64_t j_end = t.key_end(std::min<std::int64_t>(i0 + kBlockQ, s.len_q));
    for (std::int64_t j0 = t.key_begin(i0); j0 < j_end; j0 += kBlockK) {
      w.rows1 = tile_rows(k, j0, kBlockK, D, w.K, &w.ld1);
      w.rows2 = tile_rows(v, j0, kBlockK, D, w.V, &w.ld2);
      if (!w.template probs_and_dscores<true>(t, i0, j0)) {
        gemm_acc<true>(w.dP, kBlockQ, w.rows1, w.ld1, w.acc, D, kBlockQ, D, kBlockK);  // dQ += (dS^T)^T K
      } else {
        // Masked keys are skipped: their K rows may hold NaN or Inf.
        int lo[kBlockQ], hi[kBlockQ];
        visible_keys(t, i0, kBlockQ, j0, kBlockK, lo, hi);
        gemm_acc_rows<true>(w.dP, kBlockQ, w.rows1, w.ld1, w.acc, D, kBlockQ, D, lo, hi);
      }
      if (p.dbias) {
        // Rows past the sequence end have dO = 0, hence dS = 0: summing the whole tile is exact.
        for (int e = 0; e < kBlockQ * kBlockK; ++e) db += static_cast<double>(w.dP[e]);
      }
    }
    store_tile<T>(w.acc, kBlockQ, D, Acc(p.scale), head_rows_out<T>(p.dq, p.dq_stride, b, s.q_begin, h),
                  p.dq_stride.row, i0, s.len_q);
    if (p.dbias) dbias_part[static_cast<std::size_t>(task)] = db;
  });

  if (p.dbias) {
    std::vector<double> db(static_cast<std::size_t>(p.heads_q), 0.0);
    for (std::int64_t task = 0; task < num_tasks; ++task)
      db[block_task(task, p.heads_q, q_blocks, kBlockQ, true).h] += dbias_part[task];
    for (std::int64_t h = 0; h < p.heads_q; ++h) p.dbias[h] = static_cast<float>(db[h]);
  }
}


#if defined(FLASHSIGMOID_CPU_AVX512BF16)

// The bf16 backward on bf16 tile GEMMs (bf16_gemm.hpp), in the same two passes as above, with
// every operand packed once per call into the layout its GEMMs read. Both passes make the
// query-major tiles S = Q K^T and dP = dO V^T; pass 1 transposes P and dS (in fp32) for the
// dV and dK GEMMs. Partially masked tiles keep the fp32 GEMMs that skip masked terms.
struct Bf16BwdPanels {
  Panels q_rows, q_pairs, do_rows, do_pairs, k_pairs_t, k_pairs, v_pairs_t;
  explicit Bf16BwdPanels(const BwdParams& p)
      : q_rows(p, p.q, p.q_stride, p.heads_q, false, Pack::rows),
        q_pairs(p, p.q, p.q_stride, p.heads_q, false, Pack::pairs),
        do_rows(p, p.dout, p.do_stride, p.heads_q, false, Pack::rows),
        do_pairs(p, p.dout, p.do_stride, p.heads_q, false, Pack::pairs),
        k_pairs_t(p, p.k, p.k_stride, p.heads_kv, true, Pack::pairs_t),
        k_pairs(p, p.k, p.k_stride, p.heads_kv, true, Pack::pairs),
        v_pairs_t(p, p.v, p.v_stride, p.heads_kv, true, Pack::pairs_t) {}
};

// Per-thread fp32 tiles of one step; S holds P and dP holds dS afterwards.
struct Bf16BwdTiles {
  std::vector<float> buf;
  std::vector<bf16_bits> half;
  float *S, *dP, *T, *X, *acc, *acc2;
  bf16_bits* Hb;
  explicit Bf16BwdTiles(int D)
      : buf(static_cast<std::size_t>(3 * kBlockQ * kBlockK + 3 * kBlockQ * D), 0.0f),
        half(static_cast<std::size_t>(kBlockQ * kBlockK)) {
    S = buf.data();             // [kBlockQ][kBlockK]
    dP = S + kBlockQ * kBlockK;  // [kBlockQ][kBlockK]
    T = dP + kBlockQ * kBlockK;  // [kBlockK][kBlockQ]: a transposed tile
    X = T + kBlockQ * kBlockK;   // [64][D]: fp32 rows for a partially masked tile's GEMM
    acc = X + kBlockQ * D;       // [64][D]
    acc2 = acc + kBlockQ * D;    // [64][D]
    Hb = half.data();            // [64][64] bf16
  }

  // S <- P and dP <- dS of query rows i0.. x key columns j0..; whether the tile is partially masked.
  bool probs_and_dscores(const ScoreTransform& t, std::int64_t i0, std::int64_t j0, int D, const bf16_bits* q,
                         const bf16_bits* dout, const bf16_bits* kt, const bf16_bits* vt) {
    gemm_bf16(q, D, kt, kBlockK, S, kBlockK, kBlockQ, kBlockK, D, false);
    scores_to_probs(t, i0, kBlockQ, j0, kBlockK, S);
    gemm_bf16(dout, D, vt, kBlockK, dP, kBlockK, kBlockQ, kBlockK, D, false);
    for (int e = 0; e < kBlockQ * kBlockK; ++e) dP[e] *= S[e] * (1.0f - S[e]);
    const bool partial = !t.block_unmasked(i0, i0 + kBlockQ, j0, j0 + kBlockK);
    if (partial) zero_masked(t, i0, kBlockQ, j0, kBlockK, dP);
    return partial;
  }

  // Hb = bf16(src^T) for a [kBlockQ][kBlockK] fp32 tile.
  void transposed_bf16(const float* src) {
    for (int r = 0; r < kBlockQ; ++r) {
      for (int c = 0; c < kBlockK; ++c) T[c * kBlockQ + r] = src[r * kBlockK + c];
    }
    to_bf16(T, kBlockK, kBlockQ, Hb);
  }
};

void dkdv_pass_bf16(const BwdParams& p, const Bf16BwdPanels& w) {
  const int D = static_cast<int>(p.head_dim);
  const std::int64_t k_blocks = (p.seqlen_k + kBlockK - 1) / kBlockK;
  parallel_for(p.batch * p.heads_kv * k_blocks, p.num_threads, [&](std::int64_t task) {
    const auto [b, kvh, j0] = block_task(task, p.heads_kv, k_blocks, kBlockK, false);
    const SeqInfo s = seq_info(p, b);
    if (j0 >= s.len_k) return;
    const AmxTiles tiles;
    Bf16BwdTiles x(D);
    const std::int64_t j_last = std::min<std::int64_t>(j0 + kBlockK, s.len_k);
    const bf16_bits* kt = w.k_pairs_t.block(s, b, kvh, j0);
    const bf16_bits* vt = w.v_pairs_t.block(s, b, kvh, j0);

    for (std::int64_t h = kvh * p.group_size(); h < (kvh + 1) * p.group_size(); ++h) {
      const ScoreTransform t = make_score_transform(p, s, b, h);
      const std::int64_t i_end = t.query_end(j_last, s.len_q);
      // Query blocks start on the panels' block boundaries (a window's first query need not).
      for (std::int64_t i0 = t.query_begin(j0) / kBlockQ * kBlockQ; i0 < i_end; i0 += kBlockQ) {
        if (!x.probs_and_dscores(t, i0, j0, D, w.q_rows.block(s, b, h, i0), w.do_rows.block(s, b, h, i0), kt, vt)) {
          x.transposed_bf16(x.S);
          gemm_bf16(x.Hb, kBlockQ, w.do_pairs.block(s, b, h, i0), D, x.acc2, D, kBlockK, D, kBlockQ, true);  // dV
          x.transposed_bf16(x.dP);
          gemm_bf16(x.Hb, kBlockQ, w.q_pairs.block(s, b, h, i0), D, x.acc, D, kBlockK, D, kBlockQ, true);  // dK
        } else {
          // Queries that cannot see a key are skipped: their Q / dO rows may hold NaN or Inf.
          int lo[kBlockK], hi[kBlockK];
          visible_queries(t, j0, kBlockK, i0, kBlockQ, s.len_q, lo, hi);
          load_tile(head_rows<bfloat16_t>(p.dout, p.do_stride, b, s.q_begin, h, s.len_q), i0, kBlockQ, D, x.X);
          gemm_acc_rows<true>(x.S, kBlockK, x.X, D, x.acc2, D, kBlockK, D, lo, hi);
          load_tile(head_rows<bfloat16_t>(p.q, p.q_stride, b, s.q_begin, h, s.len_q), i0, kBlockQ, D, x.X);
          gemm_acc_rows<true>(x.dP, kBlockK, x.X, D, x.acc, D, kBlockK, D, lo, hi);
        }
      }
    }
    store_tile<bfloat16_t>(x.acc, kBlockK, D, static_cast<float>(p.scale),
                           head_rows_out<bfloat16_t>(p.dk, p.dk_stride, b, s.k_begin, kvh), p.dk_stride.row, j0,
                           s.len_k);
    store_tile<bfloat16_t>(x.acc2, kBlockK, D, 1.0f, head_rows_out<bfloat16_t>(p.dv, p.dv_stride, b, s.k_begin, kvh),
                           p.dv_stride.row, j0, s.len_k);
  });
}

void dq_pass_bf16(const BwdParams& p, const Bf16BwdPanels& w) {
  const int D = static_cast<int>(p.head_dim);
  const std::int64_t q_blocks = (p.seqlen_q + kBlockQ - 1) / kBlockQ;
  const std::int64_t num_tasks = p.batch * p.heads_q * q_blocks;
  std::vector<double> dbias_part(p.dbias ? static_cast<std::size_t>(num_tasks) : 0, 0.0);

  parallel_for(num_tasks, p.num_threads, [&](std::int64_t task) {
    const auto [b, h, i0] = block_task(task, p.heads_q, q_blocks, kBlockQ, true);
    const SeqInfo s = seq_info(p, b);
    if (i0 >= s.len_q) return;
    const ScoreTransform t = make_score_transform(p, s, b, h);
    const std::int64_t kvh = h / p.group_size();
    const AmxTiles tiles;
    Bf16BwdTiles x(D);
    const bf16_bits* q = w.q_rows.block(s, b, h, i0);
    const bf16_bits* dout = w.do_rows.block(s, b, h, i0);

    double db = 0.0;
    const std::int64_t j_end = t.key_end(std::min<std::int64_t>(i0 + kBlockQ, s.len_q));
    for (std::int64_t j0 = t.key_begin(i0) / kBlockK * kBlockK; j0 < j_end; j0 += kBlockK) {
      const bool partial = x.probs_and_dscores(t, i0, j0, D, q, dout, w.k_pairs_t.block(s, b, kvh, j0),
                                               w.v_pairs_t.block(s, b, kvh, j0));
      if (!partial) {
        to_bf16(x.dP, kBlockQ, kBlockK, x.Hb);
        gemm_bf16(x.Hb, kBlockK, w.k_pairs.block(s, b, kvh, j0), D, x.acc, D, kBlockQ, D, kBlockK, true);
      } else {
        // Masked keys are skipped: their K rows may hold NaN or Inf.
        int lo[kBlockQ], hi[kBlockQ];
        visible_keys(t, i0, kBlockQ, j0, kBlockK, lo, hi);
        load_tile(head_rows<bfloat16_t>(p.k, p.k_stride, b, s.k_begin, kvh, s.len_k), j0, kBlockK, D, x.X);
        gemm_acc_rows(x.dP, kBlockK, x.X, D, x.acc, D, kBlockQ, D, lo, hi);
      }
      if (p.dbias) {
        // Rows past the sequence end have dO = 0, hence dS = 0: summing the whole tile is exact.
        for (int e = 0; e < kBlockQ * kBlockK; ++e) db += static_cast<double>(x.dP[e]);
      }
    }
    store_tile<bfloat16_t>(x.acc, kBlockQ, D, static_cast<float>(p.scale),
                           head_rows_out<bfloat16_t>(p.dq, p.dq_stride, b, s.q_begin, h), p.dq_stride.row, i0,
                           s.len_q);
    if (p.dbias) dbias_part[static_cast<std::size_t>(task)] = db;
  });

  if (p.dbias) {
    std::vector<double> db(static_cast<std::size_t>(p.heads_q), 0.0);
    for (std::int64_t task = 0; task < num_tasks; ++task)
      db[block_task(task, p.heads_q, q_blocks, kBlockQ, true).h] += dbias_part[task];
    for (std::int64_t h = 0; h < p.heads_q; ++h) p.dbias[h] = static_cast<float>(db[h]);
  }
}

#endif  // FLASHSIGMOID_CPU_AVX512BF16

}  // namespace
}  // namespace cpu

void FLASHSIGMOID_CPU_ENTRY(cpu_backward)(const BwdParams& p) {
#if defined(FLASHSIGMOID_CPU_AVX512BF16)
  // bf16 inputs on the bf16 GEMMs; every supported head dim (a multiple of 32) fits their tiles.
  if (p.dtype == DType::bfloat16 && p.head_dim % 32 == 0 && p.head_dim <= 256) {
    {
      const cpu::Bf16BwdPanels w(p);
      cpu::dkdv_pass_bf16(p, w);
      cpu::dq_pass_bf16(p, w);
    }
    if (p.is_varlen()) {
      const int D = static_cast<int>(p.head_dim);
      cpu::zero_rows<bfloat16_t>(p.dq, p.dq_stride, p.cu_seqlens_q[p.batch], p.total_q, p.heads_q, D);
      cpu::zero_rows<bfloat16_t>(p.dk, p.dk_stride, p.cu_seqlens_k[p.batch], p.total_k, p.heads_kv, D);
      cpu::zero_rows<bfloat16_t>(p.dv, p.dv_stride, p.cu_seqlens_k[p.batch], p.total_k, p.heads_kv, D);
    }
    return;
  }
#endif
  cpu::dispatch_dtype(p.dtype, [&]<typename T, typename Acc>() {
    cpu::dkdv_pass<T, Acc>(p);
    cpu::dq_pass<T, Acc>(p);
    if (p.is_varlen()) {
      const int D = static_cast<int>(p.head_dim);
      cpu::zero_rows<T>(p.dq, p.dq_stride, p.cu_seqlens_q[p.batch], p.total_q, p.heads_q, D);
      cpu::zero_rows<T>(p.dk, p.dk_stride, p.cu_seqlens_k[p.batch], p.total_k, p.heads_kv, D);
      cpu::zero_rows<T>(p.dv, p.dv_stride, p.cu_seqlens_k[p.batch], p.total_k, p.heads_kv, D);
    }
  });
}

}  // namespace flashsigmoid::detail
