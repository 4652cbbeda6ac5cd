// CPU attention over a KV cache (decode / append). The new keys and values are appended first;
// then one task per (sequence, block of kv heads, key split, block of query rows) streams the
// split's keys once for all query heads of those kv heads (decode is memory-bound: each K/V
// element is read once). Sigmoid partials over disjoint key ranges simply add, so splits write fp32
// partial outputs that a second pass sums in split order: the result does not depend on the
// thread count.
#include <cstring>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "backends.hpp"
#include "cpu/kv_tiles.hpp"
#include "cpu/score_tile.hpp"

namespace flashsigmoid::detail {
namespace cpu {
namespace {

// Query rows (all query heads of the task's kv heads, times the query tokens) per task: the score /
// probability tile of a task is [rows][kBlockK] and stays in L1 / L2.
constexpr int kMaxTaskRows = 64;
// Heuristic split count (num_splits = 0): enough (sequence, kv head, split) tasks to spread a small
// batch over the cores, but no split shorter than kMinSplitKeys. A constant, not the thread count,
// so the result is the same on every machine.
constexpr std::int64_t kTargetTasks = 64;
constexpr std::int64_t kMinSplitKeys = 2048;
// Cache rows (of one kv head) per thread below which fewer threads are started: a decode step over
// a short cache takes microseconds, less than starting a thread on a busy machine.
constexpr std::int64_t kRowsPerThread = 2048;

std::int64_t cdiv(std::int64_t a, std::int64_t b) { return (a + b - 1) / b; }

// Keys of sequence b (cached + appended).
std::int64_t seq_keys(const KVCacheParams& p, std::int64_t b) {
  return std::int64_t(p.cache_seqlens[b]) + (p.k_new != nullptr ? p.seqlen_q : 0);
}

// Row t of kv head h of sequence b in a cache, walked in increasing t: a paged cache's division by
// the page size happens once per tile, not per row.
template <typename T>
class CacheCursor {
 public:
  CacheCursor(const KVCacheParams& p, const void* base, const OperandStrides& s, std::int64_t b, std::int64_t h,
              std::int64_t t)
      : p_(p), s_(s), head_(static_cast<const T*>(base) + h * s.head) {
    if (p.block_table != nullptr) {
      table_ = p.block_table + b * p.block_table_stride;
      page_ = t / p.page_size;
      slot_ = t % p.page_size;
      page_base_ = head_ + std::int64_t(table_[page_]) * s.batch;
    } else {
      page_base_ = head_ + (p.cache_batch_idx != nullptr ? p.cache_batch_idx[b] : b) * s.batch;
      slot_ = t;
    }
  }
  const T* row() const { return page_base_ + slot_ * s_.row; }
  // Moves to row t + 1; never touches the block table past the rows the caller reads.
  void next(bool more) {
    ++slot_;
    if (table_ != nullptr && slot_ == p_.page_size && more) {
      slot_ = 0;
      page_base_ = head_ + std::int64_t(table_[++page_]) * s_.batch;
    }
  }

 private:
  const KVCacheParams& p_;
  const OperandStrides& s_;
  const T* head_;
  const std::int32_t* table_ = nullptr;
  std::int64_t page_ = 0, slot_ = 0;
  const T* page_base_ = nullptr;
};

// Pointers to rows [t0, t0 + valid) of one head of a cache; the kernels below read them in place
// (no copy into a tile), converting to Acc as they load.
template <typename T>
void row_pointers(const KVCacheParams& p, const void* base, const OperandStrides& s, std::int64_t b,
                  std::int64_t h, std::int64_t t0, int valid, const T** rows) {
  CacheCursor<T> cur(p, base, s, b, h, t0);
  for (int r = 0; r < valid; ++r, cur.next(r < valid)) rows[r] = cur.row();
}

// Writes k_new / v_new into the cache at positions cache_seqlens[b] ... (validated: in range, no
// two sequences write one page).
template <typename T>
void append(const KVCacheParams& p) {
  const int D = static_cast<int>(p.head_dim);
  const std::int64_t work = p.batch * p.heads_kv * p.seqlen_q;  // rows written
  parallel_for(p.batch * p.heads_kv, thread_count(p.num_threads, work / kRowsPerThread), [&](std::int64_t task) {
    const std::int64_t b = task / p.heads_kv, h = task % p.heads_kv;
    for (int which = 0; which < 2; ++which) {
      const auto* src = static_cast<const T*>(which == 0 ? p.k_new : p.v_new);
      const OperandStrides& ss = which == 0 ? p.k_new_stride : p.v_new_stride;
      CacheCursor<T> cur(p, which == 0 ? p.k_cache : p.v_cache, which == 0 ? p.k_stride : p.v_stride, b, h,
                         p.cache_seqlens[b]);
      for (std::int64_t i = 0; i < p.seqlen_q; ++i, cur.next(i < p.seqlen_q)) {
        const T* in = src + ss.offset(b, i, h);
        std::copy(in, in + D, const_cast<T*>(cur.row()));
      }
    }
  });
}

// How the query rows and kv heads are cut into tasks: each task takes `tokens` query tokens of
// `heads` consecutive kv heads (with all their query heads), at most kMaxTaskRows rows together.
struct TaskShape {
  std::int64_t tokens, q_blocks;
  std::int64_t heads, head_blocks;
};

TaskShape task_shape(const KVCacheParams& p) {
  const std::int64_t G = p.group_size();
  const std::int64_t tokens = std::clamp<std::int64_t>(kMaxTaskRows / G, 1, std::max<std::int64_t>(p.seqlen_q, 1));
  std::int64_t heads = 1;  // the largest divisor of Hkv that fits
  for (std::int64_t h = 2; h <= p.heads_kv; ++h) {
    if (p.heads_kv % h == 0 && h * G * tokens <= kMaxTaskRows) heads = h;
  }
  return {tokens, cdiv(p.seqlen_q, tokens), heads, p.heads_kv / heads};
}

int resolve_splits(const KVCacheParams& p) {
  if (p.num_splits > 0) return p.num_splits;
  std::int64_t longest = 0;
  for (std::int64_t b = 0; b < p.batch; ++b) longest = std::max(longest, seq_keys(p, b));
  const std::int64_t by_length = cdiv(longest, kMinSplitKeys);
  const std::int64_t by_tasks = cdiv(kTargetTasks, std::max<std::int64_t>(1, p.batch * task_shape(p).head_blocks));
  return static_cast<int>(std::clamp<std::int64_t>(std::min(by_length, by_tasks), 1, kMaxKVCacheSplits));
}

// One task: query tokens [i0, i0 + rows) of sequence b, kv heads [kvh0, kvh0 + HB) with their G
// query heads each, keys of split `split`. Its buffers hold, per kv head hh, rows [hh * M, (hh + 1) * M)
// (M = rows * G; row m = g * rows + (i - i0)) of Q and O, and one head's score / probability tile P.
template <typename Acc>
struct Task {
  std::int64_t b, kvh0, i0;
  int rows, split, G, HB;
  Acc *Q, *O, *P;  // [HB * M][D], [HB * M][D], [M][kBlockK]
  int M() const { return rows * G; }
};

template <typename Acc>
Task<Acc> task_at(const KVCacheParams& p, const TaskShape& shape, int splits, std::int64_t index) {
  const std::int64_t qb = index % shape.q_blocks;
  const std::int64_t hb = (index / (shape.q_blocks * splits)) % shape.head_blocks;
  Task<Acc> t{};
  t.split = static_cast<int>((index / shape.q_blocks) % splits);
  t.b = index / (shape.q_blocks * splits * shape.head_blocks);
  t.HB = static_cast<int>(shape.heads);
  t.G = static_cast<int>(p.group_size());
  t.kvh0 = hb * t.HB;
  t.i0 = qb * shape.tokens;
  t.rows = static_cast<int>(std::min(shape.tokens, p.seqlen_q - t.i0));
  return t;
}

// The task's query rows into Q (as Acc) and, where the bf16 kernels take them, as bf16 (exactly:
// they are bf16 inputs).
template <typename T, typename Acc, int D>
void load_queries(const KVCacheParams& p, const Task<Acc>& t, bfloat16_t* q_bf16) {
  for (int h = 0; h < t.HB * t.G; ++h) {
    const auto q = head_rows<T>(p.q, p.q_stride, t.b, 0, t.kvh0 * t.G + h, p.seqlen_q);
    load_tile(q, t.i0, t.rows, D, t.Q + h * t.rows * D);
    if constexpr (std::is_same_v<T, bfloat16_t>) {
      if (q_bf16 == nullptr) continue;
      for (int r = 0; r < t.rows; ++r) {
        const T* src = static_cast<const T*>(p.q) + p.q_stride.offset(t.b, t.i0 + r, t.kvh0 * t.G + h);
        std::copy(src, src + D, q_bf16 + (h * t.rows + r) * D);
      }
    }
  }
}

// O += sigmoid(transform(Q K^T)) V over keys [k_lo, k_hi), a tile of kBlockK cache rows at a time,
// the next tile's rows prefetched while one is computed; tr: one transform per query head.
template <typename T, typename Acc, int D>
void attend_keys(const KVCacheParams& p, const Task<Acc>& t, const ScoreTransform* tr, std::int64_t k_lo,
                 std::int64_t k_hi, const bfloat16_t* q_bf16) {
  const int M = t.M();
  // Row pointers of the first kv head of the task; head hh is hh * stride.head further.
  const T* k_rows[2][kBlockK];  // this tile's rows and the next one's
  const T* v_rows[2][kBlockK];
  if (k_lo < k_hi) {
    const int valid = static_cast<int>(std::min<std::int64_t>(kBlockK, k_hi - k_lo));
    row_pointers<T>(p, p.k, p.k_stride, t.b, t.kvh0, k_lo, valid, k_rows[0]);
    row_pointers<T>(p, p.v, p.v_stride, t.b, t.kvh0, k_lo, valid, v_rows[0]);
  }
  for (std::int64_t j0 = k_lo, n = 0; j0 < k_hi; j0 += kBlockK, n ^= 1) {
    const int valid = static_cast<int>(std::min<std::int64_t>(kBlockK, k_hi - j0));
    const int next = static_cast<int>(std::clamp<std::int64_t>(k_hi - j0 - kBlockK, 0, kBlockK));
    if (next > 0) {
      row_pointers<T>(p, p.k, p.k_stride, t.b, t.kvh0, j0 + kBlockK, next, k_rows[n ^ 1]);
      row_pointers<T>(p, p.v, p.v_stride, t.b, t.kvh0, j0 + kBlockK, next, v_rows[n ^ 1]);
    }
    const bool unmasked = tr[0].block_unmasked(t.i0, t.i0 + t.rows, j0, j0 + valid);
    TilePrefetcher<T> pf(k_rows[n ^ 1], p.k_stride.head, v_rows[n ^ 1], p.v_stride.head, next, t.HB, D);
    for (int hh = 0; hh < t.HB; ++hh) {
      const std::int64_t k_off = hh * p.k_stride.head, v_off = hh * p.v_stride.head;
      Acc* O = t.O + hh * M * D;
#if defined(FLASHSIGMOID_KVCACHE_BF16_DOT)
      if constexpr (std::is_same_v<T, bfloat16_t>) scores_bf16<D>(q_bf16 + hh * M * D, M, k_rows[n], k_off, valid, t.P, pf); else
#endif
      scores<D>(t.Q + hh * M * D, M, k_rows[n], k_off, valid, t.P, pf);
      for (int g = 0; g < t.G; ++g) {
        scores_to_probs(tr[hh * t.G + g], t.i0, t.rows, j0, kBlockK, t.P + g * t.rows * kBlockK);
      }
      if (!unmasked) {
        pv_visible<D>(tr[0], t.i0, t.rows, t.G, j0, valid, t.P, v_rows[n], v_off, O);
        continue;
      }
#if defined(FLASHSIGMOID_KVCACHE_BF16_DOT)
      if constexpr (std::is_same_v<T, bfloat16_t>) pv_bf16<D>(t.P, M, v_rows[n], v_off, valid, O, pf); else
#endif
      pv<D>(t.P, M, v_rows[n], v_off, valid, O, pf);
    }
    pf.finish();
  }
}

// One task, start to end: its keys (this split's, intersected with those its rows see), then its
// output rows: O itself with one split, else its fp32 partial [split][B][Hq][Nq][D].
template <typename T, typename Acc, int D>
void run_task(const KVCacheParams& p, Task<Acc> t, int splits, Acc* partial) {
  const std::int64_t Nq = p.seqlen_q, nk = seq_keys(p, t.b);
  const SeqInfo s{0, 0, Nq, nk};
  thread_local std::vector<ScoreTransform> tr;  // per query head of the task
  tr.resize(t.HB * t.G);
  for (int h = 0; h < t.HB * t.G; ++h) tr[h] = make_score_transform(p, s, t.b, t.kvh0 * t.G + h);
  // The masks do not depend on the head: the first transform bounds the keys.
  const std::int64_t chunk = cdiv(cdiv(nk, splits), kBlockK) * kBlockK;
  const std::int64_t k_lo = std::max(t.split * chunk, tr[0].key_begin(t.i0));
  const std::int64_t k_hi = std::min({(t.split + 1) * chunk, nk, tr[0].key_end(t.i0 + t.rows)});

  const int M = t.M();
  thread_local std::vector<Acc> buf;
  buf.assign(static_cast<std::size_t>(t.HB * M * D * 2 + M * kBlockK), Acc(0));
  t.Q = buf.data();
  t.O = t.Q + t.HB * M * D;
  t.P = t.O + t.HB * M * D;
  thread_local std::vector<bfloat16_t> q_bf16;
  constexpr bool bf16_dot = kBf16Dot && std::is_same_v<T, bfloat16_t>;
  if constexpr (bf16_dot) q_bf16.resize(static_cast<std::size_t>(t.HB * M * D));
  load_queries<T, Acc, D>(p, t, bf16_dot ? q_bf16.data() : nullptr);
  attend_keys<T, Acc, D>(p, t, tr.data(), k_lo, k_hi, q_bf16.data());

  for (int h = 0; h < t.HB * t.G; ++h) {
    const std::int64_t head = t.kvh0 * t.G + h;
    const Acc* src = t.O + h * t.rows * D;
    if (splits == 1) {
      store_tile<T>(src, t.rows, D, Acc(1), head_rows_out<T>(p.o, p.o_stride, t.b, 0, head), p.o_stride.row, t.i0,
                    Nq);
    } else {
      std::copy(src, src + t.rows * D, partial + (((t.split * p.batch + t.b) * p.heads_q + head) * Nq + t.i0) * D);
    }
  }
}

// O = the sum of the split partials in split order (0, 1, ...), one task per (sequence, query head).
template <typename T, typename Acc, int D>
void sum_splits(const KVCacheParams& p, int splits, const std::vector<Acc>& partial) {
  const std::int64_t Nq = p.seqlen_q;
  parallel_for(p.batch * p.heads_q, thread_count(p.num_threads, std::int64_t(partial.size()) / (1 << 20)),
               [&](std::int64_t task) {
    const std::int64_t b = task / p.heads_q, h = task % p.heads_q;
    const std::size_t split_stride = static_cast<std::size_t>(p.batch * p.heads_q * Nq * D);
    const Acc* first = partial.data() + ((b * p.heads_q + h) * Nq) * D;
    T* out = head_rows_out<T>(p.o, p.o_stride, b, 0, h);
    for (std::int64_t i = 0; i < Nq; ++i) {
      for (int d = 0; d < D; ++d) {
        Acc sum = first[i * D + d];
        for (int c = 1; c < splits; ++c) sum += first[c * split_stride + i * D + d];
        out[i * p.o_stride.row + d] = store_as<T>(sum);
      }
    }
  });
}

template <typename T, typename Acc, int D>
void attend(const KVCacheParams& p, int splits) {
  const TaskShape shape = task_shape(p);
  // Split partials [splits][B][Hq][Nq][D] in Acc; not needed with one split.
  std::vector<Acc> partial(splits > 1 ? static_cast<std::size_t>(splits * p.batch * p.heads_q * p.seqlen_q * D) : 0);
  std::int64_t work = 0;  // cache rows (of one kv head) read, over all tasks
  for (std::int64_t b = 0; b < p.batch; ++b) work += seq_keys(p, b) * p.heads_kv * shape.q_blocks;
  parallel_for(p.batch * shape.head_blocks * splits * shape.q_blocks, thread_count(p.num_threads, work / kRowsPerThread),
               [&](std::int64_t index) {
                 run_task<T, Acc, D>(p, task_at<Acc>(p, shape, splits, index), splits, partial.data());
               });
  if (splits > 1) sum_splits<T, Acc, D>(p, splits, partial);
}

}  // namespace
}  // namespace cpu

void FLASHSIGMOID_CPU_ENTRY(cpu_forward_kvcache)(const KVCacheParams& p) {
  const int splits = cpu::resolve_splits(p);
  cpu::dispatch_dtype(p.dtype, [&]<typename T, typename Acc>() {
    // Append first: another sequence may read a page this call writes.
    if (p.k_new != nullptr && p.seqlen_q > 0) cpu::append<T>(p);
    switch (p.head_dim) {  // validated: one of kSupportedHeadDims
      case 32: return cpu::attend<T, Acc, 32>(p, splits);
      case 64: return cpu::attend<T, Acc, 64>(p, splits);
      case 96: return cpu::attend<T, Acc, 96>(p, splits);
      case 128: return cpu::attend<T, Acc, 128>(p, splits);
      case 256: return cpu::attend<T, Acc, 256>(p, splits);
      default: throw Error("flashsigmoid: internal error: the CPU KV-cache kernel got head dim " +
                           std::to_string(p.head_dim));
    }
  });
}

}  // namespace flashsigmoid::detail
