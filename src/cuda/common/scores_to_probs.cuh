// The one score -> P step of every CUDA kernel (portable and Hopper, forward and backward):
// P = sigmoid(transform(S)) in place on an MMA accumulator fragment, with the shared
// ScoreTransform (scale, bias, ALiBi, causal / window / bounds masks).
#pragma once

#include <cstdint>

#include <cute/tensor.hpp>

#include "common/score_transform.hpp"
#include "cuda/common/sigmoid.cuh"

namespace flashsigmoid::cuda {

// tScS gives each register's (row, column) in the tile, relative to (i0, j0): rows are queries and
// columns keys, or, with kTransposed (the backward's S^T), rows are keys and columns queries.
// Blocks that are fully visible skip the per-element mask; ALiBi needs each element's (query, key),
// the plain path does not. Masked and past-the-end elements become exactly 0 (their V rows are
// zero-filled, so 0 * V stays finite).
// Element (the input dtype) picks the sigmoid's form (sigmoid.cuh). kTwice: 2P instead of P (the
// caller halves what it accumulates from it; sigmoid.cuh's twice_sigmoid_of_half_logit).
template <class Element, bool kTransposed = false, bool kTwice = false, class AccS, class CoordS>
__device__ __forceinline__ void scores_to_probs(AccS& acc_s, const CoordS& tScS, const detail::ScoreTransform& st,
                                                std::int64_t i0, std::int64_t j0, bool full_block) {
  using cute::get;
  // Each register's query and key (tile-relative), whichever way round the tile is.
  auto query = [&](int i) { return int(kTransposed ? get<1>(tScS(i)) : get<0>(tScS(i))); };
  auto key = [&](int i) { return int(kTransposed ? get<0>(tScS(i)) : get<1>(tScS(i))); };
  auto sigmoid = [](float half_s) {
    if constexpr (kTwice) {
      return twice_sigmoid_of_half_logit<Element>(half_s);
    } else {
      return sigmoid_of_half_logit<Element>(half_s);
    }
  };
  const detail::ScoreTransform::Tile tile = st.tile(i0, j0);
  if (full_block && tile.alibi_slope == 0.0f) {
    detail::ScoreTransform::Tile plain = tile;
    plain.alibi_slope = 0.0f;  // a compile-time-visible zero: logit() is one FMA here
    CUTE_UNROLL
    for (int i = 0; i < cute::size(acc_s); ++i) {
      acc_s(i) = sigmoid(plain.logit(acc_s(i), 0, 0));
    }
  } else {
    // Coordinates are taken relative to this thread's first register: each offset is then a
    // compile-time constant and the mask needs three scalars (Tile::Window), not one register per
    // element (which made the Hopper kernels spill).
    const int q0 = query(0);
    const int k0 = key(0);
    const detail::ScoreTransform::Tile::Window win = tile.window(q0, k0);
    if (tile.alibi_slope == 0.0f) {
      // A partial block without ALiBi (the causal diagonal, window edges, the last key block): every
      // element's sigmoid is computed and the masked ones are dropped by a select. Written as
      // "masked ? 0 : sigmoid(...)" it compiled to a branch and a reconvergence per element (about 15
      // instructions each, SASS), and a warp issues the MUFU op anyway when any of its lanes needs it.
      // S is finite everywhere (past-the-end K rows are zero-filled), so the dropped values are too.
      detail::ScoreTransform::Tile plain = tile;
      plain.alibi_slope = 0.0f;
      CUTE_UNROLL
      for (int i = 0; i < cute::size(acc_s); ++i) {
        const float p = sigmoid(plain.logit(acc_s(i), 0, 0));
        acc_s(i) = win.masked(query(i) - q0, key(i) - k0) ? 0.0f : p;
      }
    } else {
      // ALiBi (any block): its own sigmoid loop, then, on partial blocks, the masked ones dropped
      // (branch-free as well).
      CUTE_UNROLL
      for (int i = 0; i < cute::size(acc_s); ++i) {
        acc_s(i) = sigmoid(tile.logit(acc_s(i), query(i), key(i)));
      }
      if (!full_block) {
        CUTE_UNROLL
        for (int i = 0; i < cute::size(acc_s); ++i) {
          if (win.masked(query(i) - q0, key(i) - k0)) acc_s(i) = 0.0f;
        }
      }
    }
  }
}

}  // namespace flashsigmoid::cuda
