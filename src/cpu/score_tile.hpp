// The score step of the CPU backend, shared by forward and backward: turns a tile of
// raw dot products S[i][j] into P = sigmoid(logit) (and, for the backward, dS), using
// the one ScoreTransform. Masked entries become exactly 0.
#pragma once

#include "common/score_transform.hpp"
#include "cpu/tile_ops.hpp"

namespace flashsigmoid::detail::cpu {
inline namespace FLASHSIGMOID_CPU_LEVEL {

// Sets the masked elements (and keys past the sequence end) of a tile to exactly 0, by a select:
// whatever they held (a NaN from a non-finite row included) is dropped. Layout as scores_to_probs.
template <bool kKeyMajor = false, typename Acc>
void zero_masked(const ScoreTransform& t, std::int64_t i0, int rows, std::int64_t j0, int cols, Acc* S) {
  const int outer = kKeyMajor ? cols : rows, inner = kKeyMajor ? rows : cols;
  for (int a = 0; a < outer; ++a) {
    Acc* s = S + a * inner;
    for (int e = 0; e < inner; ++e) {
      const std::int64_t i = i0 + (kKeyMajor ? e : a), j = j0 + (kKeyMajor ? a : e);
      if (j >= t.len_k || t.masked(i, j)) s[e] = Acc(0);
    }
  }
}

// A tile of raw q.k for query rows [i0, i0 + rows) and key columns [j0, j0 + cols) -> P, in
// place. Stored S[r][c], or with kKeyMajor S[c][r] (P^T, what the forward's K Q^T GEMM makes);
// the inner loop always runs over contiguous memory so it vectorises.
template <bool kKeyMajor = false, typename Acc>
void scores_to_probs(const ScoreTransform& t, std::int64_t i0, int rows, std::int64_t j0, int cols, Acc* S) {
  const int outer = kKeyMajor ? cols : rows, inner = kKeyMajor ? rows : cols;
  if (t.alibi_slope == 0.0f) {
    // Without ALiBi the logit is scale * dot + bias: no per-element 64-bit distance to convert.
    const Acc scale = static_cast<Acc>(t.scale), bias = static_cast<Acc>(t.bias);
    sigmoid_affine(S, outer * inner, scale, bias);
  } else {
    for (int a = 0; a < outer; ++a) {
      Acc* s = S + a * inner;
      for (int e = 0; e < inner; ++e) {
        const std::int64_t i = i0 + (kKeyMajor ? e : a), j = j0 + (kKeyMajor ? a : e);
        s[e] = sigmoid(t.logit(s[e], i, j));
      }
    }
  }
  if (!t.block_unmasked(i0, i0 + rows, j0, j0 + cols)) zero_masked<kKeyMajor>(t, i0, rows, j0, cols, S);
}

// The visible part of a partially masked tile, one interval per row of a GEMM's output (masks are
// bands), tile-relative, for gemm_acc_rows. Query rows i0 + r see key columns [lo[r], hi[r]).
inline void visible_keys(const ScoreTransform& t, std::int64_t i0, int rows, std::int64_t j0, int cols, int* lo,
                         int* hi) {
  auto clip = [&](std::int64_t j) { return static_cast<int>(std::clamp<std::int64_t>(j - j0, 0, cols)); };
  for (int r = 0; r < rows; ++r) {
    lo[r] = clip(t.key_begin(i0 + r));
    hi[r] = clip(t.key_end(i0 + r + 1));
  }
}
// Key columns j0 + c are seen by query rows [lo[c], hi[c]) (none past len_q or for keys past len_k).
inline void visible_queries(const ScoreTransform& t, std::int64_t j0, int cols, std::int64_t i0, int rows,
                            std::int64_t len_q, int* lo, int* hi) {
  auto clip = [&](std::int64_t i) { return static_cast<int>(std::clamp<std::int64_t>(i - i0, 0, rows)); };
  for (int c = 0; c < cols; ++c) {
    const std::int64_t j = j0 + c;
    const bool key = j < t.len_k;
    lo[c] = key ? clip(t.query_begin(j)) : 0;
    hi[c] = key ? clip(t.query_end(j + 1, len_q)) : 0;
  }
}

}  // namespace FLASHSIGMOID_CPU_LEVEL
}  // namespace flashsigmoid::detail::cpu
