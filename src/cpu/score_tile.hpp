// The score step of the CPU backend, shared by forward and backward: turns a tile of
// raw dot products S[i][j] into P = sigmoid(logit) (and, for the backward, dS), using
// the one ScoreTransform. Masked entries become exactly 0.
#pragma once

#include "common/score_transform.hpp"
#include "cpu/tile_ops.hpp"

namespace flashsigmoid::detail::cpu {
inline namespace FLASHSIGMOID_CPU_LEVEL {

// A tile of raw q.k for query rows [i0, i0 + rows) and key columns [j0, j0 + cols) -> P, in
// place. Stored S[r][c], or with kKeyMajor S[c][r] (P^T, what the forward's K Q^T GEMM makes);
// the inner loop always runs over contiguous memory so it vectorises.
template <bool kKeyMajor = false, typename Acc>
void scores_to_probs(const ScoreTransform& t, std::int64_t i0, int rows, std::int64_t j0, int cols, Acc* S) {
  const bool mask = !t.block_unmasked(i0, i0 + rows, j0, j0 + cols);
  const int outer = kKeyMajor ? cols : rows, inner = kKeyMajor ? rows : cols;
  for (int a = 0; a < outer; ++a) {
    Acc* s = S + a * inner;
    for (int e = 0; e < inner; ++e) {
      const std::int64_t i = i0 + (kKeyMajor ? e : a), j = j0 + (kKeyMajor ? a : e);
      s[e] = sigmoid(t.logit(s[e], i, j));
    }
    if (mask) {
      for (int e = 0; e < inner; ++e) {
        const std::int64_t i = i0 + (kKeyMajor ? e : a), j = j0 + (kKeyMajor ? a : e);
        if (j >= t.len_k || t.masked(i, j)) s[e] = Acc(0);
      }
    }
  }
}

}  // namespace FLASHSIGMOID_CPU_LEVEL
}  // namespace flashsigmoid::detail::cpu
