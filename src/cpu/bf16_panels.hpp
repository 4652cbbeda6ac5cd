// One bf16 operand of every (sequence, head), copied once per call into contiguous panels in the
// layout a bf16 tile GEMM reads (bf16_gemm.hpp), block by block of kBlock rows, so that every task
// and every query head of a GQA group reads the same packed copy. Rows past a sequence's end are
// zero. Size: the operand's, rounded up to whole blocks (O(N D), never N x N).
#pragma once

#include <vector>

#include "common/params.hpp"
#include "common/score_transform.hpp"
#include "cpu/bf16_gemm.hpp"
#include "cpu/tile_ops.hpp"

#if defined(FLASHSIGMOID_CPU_AVX512BF16)

namespace flashsigmoid::detail::cpu {
inline namespace FLASHSIGMOID_CPU_LEVEL {

enum class Pack {
  rows,     // [kBlock][D]: the A operand (row-major)
  pairs_t,  // [D/2][kBlock][2]: the B operand for X Y^T (this operand is Y)
  pairs,    // [kBlock/2][D][2]: the B operand for P Y (this operand is Y)
};

struct Panels {
  static constexpr int kBlock = 64;
  std::vector<std::int64_t> seq_base;  // offset of sequence b, head 0
  std::vector<bf16_bits> data;
  std::int64_t heads = 0;
  bool key_side = false;
  int dim = 0;

  static std::int64_t padded(std::int64_t len) { return (len + kBlock - 1) / kBlock * kBlock; }

  // The block of rows [r0, r0 + kBlock) of head h of sequence b (r0 a multiple of kBlock).
  const bf16_bits* block(const SeqInfo& s, std::int64_t b, std::int64_t h, std::int64_t r0) const {
    return data.data() + seq_base[b] + (h * padded(key_side ? s.len_k : s.len_q) + r0) * dim;
  }

  // ptr / st: a bf16 operand with `heads` heads, on the key side (k, v) or the query side (q, dout).
  Panels(const AttnParams& p, const void* ptr, const OperandStrides& st, std::int64_t num_heads, bool keys, Pack kind)
      : seq_base(static_cast<std::size_t>(p.batch + 1), 0), heads(num_heads), key_side(keys),
        dim(static_cast<int>(p.head_dim)) {
    auto len = [&](const SeqInfo& s) { return key_side ? s.len_k : s.len_q; };
    for (std::int64_t b = 0; b < p.batch; ++b) seq_base[b + 1] = seq_base[b] + heads * padded(len(seq_info(p, b))) * dim;
    data.resize(static_cast<std::size_t>(seq_base[p.batch]));
    const std::int64_t blocks = padded(key_side ? p.seqlen_k : p.seqlen_q) / kBlock;
    parallel_for(p.batch * heads * blocks, attn_threads(p), [&](std::int64_t task) {
      const auto [b, h, r0] = block_task(task, heads, blocks, kBlock, false);
      const SeqInfo s = seq_info(p, b);
      if (r0 >= len(s)) return;
      const auto x = head_rows<bfloat16_t>(ptr, st, b, key_side ? s.k_begin : s.q_begin, h, len(s));
      auto row = [&, r0 = r0](int r) { return r0 + r < x.rows ? x.row(r0 + r) : nullptr; };
      bf16_bits* out = data.data() + (block(s, b, h, r0) - data.data());
      switch (kind) {
        case Pack::rows: return pack_rows_bf16(row, kBlock, dim, out);
        case Pack::pairs_t: return pack_kt_pairs(row, kBlock, dim, out);
        case Pack::pairs: return pack_v_pairs(row, kBlock, dim, out);
      }
    });
  }
};

}  // namespace FLASHSIGMOID_CPU_LEVEL
}  // namespace flashsigmoid::detail::cpu

#endif  // FLASHSIGMOID_CPU_AVX512BF16
