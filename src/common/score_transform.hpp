// The one place that knows how a raw score q.k becomes a sigmoid input:
// scale, bias, ALiBi and the causal / sliding-window masks. Shared by the CPU
// and CUDA backends (host + device), so every kernel applies the same rules.
#pragma once

#include <cmath>
#include <cstdint>

#include "common/params.hpp"  // also FS_HD

namespace flashsigmoid::detail {

// Lengths of sequence b: dense problems use the global lengths, varlen ones read cu_seqlens.
struct SeqInfo {
  std::int64_t q_begin = 0;  // first row of this sequence in the packed layout (0 when dense)
  std::int64_t k_begin = 0;
  std::int64_t len_q = 0;
  std::int64_t len_k = 0;
};

FS_HD SeqInfo seq_info(const AttnParams& p, std::int64_t b) {
  SeqInfo s;
  if (p.cu_seqlens_q != nullptr) {
    s.q_begin = p.cu_seqlens_q[b];
    s.k_begin = p.cu_seqlens_k[b];
    s.len_q = p.cu_seqlens_q[b + 1] - s.q_begin;
    s.len_k = p.cu_seqlens_k[b + 1] - s.k_begin;
  } else {
    s.len_q = p.seqlen_q;
    s.len_k = p.seqlen_k;
  }
  return s;
}

// Per (sequence, head) score transform. Query row i sees key column j iff
// !masked(i, j); its logit is scale * dot + bias - slope * |i + Nk - Nq - j|.
struct ScoreTransform {
  float scale = 1.0f;
  float bias = 0.0f;
  float alibi_slope = 0.0f;  // 0 = no ALiBi
  std::int64_t diag = 0;     // query i is aligned with key i + diag: Nk - Nq (bottom-right) or q - k offsets
  std::int64_t left = -1;    // keys j >= i + diag - left are visible (-1 = unbounded)
  std::int64_t right = -1;   // keys j <= i + diag + right are visible (-1 = unbounded)
  std::int64_t len_k = 0;

  FS_HD bool masked(std::int64_t i, std::int64_t j) const {
    const std::int64_t d = j - (i + diag);
    return (right >= 0 && d > right) || (left >= 0 && -d > left);
  }

  // T is float in the kernels; double in the CPU backend's float64 path. Branch-free
  // (slope 0 when ALiBi is off) so element loops vectorise.
  template <typename T>
  FS_HD T logit(T dot, std::int64_t i, std::int64_t j) const {
    const std::int64_t d = i + diag - j;
    return T(scale) * dot + T(bias) - T(alibi_slope) * static_cast<T>(d < 0 ? -d : d);
  }

  // Visible key columns of query rows [i0, i1): the half-open range [begin, end),
  // clamped to [0, len_k). Blocks outside it are fully masked and are skipped.
  FS_HD std::int64_t key_begin(std::int64_t i0) const {
    if (left < 0) return 0;
    const std::int64_t b = i0 + diag - left;
    return b < 0 ? 0 : b;
  }
  FS_HD std::int64_t key_end(std::int64_t i1) const {
    if (right < 0) return len_k;
    const std::int64_t e = (i1 - 1) + diag + right + 1;
    return e < 0 ? 0 : (e > len_k ? len_k : e);
  }
  // True when every (i, j) with i in [i0, i1), j in [j0, j1) is visible and j1 <= len_k: such a
  // block needs no per-element mask (kernels apply masked() only to the other, partial blocks).
  FS_HD bool block_unmasked(std::int64_t i0, std::int64_t i1, std::int64_t j0, std::int64_t j1) const {
    if (j1 > len_k) return false;
    if (right >= 0 && (j1 - 1) - (i0 + diag) > right) return false;
    if (left >= 0 && (i1 - 1 + diag) - j0 > left) return false;
    return true;
  }
  // One tile of scores whose element (0, 0) is (i0, j0), in 32-bit tile-local coordinates
  // (r, c) = (i - i0, j - j0): the same rules as masked() / logit() plus the sequence end
  // (c >= cols), cheap enough to evaluate per register in a kernel. Exact while |i - j| and the
  // window bounds stay below 2^29 (longer distances are clamped, still masked / unmasked alike).
  struct Tile {
    float scale, bias, alibi_slope;
    int off;          // j0 - i0 - diag, clamped: (c - r) + off == j - (i + diag)
    int left, right;  // window bounds, clamped; -1 = unbounded
    int cols;         // len_k - j0, clamped: columns c >= cols are past the sequence end
    FS_HD bool masked(int r, int c) const {
      const int d = c - r + off;
      return c >= cols || (right >= 0 && d > right) || (left >= 0 && -d > left);
    }
    // The same mask seen from element (r0, c0): Window::masked(dr, dc) == masked(r0 + dr, c0 + dc).
    // Three per-thread scalars; a kernel whose (dr, dc) are compile-time offsets from its first
    // register then needs no per-element coordinate registers (the Hopper forward's partial blocks).
    struct Window {
      int lo;        // row r0 + dr sees columns c0 + dc with dc >= lo + dr ...
      int end_diag;  // ... and dc < end_diag + dr ...
      int end_cols;  // ... and dc < end_cols (the sequence end)
      FS_HD bool masked(int dr, int dc) const { return dc < lo + dr || dc >= end_diag + dr || dc >= end_cols; }
    };
    FS_HD Window window(int r0, int c0) const {
      constexpr int kFar = 1 << 30;  // beyond any tile-local column: the bound is off
      Window w;
      w.lo = left < 0 ? -kFar : r0 - off - left - c0;
      w.end_diag = right < 0 ? kFar : r0 - off + right + 1 - c0;
      w.end_cols = cols - c0;
      return w;
    }
    FS_HD float logit(float dot, int r, int c) const {
      float s = scale * dot + bias;
      if (alibi_slope != 0.0f) {
        const int d = c - r + off;
        s -= alibi_slope * static_cast<float>(d < 0 ? -d : d);
      }
      return s;
    }
  };
  FS_HD Tile tile(std::int64_t i0, std::int64_t j0) const {
    constexpr std::int64_t kBig = std::int64_t(1) << 30;
    auto clamp = [](std::int64_t x, std::int64_t lo, std::int64_t hi) { return x < lo ? lo : (x > hi ? hi : x); };
    Tile t;
    t.scale = scale;
    t.bias = bias;
    t.alibi_slope = alibi_slope;
    t.off = static_cast<int>(clamp(j0 - i0 - diag, -kBig, kBig));
    t.left = static_cast<int>(left < 0 ? -1 : clamp(left, 0, kBig / 2));
    t.right = static_cast<int>(right < 0 ? -1 : clamp(right, 0, kBig / 2));
    t.cols = static_cast<int>(clamp(len_k - j0, -kBig, kBig));
    return t;
  }
  // The same transform with logit() multiplied by c (exact for powers of two): the CUDA kernels
  // use c = 0.5 so that sigmoid(s) = 0.5 + 0.5 * tanh(logit) costs one FMA less per element.
  FS_HD ScoreTransform scaled_by(float c) const {
    ScoreTransform t = *this;
    t.scale *= c;
    t.bias *= c;
    t.alibi_slope *= c;
    return t;
  }
  // Query rows that can see key columns [j0, j1): used by the backward's key-block loop.
  FS_HD std::int64_t query_begin(std::int64_t j0) const {
    if (right < 0) return 0;
    const std::int64_t b = j0 - diag - right;
    return b < 0 ? 0 : b;
  }
  FS_HD std::int64_t query_end(std::int64_t j1, std::int64_t len_q) const {
    if (left < 0) return len_q;
    const std::int64_t e = (j1 - 1) - diag + left + 1;
    return e < 0 ? 0 : (e > len_q ? len_q : e);
  }
  // In blocks of bm queries and bn keys, as the backward walks them: the query blocks
  // [m_begin, m_begin + m_count) that see some key of [j0, j1) (j1 <= len_k), and the last key
  // block that query rows [i0, i1) see (when they see any). The key blocks that see a query block
  // are a contiguous range ending there (the masks are bands), which the Hopper backward's
  // deterministic mode relies on (score_transform_test.cpp checks both against element-wise visibility).
  FS_HD void query_blocks(std::int64_t j0, std::int64_t j1, std::int64_t len_q, int bm, std::int64_t& m_begin,
                          std::int64_t& m_count) const {
    const std::int64_t q_lo = query_begin(j0);
    const std::int64_t q_hi = query_end(j1, len_q);
    m_begin = q_lo / bm;
    m_count = q_hi > q_lo ? (q_hi + bm - 1) / bm - m_begin : 0;
  }
  FS_HD std::int64_t last_key_block(std::int64_t i1, int bn) const { return (key_end(i1) - 1) / bn; }
  // The key blocks [n_begin, n_begin + n_count) of bn keys that query rows [i0, i1) see some key of,
  // as the forward and the backward's dQ loop walk them (block indices fit an int: the launchers
  // check the grid limits).
  FS_HD void key_blocks(std::int64_t i0, std::int64_t i1, int bn, int& n_begin, int& n_count) const {
    const std::int64_t k_lo = key_begin(i0);
    const std::int64_t k_hi = key_end(i1);
    n_begin = static_cast<int>(k_lo / bn);
    n_count = k_hi > k_lo ? static_cast<int>((k_hi + bn - 1) / bn) - n_begin : 0;
  }
};

FS_HD ScoreTransform make_score_transform(const AttnParams& p, const SeqInfo& s, std::int64_t b,
                                          std::int64_t h) {
  ScoreTransform t;
  t.scale = p.scale;
  switch (p.bias_mode) {
    case BiasMode::neg_log_seqlen_k:
      // A length-0 key sequence has no scores at all; keep the bias finite anyway.
      t.bias = s.len_k > 0 ? -logf(static_cast<float>(s.len_k)) : 0.0f;
      break;
    case BiasMode::scalar:
      t.bias = p.bias_value;
      break;
    case BiasMode::per_head:
      t.bias = p.bias[h];
      break;
  }
  if (p.alibi_slopes != nullptr) t.alibi_slope = p.alibi_slopes[b * p.alibi_batch_stride + h];
  // Every mask, ALiBi distance and block range below follows from diag alone, so the global
  // positions of a context-parallel block need nothing else in any kernel.
  t.diag = p.global_positions ? p.position_diag : s.len_k - s.len_q;
  t.left = p.window_left;
  // Causal is the window (left, 0); any right bound >= 0 is looser than causal's.
  t.right = p.causal ? 0 : p.window_right;
  t.len_k = s.len_k;
  return t;
}

}  // namespace flashsigmoid::detail
