// The score step of the CPU backend, shared by forward and backward: turns a tile of
// raw dot products S[i][j] into P = sigmoid(logit) (and, for the backward, dS), using
// the one ScoreTransform. Masked entries become exactly 0.
#pragma once

#include "common/score_transform.hpp"
#include "cpu/tile_ops.hpp"

namespace flashsigmoid::detail::cpu {

// True when some entry of the tile rows [i0, i0 + rows) x cols [j0, j0 + cols) is masked
// or lies past the end of the key sequence.
inline bool tile_needs_mask(const ScoreTransform& t, std::int64_t i0, int rows, std::int64_t j0, int cols) {
  if (j0 + cols > t.len_k) return true;
  const std::int64_t i1 = i0 + rows - 1, j1 = j0 + cols - 1;
  const bool right_ok = t.right < 0 || j1 - (i0 + t.diag) <= t.right;  // largest j - (i + diag)
  const bool left_ok = t.left < 0 || (i1 + t.diag) - j0 <= t.left;     // largest (i + diag) - j
  return !(right_ok && left_ok);
}

// S (rows x cols, raw q.k) -> P in place.
template <typename Acc>
void scores_to_probs(const ScoreTransform& t, std::int64_t i0, int rows, std::int64_t j0, int cols, Acc* S) {
  const bool mask = tile_needs_mask(t, i0, rows, j0, cols);
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
