// The score step of the CPU backend, shared by forward and backward: turns a tile of
// raw dot products S[i][j] into P = sigmoid(logit) (and, for the backward, dS), using
// the one ScoreTransform. Masked entries become exactly 0.
#pragma once

#include "common/score_transform.hpp"
#include "cpu/tile_ops.hpp"

namespace flashsigmoid::detail::cpu {

// S (rows x cols, raw q.k) -> P in place.
template <typename Acc>
void scores_to_probs(const ScoreTransform& t, std::int64_t i0, int rows, std::int64_t j0, int cols, Acc* S) {
  const bool mask = !t.block_unmasked(i0, i0 + rows, j0, j0 + cols);
  for (int r = 0; r < rows; ++r) {
    Acc* s = S + r * cols;
    const std::int64_t i = i0 + r;
    for (int c = 0; c < cols; ++c) s[c] = sigmoid(t.logit(s[c], i, j0 + c));
    if (mask) {
      for (int c = 0; c < cols; ++c)
        if (j0 + c >= t.len_k || t.masked(i, j0 + c)) s[c] = Acc(0);
    }
  }
}

}  // namespace flashsigmoid::detail::cpu
