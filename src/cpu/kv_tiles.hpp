// The tile kernels of the CPU KV-cache attention (kvcache.cpp walks the tiles): a tile of up to
// kBlockK cache rows, read in place through row pointers, against the few query rows of a task:
// the scores S = Q K^T, P.V, and the prefetcher that asks for the next tile's rows while they run.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

// AVX512-BF16 (vdpbf16ps): a portable build's unit for a level with it says so with
// FLASHSIGMOID_CPU_AVX512BF16 (`#pragma GCC target` defines no ISA macros); a -march=native build
// has the compiler's macro.
#if defined(FLASHSIGMOID_CPU_AVX512BF16) || (!defined(FLASHSIGMOID_CPU_MULTI_LEVEL) && defined(__AVX512BF16__))
#define FLASHSIGMOID_KVCACHE_BF16_DOT 1
#endif
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "common/score_transform.hpp"
#include "cpu/bf16_gemm.hpp"
#include "cpu/tile_ops.hpp"

namespace flashsigmoid::detail::cpu {
inline namespace FLASHSIGMOID_CPU_LEVEL {
// Internal linkage (kvcache.cpp is the one includer): GCC then inlines the kernels into the tile
// loop, where the prefetcher's state stays in registers (out of line: ~10 % slower, measured).
namespace {

// Asks for the next tile's K and V rows (all heads of the task) into L2 while the current tile is
// computed, a few cache lines at a time from inside the compute loops. Cache rows of one sequence
// are a row of all heads apart, often in another page: the hardware prefetchers do not follow
// reads of one head per row. Requests issued in a burst fill the core's miss queue and stall it
// until memory answers; a trickle keeps about as many requests in flight while the arithmetic goes
// on. Lines are taken in address order within a row (one stream per page), K and V alternating.
template <typename T>
class TilePrefetcher {
 public:
  TilePrefetcher(const T* const* k_rows, std::int64_t k_head, const T* const* v_rows, std::int64_t v_head, int rows,
                 int heads, int dim)
      : k_(k_rows), v_(v_rows), k_head_(k_head), v_head_(v_head), rows_(rows), heads_(heads),
        lines_(dim * static_cast<int>(sizeof(T)) / 64) {}
  // Issues up to n lines of K and n of V.
  void step(int n) {
    for (; n > 0 && r_ < rows_; --n) {
      const std::int64_t elem = l_ * (64 / static_cast<int>(sizeof(T)));
      __builtin_prefetch(k_[r_] + h_ * k_head_ + elem, 0, 2);
      __builtin_prefetch(v_[r_] + h_ * v_head_ + elem, 0, 2);
      if (++l_ == lines_) {
        l_ = 0;
        if (++h_ == heads_) h_ = 0, ++r_;
      }
    }
  }
  void finish() { step(rows_ * heads_ * lines_); }

 private:
  const T* const* k_;
  const T* const* v_;
  std::int64_t k_head_, v_head_;
  int rows_, heads_, lines_;
  int r_ = 0, h_ = 0, l_ = 0;
};
// Lines of K (and of V) per prefetch step: steps come once per group of keys and query row in
// scores() and once per key or pair of keys in P.V.
constexpr int kPrefetchLines = 4;

// bf16 lanes of one float vector, and their widened 32-bit form.
using Bf16Lanes [[gnu::vector_size(Vec<float>::width * 2)]] = std::uint16_t;
using Bf16Wide [[gnu::vector_size(Vec<float>::width * 4)]] = std::uint32_t;

// One SIMD vector of Acc from `width` consecutive elements of type T.
template <typename T, typename Acc>
typename Vec<Acc>::type load_vec(const T* p) {
  using V = Vec<Acc>;
  if constexpr (std::is_same_v<T, Acc>) {
    return V::load(p);
  } else if constexpr (std::is_same_v<T, bfloat16_t> && std::is_same_v<Acc, float>) {
    // bf16 is the top half of a float: widen and shift, all in vector registers.
#if defined(__x86_64__)
    if constexpr (kVectorBytes == 64) {  // one vpmovzxwd (the generic form below splits it in halves)
      const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
      return (typename V::type)_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16);
    }
#endif
    Bf16Lanes h;
    __builtin_memcpy(&h, p, sizeof h);
    const Bf16Wide w = __builtin_convertvector(h, Bf16Wide) << 16;
    typename V::type f;
    __builtin_memcpy(&f, &w, sizeof f);
    return f;
  } else {
    Acc tmp[V::width];
    for (int l = 0; l < V::width; ++l) tmp[l] = load_as<Acc>(p[l]);
    return V::load(tmp);
  }
}

// Lane sums of W vectors at once, by folding pairs: folding x and y, whose lanes hold blocks of
// S lanes that each belong to one key, gives one vector of blocks of S / 2 lanes (x's keys first),
// each the sum of the two halves of its block (two shuffles and an add). log2(W) levels turn W vectors into one whose lane l is the sum of
// the lanes of vector l: about 3 instructions per sum instead of a log2(W)-step reduction each.
constexpr int fold_index(int r, int W, int S, bool upper) {
  const int half = S / 2, blocks = W / S, kb = r / half;
  const int base = kb < blocks ? kb * S : W + (kb - blocks) * S;
  return base + r % half + (upper ? half : 0);
}
template <int W, int S, bool kUpper, typename VT, int... R>
VT fold_pick(VT x, VT y, std::integer_sequence<int, R...>) {
  return __builtin_shufflevector(x, y, fold_index(R, W, S, kUpper)...);
}
// One level: x[i] = the fold of x[2i] and x[2i + 1], for i < pairs.
template <int W, int S, typename VT>
[[gnu::always_inline]] inline void fold_pairs(VT* x, int pairs) {
  constexpr auto lanes = std::make_integer_sequence<int, W>{};
  for (int i = 0; i < pairs; ++i) {
    x[i] = fold_pick<W, S, false>(x[2 * i], x[2 * i + 1], lanes) + fold_pick<W, S, true>(x[2 * i], x[2 * i + 1], lanes);
  }
}
template <int W, int S, typename VT>
VT lane_sums(VT* x) {  // x[0 .. S): S vectors of W / S keys each; clobbers x
  fold_pairs<W, S>(x, S / 2);
  if constexpr (S == 2) {
    return x[0];
  } else {
    return lane_sums<W, S / 2>(x);
  }
}
// lane_sums<16, 16>'s levels for keys 0-7 (or 8-15) alone: 8 single-key vectors into one vector of
// those keys, two lanes each; the last level (S = 2) of two such vectors gives lane_sums' result.
template <typename VT>
[[gnu::always_inline]] inline VT fold_eight(VT* x) {
  fold_pairs<16, 16>(x, 4);
  fold_pairs<16, 8>(x, 2);
  fold_pairs<16, 4>(x, 1);
  return x[0];
}

// Scores of two query rows (q, q + D) against W keys: the rows share each key load, four keys at a
// time; each group of four is folded to one vector at once (lane_sums' first two levels) and the
// W / 4 of them finish the sums in lane_sums' order, so the result is the single-row path's bits.
// Where both rows' query vectors fit the registers next to eight accumulators (AVX-512 up to D 128)
// they are loaded once; otherwise (AVX2's 16 registers, D 256) the head dim is the outer loop, one
// chunk of each row against four keys (the same per-key sums, in the same order).
template <int D, typename Acc>
[[gnu::always_inline]] inline void score_pair(const Acc* __restrict q, const Acc* const* rows,
                                              typename Vec<Acc>::type& s0, typename Vec<Acc>::type& s1) {
  using V = Vec<Acc>;
  constexpr int W = V::width, C = D / W;
  constexpr bool kQueryInRegisters = 2 * C + 10 <= (kVectorBytes == 64 ? 32 : 16);
  typename V::type q0[kQueryInRegisters ? C : 1], q1[kQueryInRegisters ? C : 1], part0[W / 4], part1[W / 4];
  if constexpr (kQueryInRegisters) {
    for (int c = 0; c < C; ++c) {
      q0[c] = V::load(q + c * W);
      q1[c] = V::load(q + D + c * W);
    }
  }
  for (int g = 0; g < W / 4; ++g) {
    typename V::type a0[4], a1[4];
    if constexpr (kQueryInRegisters) {
#pragma GCC unroll 4
      for (int jj = 0; jj < 4; ++jj) {
        typename V::type x0{}, x1{};
        for (int c = 0; c < C; ++c) {
          const typename V::type kv = V::load(rows[g * 4 + jj] + c * W);
          x0 += q0[c] * kv;
          x1 += q1[c] * kv;
        }
        a0[jj] = x0;
        a1[jj] = x1;
      }
    } else {
      for (int jj = 0; jj < 4; ++jj) a0[jj] = a1[jj] = typename V::type{};
      for (int c = 0; c < C; ++c) {
        const typename V::type x = V::load(q + c * W), y = V::load(q + D + c * W);
#pragma GCC unroll 4
        for (int jj = 0; jj < 4; ++jj) {
          const typename V::type kv = V::load(rows[g * 4 + jj] + c * W);
          a0[jj] += x * kv;
          a1[jj] += y * kv;
        }
      }
    }
    fold_pairs<W, W>(a0, 2);
    fold_pairs<W, W / 2>(a0, 1);
    fold_pairs<W, W>(a1, 2);
    fold_pairs<W, W / 2>(a1, 1);
    part0[g] = a0[0];
    part1[g] = a1[0];
  }
  s0 = lane_sums<W, W / 4>(part0);
  s1 = lane_sums<W, W / 4>(part1);
}

// S[m][j] = Q[m] . K[j] for m < M, j < valid; key row j of the head is k[j] + off. Decode has a few
// query rows per kv head, too few for a GEMM tile: W keys at a time (W = SIMD lanes), each query row
// in registers is dotted with each key row along the head dim into its own vector, and lane_sums
// turns the W vectors into W scores. Keys stored in another type than Acc are converted once per
// group of W into a small buffer that stays in L1.
template <int D, typename T, typename Acc, typename Pf>
void scores(const Acc* __restrict Q, int M, const T* const* k, std::int64_t off, int valid, Acc* __restrict S,
            Pf& pf) {
  using V = Vec<Acc>;
  constexpr int W = V::width, C = D / W;
  constexpr bool kConvert = !std::is_same_v<T, Acc>;
  static_assert(D % W == 0, "head dims are multiples of the SIMD width");
  alignas(64) Acc converted[kConvert ? W * D : 1];
  constexpr bool kPairRows = W >= 8;  // score_pair folds four keys at a time
  for (int j0 = 0; j0 < valid; j0 += W) {
    const int n = std::min(W, valid - j0);
    auto store = [&](int m, const typename V::type& s) {
      if (n == W) {
        V::store(S + m * kBlockK + j0, s);
      } else {
        for (int jj = 0; jj < n; ++jj) S[m * kBlockK + j0 + jj] = s[jj];
      }
    };
    const Acc* rows[W];  // past n: the last key again (its sums are not stored)
    for (int jj = 0; jj < W; ++jj) {
      const T* row = k[j0 + std::min(jj, n - 1)] + off;
      if constexpr (kConvert) {
        for (int c = 0; c < C; ++c) V::store(converted + jj * D + c * W, load_vec<T, Acc>(row + c * W));
        rows[jj] = converted + jj * D;
      } else {
        rows[jj] = row;
      }
    }
    int m = 0;
    if constexpr (kPairRows) {
      for (; m + 1 < M; m += 2) {
        pf.step(2 * kPrefetchLines);
        typename V::type s0, s1;
        score_pair<D>(Q + m * D, rows, s0, s1);
        store(m, s0);
        store(m + 1, s1);
      }
    }
    for (; m < M; ++m) {
      pf.step(kPrefetchLines);
      typename V::type q[C], acc[W];
      for (int c = 0; c < C; ++c) q[c] = V::load(Q + m * D + c * W);
#pragma GCC unroll 16
      for (int jj = 0; jj < W; ++jj) {
        typename V::type a{};
        for (int c = 0; c < C; ++c) a += q[c] * V::load(rows[jj] + c * W);
        acc[jj] = a;
      }
      store(m, lane_sums<W, W>(acc));
    }
  }
}

#if defined(FLASHSIGMOID_KVCACHE_BF16_DOT)
// Many query rows per kv head (append / speculative verification: Nq_new · G a multiple of 8, at
// least kPackedScoreRows): the tile's keys are packed once as bf16 pairs (the forward's B operand) and
// the scores are the 8 x 32 vdpbf16ps GEMM, whose work per key grows with the rows by 2 instructions
// per row against scores_bf16's ~11 (4 key loads, 4 vdpbf16ps, lane sums); the packing is a fixed cost
// per tile, so it pays from 64 rows on (measured: bench/NOTES.md). Not in AMX units: their gemm_bf16
// is the tile GEMM, which wants 32-row blocks.
#if !defined(FLASHSIGMOID_CPU_AMX)
constexpr int kPackedScoreRows = 64;
template <int D, typename Pf>
void scores_bf16_packed(const bfloat16_t* __restrict Q, int M, const bfloat16_t* const* k, std::int64_t off,
                        int valid, float* __restrict S, Pf& pf) {
  alignas(64) bf16_bits kp[kBlockK * D];
  pack_kt_pairs([&](int c) { return c < valid ? k[c] + off : nullptr; }, kBlockK, D, kp);
  const auto* q = reinterpret_cast<const bf16_bits*>(Q);
  for (int m0 = 0; m0 < M; m0 += 8) {  // 8 rows at a time, with scores_bf16's prefetch trickle for them
    pf.step(8 * (kBlockK / 16) * kPrefetchLines);
    gemm_bf16(q + m0 * D, D, kp, kBlockK, S + m0 * kBlockK, kBlockK, 8, kBlockK, D, /*accumulate=*/false);
  }
}
#endif

// scores() for bf16 caches and queries on CPUs with AVX512-BF16: vdpbf16ps multiplies pairs of bf16
// (exactly, in fp32) and adds them into fp32 lanes, so the key rows are used as stored, 32 elements
// per instruction.
constexpr bool kBf16Dot = true;
template <int D, typename Pf>
void scores_bf16(const bfloat16_t* __restrict Q, int M, const bfloat16_t* const* k, std::int64_t off, int valid,
                 float* __restrict S, Pf& pf) {
#if !defined(FLASHSIGMOID_CPU_AMX)
  if (M % 8 == 0 && M >= kPackedScoreRows) return scores_bf16_packed<D>(Q, M, k, off, valid, S, pf);
#endif
  constexpr int C = D / 32, W = 16;  // 32 bf16 per 512-bit register, 16 fp32 lanes
  static_assert(D % 32 == 0, "head dims are multiples of 32");
  using F = Vec<float>::type;
  static_assert(sizeof(F) == sizeof(__m512), "AVX512-BF16 units use 64-byte vectors");
  auto store = [&](int m, int j0, int n, const F& s) {
    if (n == W) {
      Vec<float>::store(S + m * kBlockK + j0, s);
    } else {
      for (int jj = 0; jj < n; ++jj) S[m * kBlockK + j0 + jj] = s[jj];
    }
  };
  // Two query rows share each key load (up to D 128: 8 query and 16 accumulator registers), eight keys
  // at a time; the sums fold in lane_sums' order, so the scores are the single-row path's bits.
  constexpr bool kPairs = C <= 4;
  for (int j0 = 0; j0 < valid; j0 += W) {
    const int n = std::min(W, valid - j0);
    const bfloat16_t* rows[W];
    for (int jj = 0; jj < W; ++jj) rows[jj] = k[j0 + std::min(jj, n - 1)] + off;
    int m = 0;
    if constexpr (kPairs) {
      for (; m + 1 < M; m += 2) {
        pf.step(2 * kPrefetchLines);
        __m512i q0[C], q1[C];
        for (int c = 0; c < C; ++c) {
          q0[c] = _mm512_loadu_si512(Q + m * D + c * 32);
          q1[c] = _mm512_loadu_si512(Q + (m + 1) * D + c * 32);
        }
        F half[2][2];  // [row][keys 0-7, 8-15]: two lanes per key
        for (int h = 0; h < 2; ++h) {
          F a0[8], a1[8];
#pragma GCC unroll 8
          for (int jj = 0; jj < 8; ++jj) {
            __m512 x0 = _mm512_setzero_ps(), x1 = _mm512_setzero_ps();
            for (int c = 0; c < C; ++c) {
              const __m512bh kv = (__m512bh)_mm512_loadu_si512(rows[h * 8 + jj] + c * 32);
              x0 = _mm512_dpbf16_ps(x0, (__m512bh)q0[c], kv);
              x1 = _mm512_dpbf16_ps(x1, (__m512bh)q1[c], kv);
            }
            a0[jj] = (F)x0;
            a1[jj] = (F)x1;
          }
          half[0][h] = fold_eight(a0);
          half[1][h] = fold_eight(a1);
        }
        for (int r = 0; r < 2; ++r) {
          fold_pairs<W, 2>(half[r], 1);
          store(m + r, j0, n, half[r][0]);
        }
      }
    }
    for (; m < M; ++m) {
      pf.step(kPrefetchLines);
      __m512i q[C];
      for (int c = 0; c < C; ++c) q[c] = _mm512_loadu_si512(Q + m * D + c * 32);
      F acc[W];
#pragma GCC unroll 16
      for (int jj = 0; jj < W; ++jj) {
        __m512 a = _mm512_setzero_ps();
        for (int c = 0; c < C; ++c) {
          a = _mm512_dpbf16_ps(a, (__m512bh)q[c], (__m512bh)_mm512_loadu_si512(rows[jj] + c * 32));
        }
        acc[jj] = (F)a;
      }
      store(m, j0, n, lane_sums<W, W>(acc));
    }
  }
}
#else
constexpr bool kBf16Dot = false;
#endif

// O[m0 .. m0 + MR) += P[m][j] V[j] over j < valid (value row j of the head: v[j] + off): MR rows x
// CV vectors of O stay in registers while the V rows stream by.
template <int D, int MR, typename T, typename Acc, typename Pf>
void pv_rows(const Acc* __restrict P, int m0, const T* const* v, std::int64_t off, int valid, Acc* __restrict O,
             Pf& pf) {
  using V = Vec<Acc>;
  constexpr int W = V::width, C = D / W, CV = C % 4 == 0 ? 4 : 2;
  for (int c0 = 0; c0 < C; c0 += CV) {
    typename V::type acc[MR][CV];
    for (int r = 0; r < MR; ++r)
      for (int e = 0; e < CV; ++e) acc[r][e] = V::load(O + (m0 + r) * D + (c0 + e) * W);
    for (int j = 0; j < valid; ++j) {
      pf.step(kPrefetchLines);
      typename V::type vv[CV];
      for (int e = 0; e < CV; ++e) vv[e] = load_vec<T, Acc>(v[j] + off + (c0 + e) * W);
      for (int r = 0; r < MR; ++r) {
        const Acc pj = P[(m0 + r) * kBlockK + j];
        for (int e = 0; e < CV; ++e) acc[r][e] += pj * vv[e];
      }
    }
    for (int r = 0; r < MR; ++r)
      for (int e = 0; e < CV; ++e) V::store(O + (m0 + r) * D + (c0 + e) * W, acc[r][e]);
  }
}

template <int D, typename T, typename Acc, typename Pf>
void pv(const Acc* P, int M, const T* const* v, std::int64_t off, int valid, Acc* O, Pf& pf) {
  for_row_groups<4>(M, [&]<int R>(int m0) { pv_rows<D, R>(P, m0, v, off, valid, O, pf); });
}

#if defined(FLASHSIGMOID_KVCACHE_BF16_DOT)
// pv() for bf16 values on CPUs with AVX512-BF16. P is rounded to bf16 (as a plain bf16 matmul
// rounds its operands) and taken in pairs of keys: vpunpck{l,h}wd interleave value rows j and j + 1,
// and vdpbf16ps adds P[j] V[j][d] + P[j+1] V[j+1][d] into an fp32 lane, half the instructions of
// widening and FMAs. The interleaved lanes hold the head dim in a fixed order (lo: d mod 8 < 4,
// hi: the rest, per 32-element chunk); O is shuffled into it at the start and back at the end.
// All keys below `valid` are visible (masked tiles take pv_visible).
template <int D, int MR, typename Pf>
void pv_bf16_rows(const std::uint32_t* __restrict Pp, int m0, const bfloat16_t* const* v, std::int64_t off,
                  int valid, float* __restrict O, Pf& pf) {
  using F = Vec<float>::type;
  constexpr int C = D / 32, CV = C % 2 == 0 ? 2 : 1;
  alignas(64) static const bfloat16_t zero_row[D] = {};
  for (int c0 = 0; c0 < C; c0 += CV) {
    F acc[MR][CV][2];
    for (int r = 0; r < MR; ++r)
      for (int e = 0; e < CV; ++e) {
        const float* o = O + (m0 + r) * D + (c0 + e) * 32;
        const F x = Vec<float>::load(o), y = Vec<float>::load(o + 16);
        acc[r][e][0] = __builtin_shufflevector(x, y, 0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27);
        acc[r][e][1] = __builtin_shufflevector(x, y, 4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31);
      }
    for (int j = 0; j < valid; j += 2) {
      pf.step(kPrefetchLines);
      const bfloat16_t* r0 = v[j] + off;
      const bfloat16_t* r1 = j + 1 < valid ? v[j + 1] + off : zero_row;
      __m512i w[CV][2];
      for (int e = 0; e < CV; ++e) {
        const __m512i x = _mm512_loadu_si512(r0 + (c0 + e) * 32), y = _mm512_loadu_si512(r1 + (c0 + e) * 32);
        w[e][0] = _mm512_unpacklo_epi16(x, y);
        w[e][1] = _mm512_unpackhi_epi16(x, y);
      }
      for (int r = 0; r < MR; ++r) {
        const __m512bh pj = (__m512bh)_mm512_set1_epi32(static_cast<int>(Pp[(m0 + r) * (kBlockK / 2) + j / 2]));
        for (int e = 0; e < CV; ++e)
          for (int h = 0; h < 2; ++h) acc[r][e][h] = (F)_mm512_dpbf16_ps((__m512)acc[r][e][h], pj, (__m512bh)w[e][h]);
      }
    }
    for (int r = 0; r < MR; ++r)
      for (int e = 0; e < CV; ++e) {
        float* o = O + (m0 + r) * D + (c0 + e) * 32;
        const F lo = acc[r][e][0], hi = acc[r][e][1];
        Vec<float>::store(o, __builtin_shufflevector(lo, hi, 0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23));
        Vec<float>::store(o + 16,
                          __builtin_shufflevector(lo, hi, 8, 9, 10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31));
      }
  }
}

template <int D, typename Pf>
void pv_bf16(const float* P, int M, const bfloat16_t* const* v, std::int64_t off, int valid, float* O, Pf& pf) {
  constexpr int kRows = 16;  // P rows converted at a time
  static_assert(kBlockK % 32 == 0, "tiles are whole vectors of bf16 pairs");
  auto mask = [](int n) { return static_cast<__mmask16>(n >= 16 ? 0xffff : n <= 0 ? 0 : (1u << n) - 1); };
  for (int mb = 0; mb < M; mb += kRows) {
    const int rows = std::min(kRows, M - mb);
    // P as bf16 pairs (keys 2i, 2i + 1 in one 32-bit word, 2i low); keys from `valid` on count 0.
    alignas(64) std::uint32_t Pp[kRows * (kBlockK / 2)];
    for (int r = 0; r < rows; ++r)
      for (int j = 0; j < kBlockK; j += 32) {
        const __m512 a = _mm512_maskz_loadu_ps(mask(valid - j), P + (mb + r) * kBlockK + j);
        const __m512 b = _mm512_maskz_loadu_ps(mask(valid - j - 16), P + (mb + r) * kBlockK + j + 16);
        _mm512_storeu_si512(Pp + r * (kBlockK / 2) + j / 2, (__m512i)_mm512_cvtne2ps_pbh(b, a));
      }
    float* Ob = O + mb * D;
    for_row_groups<4>(rows, [&]<int R>(int m0) { pv_bf16_rows<D, R>(Pp, m0, v, off, valid, Ob, pf); });
  }
}
#endif

// pv() for a tile with masked keys, which are skipped rather than multiplied by P = 0: a masked V
// row may hold NaN or Inf. Row m = g * rows + r is query row i0 + r of group head g; the masks do
// not depend on the head.
template <int D, typename T, typename Acc>
void pv_visible(const ScoreTransform& t, std::int64_t i0, int rows, int G, std::int64_t j0, int valid,
                const Acc* __restrict P, const T* const* v, std::int64_t off, Acc* __restrict O) {
  using V = Vec<Acc>;
  constexpr int W = V::width, C = D / W;
  for (int r = 0; r < rows; ++r) {
    const auto lo = static_cast<int>(std::clamp<std::int64_t>(t.key_begin(i0 + r) - j0, 0, valid));
    const auto hi = static_cast<int>(std::clamp<std::int64_t>(t.key_end(i0 + r + 1) - j0, 0, valid));
    for (int g = 0; g < G; ++g) {
      const int m = g * rows + r;
      for (int j = lo; j < hi; ++j) {
        const Acc pj = P[m * kBlockK + j];
        for (int c = 0; c < C; ++c) {
          Acc* o = O + m * D + c * W;
          V::store(o, V::load(o) + pj * load_vec<T, Acc>(v[j] + off + c * W));
        }
      }
    }
  }
}

}  // namespace
}  // namespace FLASHSIGMOID_CPU_LEVEL
}  // namespace flashsigmoid::detail::cpu
