// CPU backward, deterministic and without atomics: one pass over the score tiles, then a reduction.
//   pass 1, one task per (sequence, kv head, chunk of key blocks): for each key block of the chunk,
//           in order, and every (query head of the group, query block) that sees it, the five tile
//           GEMMs S = Q K^T, dP = dO V^T, dV += P^T dO, dK += dS^T Q and dQ_c += dS K. dK and dV of
//           the key block stay in the task's tiles until it is done; dS K goes to dQ_c, the chunk's
//           own dQ accumulator. P = sigmoid(S) and dS = dP * P * (1 - P) are made once per tile:
//           sigmoid attention needs no saved statistics and no rowsum(dO * O) pre-pass.
//   pass 2, one task per (sequence, query head, query block): dQ = scale * the sum of the chunks'
//           dQ_c in chunk order. d(bias) partials (one per pass-1 task and head) are summed in task order.
// Every sum runs in an order fixed by the shapes alone: the bits do not depend on the thread count
// or on which thread ran which task.
//
// Memory: besides per-thread tiles (and the bf16 path's packed operands, bf16_panels.hpp), the chunk
// accumulators: C * B * Hq * Nq * D elements of the accumulation type (fp32; fp64 for fp64 inputs;
// Nq rounded up to whole 64-row blocks per sequence), C = min(key blocks, 8, ceil(32 / (B * Hkv))):
// at most 8 copies of dQ in fp32, one once B * Hkv >= 32. One accumulator per key block would give
// tasks enough for any thread count but cost N^2 D / 64; a few chunks keep memory O(N D) and give
// small batches tasks enough for a few threads (large batches have them with one chunk).
#include <memory>
#include <vector>

#include "backends.hpp"
#include "cpu/bf16_panels.hpp"
#include "cpu/score_tile.hpp"

namespace flashsigmoid::detail {
namespace cpu {
namespace {

// Chunks of key blocks per (sequence, kv head): from the shapes only, never the thread count.
int key_chunks(const BwdParams& p) {
  constexpr std::int64_t kMaxChunks = 8, kMinTasks = 32;
  const std::int64_t k_blocks = (p.seqlen_k + kBlockK - 1) / kBlockK;
  const std::int64_t pairs = std::max<std::int64_t>(1, p.batch * p.heads_kv);
  const std::int64_t most = std::max<std::int64_t>(1, std::min(k_blocks, kMaxChunks));
  return static_cast<int>(std::clamp<std::int64_t>((kMinTasks + pairs - 1) / pairs, 1, most));
}

// The chunks' dQ accumulators, each laid out per sequence and query head in whole blocks of
// kBlockQ rows. Left uninitialised: each pass-1 task zeroes the part it owns.
template <typename Acc>
struct DqChunks {
  int chunks = 1, dim = 0;
  std::int64_t chunk_size = 0;
  std::vector<std::int64_t> seq_base;  // offset of sequence b, head 0, within a chunk
  std::unique_ptr<Acc[]> data;

  static std::int64_t padded(std::int64_t len) { return (len + kBlockQ - 1) / kBlockQ * kBlockQ; }

  DqChunks(const BwdParams& p, int num_chunks)
      : chunks(num_chunks), dim(static_cast<int>(p.head_dim)), seq_base(static_cast<std::size_t>(p.batch + 1), 0) {
    for (std::int64_t b = 0; b < p.batch; ++b) {
      seq_base[b + 1] = seq_base[b] + p.heads_q * padded(seq_info(p, b).len_q) * dim;
    }
    chunk_size = seq_base[p.batch];
    data.reset(new Acc[static_cast<std::size_t>(chunks * chunk_size)]);
  }

  // Row 0 of head h of sequence b in chunk c's accumulator.
  Acc* head(std::int64_t c, const SeqInfo& s, std::int64_t b, std::int64_t h) const {
    return data.get() + c * chunk_size + seq_base[b] + h * padded(s.len_q) * dim;
  }
};

// Sum of a [kBlockQ][kBlockK] tile in double, in a fixed order (16 interleaved partial sums, so the
// loop vectorises).
template <typename Acc>
double tile_sum(const Acc* x) {
  double lanes[16] = {};
  for (int e = 0; e < kBlockQ * kBlockK; e += 16) {
    for (int l = 0; l < 16; ++l) lanes[l] += static_cast<double>(x[e + l]);
  }
  double sum = 0.0;
  for (double l : lanes) sum += l;
  return sum;
}

// Pass 1. Tiles (one per task) does the tile work: begin_block(s, b, kvh, j0) before a key block,
// step(t, s, b, h, kvh, i0, j0, dq_rows) per (query head h, query block i0) returning the tile's dS,
// end_block(s, b, kvh, j0) after it. dbias_part[task * group + g] gets the d(bias) partial of the
// g-th head of the task's group.
template <typename Tiles, typename Acc, typename... Args>
void chunk_pass(const BwdParams& p, const DqChunks<Acc>& dq, std::vector<double>& dbias_part, const Args&... args) {
  const std::int64_t group = p.group_size();
  parallel_for(p.batch * p.heads_kv * dq.chunks, attn_threads(p), [&](std::int64_t task) {
    // Chunk-major task order: with a causal mask the first chunks see the most queries, and start first.
    const auto [b, kvh, c] = block_task(task, p.heads_kv, dq.chunks, 1, false);
    const SeqInfo s = seq_info(p, b);
    for (std::int64_t h = kvh * group; h < (kvh + 1) * group; ++h) {
      std::fill_n(dq.head(c, s, b, h), DqChunks<Acc>::padded(s.len_q) * dq.dim, Acc(0));
    }
    const std::int64_t blocks = (s.len_k + kBlockK - 1) / kBlockK;
    const std::int64_t j_begin = c * blocks / dq.chunks * kBlockK, j_end = (c + 1) * blocks / dq.chunks * kBlockK;
    if (j_begin == j_end) return;
    Tiles w(p, args...);
    for (std::int64_t j0 = j_begin; j0 < j_end; j0 += kBlockK) {
      w.begin_block(s, b, kvh, j0);
      const std::int64_t j_last = std::min<std::int64_t>(j0 + kBlockK, s.len_k);
      for (std::int64_t g = 0; g < group; ++g) {
        const std::int64_t h = kvh * group + g;
        const ScoreTransform t = make_score_transform(p, s, b, h);
        const std::int64_t i_end = t.query_end(j_last, s.len_q);
        // Query blocks aligned to kBlockQ, as the accumulators and the packed panels are.
        for (std::int64_t i0 = t.query_begin(j0) / kBlockQ * kBlockQ; i0 < i_end; i0 += kBlockQ) {
          const Acc* dS = w.step(t, s, b, h, kvh, i0, j0, dq.head(c, s, b, h) + i0 * dq.dim);
          // Rows past the sequence end have dO = 0, hence dS = 0: summing the whole tile is exact.
          if (p.dbias) dbias_part[static_cast<std::size_t>(task * group + g)] += tile_sum(dS);
        }
      }
      w.end_block(s, b, kvh, j0);
    }
  });
}

// Pass 2: dQ = scale * the chunks' accumulators summed in chunk order, and d(bias) in task order.
template <typename T, typename Acc>
void reduce_partials(const BwdParams& p, const DqChunks<Acc>& dq, const std::vector<double>& dbias_part) {
  const int D = dq.dim;
  const std::int64_t q_blocks = (p.seqlen_q + kBlockQ - 1) / kBlockQ;
  parallel_for(p.batch * p.heads_q * q_blocks, attn_threads(p), [&](std::int64_t task) {
    const auto [b, h, i0] = block_task(task, p.heads_q, q_blocks, kBlockQ, false);
    const SeqInfo s = seq_info(p, b);
    T* out = head_rows_out<T>(p.dq, p.dq_stride, b, s.q_begin, h);
    Acc row[256];  // D <= 256
    for (std::int64_t i = i0; i < std::min<std::int64_t>(i0 + kBlockQ, s.len_q); ++i) {
      std::copy_n(dq.head(0, s, b, h) + i * D, D, row);
      for (int c = 1; c < dq.chunks; ++c) {
        const Acc* x = dq.head(c, s, b, h) + i * D;
        for (int d = 0; d < D; ++d) row[d] += x[d];
      }
      for (int d = 0; d < D; ++d) out[i * p.dq_stride.row + d] = store_as<T>(row[d] * Acc(p.scale));
    }
  });
  if (p.dbias) {
    const std::int64_t group = p.group_size();
    std::vector<double> db(static_cast<std::size_t>(p.heads_q), 0.0);
    for (std::size_t e = 0; e < dbias_part.size(); ++e) {
      const std::int64_t task = static_cast<std::int64_t>(e) / group;
      db[block_task(task, p.heads_kv, dq.chunks, 1, false).h * group + static_cast<std::int64_t>(e) % group] +=
          dbias_part[e];
    }
    for (std::int64_t h = 0; h < p.heads_q; ++h) p.dbias[h] = static_cast<float>(db[h]);
  }
}

template <typename Tiles, typename T, typename Acc, typename... Args>
void backward_impl(const BwdParams& p, const Args&... args) {
  const DqChunks<Acc> dq(p, key_chunks(p));
  std::vector<double> dbias_part(p.dbias ? static_cast<std::size_t>(p.batch * p.heads_q * dq.chunks) : 0, 0.0);
  chunk_pass<Tiles>(p, dq, dbias_part, args...);
  reduce_partials<T>(p, dq, dbias_part);
  if (p.is_varlen()) {
    const int D = static_cast<int>(p.head_dim);
    zero_rows<T>(p.dq, p.dq_stride, p.cu_seqlens_q[p.batch], p.total_q, p.heads_q, D);
    zero_rows<T>(p.dk, p.dk_stride, p.cu_seqlens_k[p.batch], p.total_k, p.heads_kv, D);
    zero_rows<T>(p.dv, p.dv_stride, p.cu_seqlens_k[p.batch], p.total_k, p.heads_kv, D);
  }
}

// The tile work of the generic path (any dtype, accumulation type Acc): fp32 (fp64) tile GEMMs on
// operands read in place when the storage is Acc, else converted into tiles.
template <typename T, typename Acc>
struct BwdTiles {
  const BwdParams& p;
  int D;
  std::vector<Acc> buf;
  Acc *Q, *dO, *K, *Kt, *Vt, *S, *dP, *dK, *dV;
  const Acc* k_rows = nullptr;  // K of the key block: K or the storage itself
  int ldk = 0;

  explicit BwdTiles(const BwdParams& params) : p(params), D(static_cast<int>(p.head_dim)) {
    const int Bq = kBlockQ, Bk = kBlockK;
    buf.assign(static_cast<std::size_t>(2 * Bq * D + 5 * Bk * D + 2 * Bq * Bk), Acc(0));
    Q = buf.data();     // [Bq][D]: Q or dO rows converted from the storage type
    dO = Q + Bq * D;    // [Bq][D]
    K = dO + Bq * D;    // [Bk][D]
    Kt = K + Bk * D;    // [D][Bk]: transposed once per key block
    Vt = Kt + D * Bk;   // [D][Bk]
    dK = Vt + D * Bk;   // [Bk][D]
    dV = dK + Bk * D;   // [Bk][D]
    S = dV + Bk * D;    // [Bq][Bk]: S, then P
    dP = S + Bq * Bk;   // [Bq][Bk]: dP, then dS
  }

  RowSlice<T> key_rows(const void* x, const OperandStrides& st, const SeqInfo& s, std::int64_t b, std::int64_t kvh) {
    return head_rows<T>(x, st, b, s.k_begin, kvh, s.len_k);
  }
  RowSlice<T> query_rows(const void* x, const OperandStrides& st, const SeqInfo& s, std::int64_t b, std::int64_t h) {
    return head_rows<T>(x, st, b, s.q_begin, h, s.len_q);
  }

  void begin_block(const SeqInfo& s, std::int64_t b, std::int64_t kvh, std::int64_t j0) {
    load_tile_transposed(key_rows(p.k, p.k_stride, s, b, kvh), j0, kBlockK, D, Kt);
    load_tile_transposed(key_rows(p.v, p.v_stride, s, b, kvh), j0, kBlockK, D, Vt);
    k_rows = tile_rows(key_rows(p.k, p.k_stride, s, b, kvh), j0, kBlockK, D, K, &ldk);
    std::fill(dK, dK + 2 * kBlockK * D, Acc(0));  // dK and dV
  }

  const Acc* step(const ScoreTransform& t, const SeqInfo& s, std::int64_t b, std::int64_t h, std::int64_t,
                  std::int64_t i0, std::int64_t j0, Acc* dq_rows) {
    int ldq, ldo;
    const Acc* q = tile_rows(query_rows(p.q, p.q_stride, s, b, h), i0, kBlockQ, D, Q, &ldq);
    const Acc* dout = tile_rows(query_rows(p.dout, p.do_stride, s, b, h), i0, kBlockQ, D, dO, &ldo);
    std::fill(S, S + 2 * kBlockQ * kBlockK, Acc(0));  // S and dP
    gemm_acc(q, ldq, Kt, kBlockK, S, kBlockK, kBlockQ, kBlockK, D);  // Q K^T
    scores_to_probs(t, i0, kBlockQ, j0, kBlockK, S);
    gemm_acc(dout, ldo, Vt, kBlockK, dP, kBlockK, kBlockQ, kBlockK, D);  // dO V^T
    for (int e = 0; e < kBlockQ * kBlockK; ++e) dP[e] *= S[e] * (Acc(1) - S[e]);
    if (t.block_unmasked(i0, i0 + kBlockQ, j0, j0 + kBlockK)) {
      gemm_acc<true>(S, kBlockK, dout, ldo, dV, D, kBlockK, D, kBlockQ);  // dV += P^T dO
      gemm_acc<true>(dP, kBlockK, q, ldq, dK, D, kBlockK, D, kBlockQ);    // dK += dS^T Q
      gemm_acc(dP, kBlockK, k_rows, ldk, dq_rows, D, kBlockQ, D, kBlockK);  // dQ_c += dS K
      return dP;
    }
    // A masked dS is 0 by a select: P = 0 there, but dP may be NaN (a NaN / Inf row of V or dO).
    zero_masked(t, i0, kBlockQ, j0, kBlockK, dP);
    // Masked terms are skipped, not multiplied by 0: the Q / dO rows a key cannot see, and the K
    // rows a query cannot see, may hold NaN or Inf.
    int lo[std::max(kBlockQ, kBlockK)], hi[std::max(kBlockQ, kBlockK)];  // per key, then per query
    visible_queries(t, j0, kBlockK, i0, kBlockQ, s.len_q, lo, hi);
    gemm_acc_rows<true>(S, kBlockK, dout, ldo, dV, D, kBlockK, D, lo, hi);
    gemm_acc_rows<true>(dP, kBlockK, q, ldq, dK, D, kBlockK, D, lo, hi);
    visible_keys(t, i0, kBlockQ, j0, kBlockK, lo, hi);
    gemm_acc_rows(dP, kBlockK, k_rows, ldk, dq_rows, D, kBlockQ, D, lo, hi);
    return dP;
  }

  void end_block(const SeqInfo& s, std::int64_t b, std::int64_t kvh, std::int64_t j0) {
    store_tile<T>(dK, kBlockK, D, Acc(p.scale), head_rows_out<T>(p.dk, p.dk_stride, b, s.k_begin, kvh),
                  p.dk_stride.row, j0, s.len_k);
    store_tile<T>(dV, kBlockK, D, Acc(1), head_rows_out<T>(p.dv, p.dv_stride, b, s.k_begin, kvh), p.dv_stride.row,
                  j0, s.len_k);
  }
};

#if defined(FLASHSIGMOID_CPU_AVX512BF16)

// bf16 inputs on bf16 tile GEMMs (bf16_gemm.hpp), every operand packed once per call into the
// layout its GEMMs read.
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

// The tile work of the bf16 path: S = Q K^T and dP = dO V^T query-major, then P^T, dS^T (for dV and
// dK) and dS (for dQ) rounded to bf16 as the A operands of the other three GEMMs; fp32
// accumulation throughout. Partially masked tiles keep the fp32 GEMMs that skip masked terms.
struct Bf16BwdTiles {
  const BwdParams& p;
  const Bf16BwdPanels& w;
  int D;
  AmxTiles amx;  // the task's thread keeps its AMX tile configuration for the whole task
  std::vector<float> buf;
  std::vector<bf16_bits> half;
  float *S, *dP, *X, *Kf, *dK, *dV;
  bf16_bits* Hb;

  Bf16BwdTiles(const BwdParams& params, const Bf16BwdPanels& panels)
      : p(params), w(panels), D(static_cast<int>(p.head_dim)),
        buf(static_cast<std::size_t>(2 * kBlockQ * kBlockK + kBlockQ * D + 3 * kBlockK * D), 0.0f),
        half(static_cast<std::size_t>(kBlockQ * kBlockK)) {
    S = buf.data();               // [kBlockQ][kBlockK]: S, then P
    dP = S + kBlockQ * kBlockK;   // [kBlockQ][kBlockK]: dP, then dS
    X = dP + kBlockQ * kBlockK;   // [kBlockQ][D]: fp32 Q or dO rows for a partially masked tile
    Kf = X + kBlockQ * D;         // [kBlockK][D]: fp32 K of the key block, for partially masked tiles
    dK = Kf + kBlockK * D;        // [kBlockK][D]
    dV = dK + kBlockK * D;        // [kBlockK][D]
    Hb = half.data();             // [64][64] bf16: an A operand
  }

  RowSlice<bfloat16_t> rows(const void* x, const OperandStrides& st, std::int64_t b, std::int64_t begin,
                            std::int64_t h, std::int64_t len) {
    return head_rows<bfloat16_t>(x, st, b, begin, h, len);
  }

  void begin_block(const SeqInfo& s, std::int64_t b, std::int64_t kvh, std::int64_t j0) {
    load_tile(rows(p.k, p.k_stride, b, s.k_begin, kvh, s.len_k), j0, kBlockK, D, Kf);
    std::fill(dK, dK + 2 * kBlockK * D, 0.0f);  // dK and dV
  }

  const float* step(const ScoreTransform& t, const SeqInfo& s, std::int64_t b, std::int64_t h, std::int64_t kvh,
                    std::int64_t i0, std::int64_t j0, float* dq_rows) {
    gemm_bf16(w.q_rows.block(s, b, h, i0), D, w.k_pairs_t.block(s, b, kvh, j0), kBlockK, S, kBlockK, kBlockQ,
              kBlockK, D, false);  // Q K^T
    scores_to_probs(t, i0, kBlockQ, j0, kBlockK, S);
    gemm_bf16(w.do_rows.block(s, b, h, i0), D, w.v_pairs_t.block(s, b, kvh, j0), kBlockK, dP, kBlockK, kBlockQ,
              kBlockK, D, false);  // dO V^T
    for (int e = 0; e < kBlockQ * kBlockK; ++e) dP[e] *= S[e] * (1.0f - S[e]);
    if (t.block_unmasked(i0, i0 + kBlockQ, j0, j0 + kBlockK)) {
      transposed_to_bf16_64(S, Hb);
      gemm_bf16(Hb, kBlockQ, w.do_pairs.block(s, b, h, i0), D, dV, D, kBlockK, D, kBlockQ, true);  // dV += P^T dO
      transposed_to_bf16_64(dP, Hb);
      gemm_bf16(Hb, kBlockQ, w.q_pairs.block(s, b, h, i0), D, dK, D, kBlockK, D, kBlockQ, true);  // dK += dS^T Q
      to_bf16(dP, kBlockQ, kBlockK, Hb);
      gemm_bf16(Hb, kBlockK, w.k_pairs.block(s, b, kvh, j0), D, dq_rows, D, kBlockQ, D, kBlockK, true);  // dQ_c
      return dP;
    }
    // As BwdTiles::step: masked dS zeroed by a select, masked terms skipped (fp32 GEMMs).
    zero_masked(t, i0, kBlockQ, j0, kBlockK, dP);
    int lo[std::max(kBlockQ, kBlockK)], hi[std::max(kBlockQ, kBlockK)];  // per key, then per query
    visible_queries(t, j0, kBlockK, i0, kBlockQ, s.len_q, lo, hi);
    load_tile(rows(p.dout, p.do_stride, b, s.q_begin, h, s.len_q), i0, kBlockQ, D, X);
    gemm_acc_rows<true>(S, kBlockK, X, D, dV, D, kBlockK, D, lo, hi);
    load_tile(rows(p.q, p.q_stride, b, s.q_begin, h, s.len_q), i0, kBlockQ, D, X);
    gemm_acc_rows<true>(dP, kBlockK, X, D, dK, D, kBlockK, D, lo, hi);
    visible_keys(t, i0, kBlockQ, j0, kBlockK, lo, hi);
    gemm_acc_rows(dP, kBlockK, Kf, D, dq_rows, D, kBlockQ, D, lo, hi);
    return dP;
  }

  void end_block(const SeqInfo& s, std::int64_t b, std::int64_t kvh, std::int64_t j0) {
    store_tile<bfloat16_t>(dK, kBlockK, D, static_cast<float>(p.scale),
                           head_rows_out<bfloat16_t>(p.dk, p.dk_stride, b, s.k_begin, kvh), p.dk_stride.row, j0,
                           s.len_k);
    store_tile<bfloat16_t>(dV, kBlockK, D, 1.0f, head_rows_out<bfloat16_t>(p.dv, p.dv_stride, b, s.k_begin, kvh),
                           p.dv_stride.row, j0, s.len_k);
  }
};

#endif  // FLASHSIGMOID_CPU_AVX512BF16

}  // namespace
}  // namespace cpu

void FLASHSIGMOID_CPU_ENTRY(cpu_backward)(const BwdParams& p) {
#if defined(FLASHSIGMOID_CPU_AVX512BF16)
  // bf16 inputs on the bf16 GEMMs; every supported head dim (a multiple of 32) fits their tiles.
  if (p.dtype == DType::bfloat16 && p.head_dim % 32 == 0 && p.head_dim <= 256) {
    // The panels' blocks are the tiles' blocks, and the tiles are square (transposed_to_bf16_64).
    static_assert(cpu::Panels::kBlock == cpu::kBlockQ && cpu::Panels::kBlock == cpu::kBlockK && cpu::kBlockQ == 64);
    const cpu::Bf16BwdPanels w(p);
    return cpu::backward_impl<cpu::Bf16BwdTiles, bfloat16_t, float>(p, w);
  }
#endif
  cpu::dispatch_dtype(p.dtype, [&]<typename T, typename Acc>() { cpu::backward_impl<cpu::BwdTiles<T, Acc>, T, Acc>(p); });
}

}  // namespace flashsigmoid::detail
