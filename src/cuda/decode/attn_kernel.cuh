// Attention of new query tokens over a (paged) KV cache, sm_80 instructions (cp.async, ldmatrix,
// mma.sync). Grid: (split, row block, sequence x kv head). A CTA streams the keys of its split
// once through a kStages-deep cp.async pipeline and multiplies them with all of its rows (every
// query head of the GQA group, every new token): S = Q K^T and O += P V on the tensor cores, P =
// sigmoid(transform(S)) in registers. Partial sums over disjoint key ranges simply add (no
// softmax statistics), so a split writes its fp32 partial O and sum_splits adds them in a fixed order.
#pragma once

#include <cmath>
#include <cstdint>

#include <cutlass/array.h>
#include <cutlass/fast_math.h>
#include <cutlass/numeric_conversion.h>

#include "common/score_transform.hpp"
#include "cuda/common/sigmoid.cuh"
#include "cuda/decode/sequence.cuh"
#include "cuda/decode/splits.hpp"
#include "cuda/decode/traits.cuh"

namespace flashsigmoid::cuda::decode {

template <class Element>
__device__ __forceinline__ void cp_async_zfill(Element* smem, const Element* gmem, bool pred) {
  SM80_CP_ASYNC_CACHEGLOBAL_ZFILL<cute::uint128_t>::copy(*reinterpret_cast<const cute::uint128_t*>(gmem),
                                                         *reinterpret_cast<cute::uint128_t*>(smem), pred);
}

// Eight fp32 values to the input dtype, as one 16-byte store.
template <class Element>
__device__ __forceinline__ void store8(Element* dst, const float (&v)[8]) {
  cutlass::Array<float, 8> in;
  CUTE_UNROLL
  for (int e = 0; e < 8; ++e) in[e] = v[e];
  const cutlass::Array<Element, 8> out = cutlass::NumericArrayConverter<Element, float, 8>{}(in);
  *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(&out);
}

// Eight-byte store of four fp32 values in the input dtype.
template <class Element>
__device__ __forceinline__ void store4(Element* dst, const float4& v) {
  cutlass::Array<float, 4> in;
  in[0] = v.x; in[1] = v.y; in[2] = v.z; in[3] = v.w;
  const cutlass::Array<Element, 4> out = cutlass::NumericArrayConverter<Element, float, 4>{}(in);
  *reinterpret_cast<uint2*>(dst) = *reinterpret_cast<const uint2*>(&out);
}

// Programmatic dependent launch (sm_90+; no-ops below): the attention lets its dependent (the split
// sum, or the next call's attention) start early, and a dependent waits until the grid before it has
// finished and its memory is visible. Without the launch attribute both are plain stream order.
__device__ __forceinline__ void allow_dependent_launch() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
__device__ __forceinline__ void wait_for_prerequisite_grid() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// workspace: null with one split (O is written in the input dtype), else [splits, B, Nq_new, Hq, D]
// fp32 partials, every element written by its split (zeros when the split has no visible key).
template <class Traits>
__global__ void __launch_bounds__(Traits::kNThreads)
    decode_kernel(const __grid_constant__ detail::KVCacheParams p, float* workspace) {
  using Element = typename Traits::Element;
  constexpr int BM = Traits::kBlockM;
  constexpr int BN = Traits::kBlockN;
  constexpr int BNW = Traits::kBlockNWarp;
  constexpr int D = Traits::kHeadDim;
  constexpr int kStages = Traits::kStages;
  constexpr int kThreads = Traits::kNThreads;
  constexpr int kGroupThreads = 32 * Traits::kWarpsM;  // the threads of one TiledMma
  constexpr int kVecs = D / 8;                          // 16-byte vectors per row
  static_assert(kThreads % kVecs == 0, "a load pass covers whole rows");
  extern __shared__ __align__(128) unsigned char smem_raw[];

  const int tid = threadIdx.x;
  const int split = blockIdx.x;
  const int splits = gridDim.x;
  const int hk = int(blockIdx.z % p.heads_kv);
  const std::int64_t b = blockIdx.z / p.heads_kv;
  const int group = int(p.heads_q / p.heads_kv);
  const int nq = int(p.seqlen_q);
  const int m0 = int(blockIdx.y) * BM;  // rows m = i * group + g: token i, query head hk * group + g
  const int rows = min(BM, nq * group - m0);
  auto head_of = [&](int m) { return std::int64_t(hk) * group + m % group; };

  // Launched as a programmatic dependent (launch.cuh), the CTA may start before the previous kernel
  // ends: nothing in memory is read or written before that kernel's writes are visible.
  wait_for_prerequisite_grid();
  const SeqCache sc = load_seq(p, b);
  const bool seq_ok = sc.ok;
  detail::SeqInfo seq;
  seq.len_q = nq;
  seq.len_k = sc.len_k;
  // The masks do not depend on the head: the first head's transform gives the key range.
  const detail::ScoreTransform st0 = detail::make_score_transform(p, seq, b, head_of(0));
  const int i_lo = m0 / group;
  const int i_hi = (m0 + rows - 1) / group + 1;
  const std::int64_t key_lo = st0.key_begin(i_lo);
  const std::int64_t key_hi = st0.key_end(i_hi);
  // This split's contiguous share of the key blocks that hold visible keys.
  int n_begin = 0, n_blocks = 0;
  if (seq_ok && key_hi > key_lo) {
    const std::int64_t lo = key_lo / BN, n = (key_hi + BN - 1) / BN - lo;
    n_begin = int(lo + split_begin(n, split, splits));
    n_blocks = int(split_begin(n, split + 1, splits) - split_begin(n, split, splits));
  }

  // Q kept in registers is read from shared memory once, before the last stage's first load: it then
  // lives in V's last stage (traits.cuh), else in front of the stages.
  constexpr int kStageElems = BN * D;
  Element* const smem = reinterpret_cast<Element*>(smem_raw);
  Element* smem_k = smem + (Traits::kQInRegisters ? 0 : cosize(typename Traits::SmemLayoutQ{}));
  Element* smem_v = smem_k + cosize(typename Traits::SmemLayoutKV{});
  Element* smem_q = Traits::kQInRegisters ? smem_v + (kStages - 1) * kStageElems : smem;
  Tensor sQ = make_tensor(make_smem_ptr(smem_q), typename Traits::SmemLayoutQ{});    // (BM, D)
  Tensor sK = make_tensor(make_smem_ptr(smem_k), typename Traits::SmemLayoutKV{});   // (BNW, D, warp, stage)
  Tensor sV = make_tensor(make_smem_ptr(smem_v), typename Traits::SmemLayoutKV{});
  Tensor sVt = make_tensor(make_smem_ptr(smem_v), typename Traits::SmemLayoutVt{});  // (D, BNW, warp, stage)

  // ---- global -> shared: 16-byte cp.async per (row, vector), zero-filled where there is no row ----
  const int vec_col = (tid % kVecs) * 8;
  const int row0 = tid / kVecs;
  constexpr int kRowsPerPass = kThreads / kVecs;
  bool page_fault = false;  // a page id out of range met while loading (never dereferenced)
  auto load_q = [&] {
    CUTE_UNROLL
    for (int r = row0; r < BM; r += kRowsPerPass) {
      const Element* src = static_cast<const Element*>(p.q);
      const bool valid = r < rows;
      if (valid) src += p.q_stride.offset(b, (m0 + r) / group, head_of(m0 + r)) + vec_col;
      cp_async_zfill(&sQ(r, vec_col), src, valid);
    }
  };
  // Paged caches: the page ids of this thread's rows of a key block are read one iteration before
  // the block's cp.async, so the loads never wait on a block_table read (D 256 has 16 rows per
  // thread and no registers to spare: it reads them just before).
  constexpr int kRowsPerThread = BN / kRowsPerPass;
  constexpr bool kPrefetchPages = kRowsPerThread <= 8;
  const bool paged = p.block_table != nullptr;
  // Positions are below 2^31, so a larger page size divides like INT32_MAX (one page).
  const cutlass::FastDivmod page_div(paged ? int(std::min<std::int64_t>(p.page_size, INT32_MAX)) : 1);
  const std::int32_t* page_ids = paged ? p.block_table + b * p.block_table_stride : nullptr;
  const KVRowBase<Element> kv_base(p, sc, hk, vec_col);
  struct BlockPages {
    std::int32_t id[kRowsPerThread];
  };
  auto fetch_pages = [&](int n) {
    BlockPages pg;
    CUTE_UNROLL
    for (int k = 0; k < kRowsPerThread; ++k) {
      const int t = n * BN + row0 + k * kRowsPerPass;
      int idx = 0, slot;
      if (paged) page_div(idx, slot, t);
      pg.id[k] = paged && t < sc.len_k ? page_ids[idx] : 0;
    }
    return pg;
  };
  // Page ids at or past this are out of range (negative ones too, as unsigned); block_table is int32.
  const std::uint32_t page_limit = std::uint32_t(std::min<std::int64_t>(p.num_pages, std::int64_t(1) << 31));
  auto load_kv = [&](int n, int stage, const BlockPages& pg) {
    // Unrolled where the page ids sit in registers; D 256 keeps a loop (registers again). Branch-free:
    // a row's address is a few selects and two wide multiply-adds.
#pragma unroll(kPrefetchPages ? kRowsPerThread : 1)
    for (int k = 0; k < kRowsPerThread; ++k) {
      const int r = row0 + k * kRowsPerPass;
      const int t = n * BN + r;
      const bool in_seq = t < sc.len_k;
      int idx, in_page;
      page_div(idx, in_page, t);
      std::int32_t id = 0;
      if constexpr (kPrefetchPages) {
        id = pg.id[k];
      } else if (paged && in_seq) {
        id = page_ids[idx];
      }
      const bool page_ok = !paged || std::uint32_t(id) < page_limit;
      page_fault |= in_seq && !page_ok;
      const bool valid = in_seq && page_ok;
      const std::uint32_t page = paged && valid ? std::uint32_t(id) : 0u;
      const std::uint32_t slot = valid ? std::uint32_t(paged ? in_page : t) : 0u;
      const Element* ks = kv_base.key(page, slot);
      const Element* vs = kv_base.value(page, slot);
      cp_async_zfill(&sK(r % BNW, vec_col, r / BNW, stage), ks, valid);
      cp_async_zfill(&sV(r % BNW, vec_col, r / BNW, stage), vs, valid);
    }
  };

  // Warps [wn * kWarpsM, (wn + 1) * kWarpsM) form one TiledMma over key slice wn of each block.
  typename Traits::TiledMma mma;
  const int gtid = tid % kGroupThreads;
  const int wn = tid / kGroupThreads;
  auto thr_mma = mma.get_thread_slice(gtid);
  Tensor acc_o = partition_fragment_C(mma, Shape<Int<BM>, Int<D>>{});
  clear(acc_o);

  // Pipeline: one cp.async group per key block (Q rides with the first), always committed so the
  // wait count is the same in every iteration; block it + kStages - 1 is issued while block it is
  // multiplied.
  BlockPages next_pages{};  // rows past the sequence read nothing
  if (n_blocks > 0) {
    load_q();
    CUTE_UNROLL
    for (int s = 0; s < kStages - 1; ++s) {
      if (s < n_blocks) load_kv(n_begin + s, s, kPrefetchPages ? fetch_pages(n_begin + s) : BlockPages{});
      cp_async_fence();
    }
    if constexpr (kPrefetchPages) {
      if (kStages - 1 < n_blocks) next_pages = fetch_pages(n_begin + kStages - 1);
    }
  }
  // Every page id of this split's share of the sequence is checked, also those the masks skip, so a
  // bad id anywhere turns the whole sequence to NaN (every row sums every split). Read once the
  // prologue's loads are issued, so its round trip overlaps theirs; the epilogue uses the verdict.
  const std::int64_t n_pages = pages_of(p, sc.len_k);
  const bool page_bad =
      pages_out_of_range(p, b, split_begin(n_pages, split, splits), split_begin(n_pages, split + 1, splits));
  if (n_blocks > 0) {
    Tensor tSrQ = thr_mma.partition_fragment_A(sQ);
    Tensor tSrK = thr_mma.partition_fragment_B(sK(_, _, 0, 0));
    Tensor tOrVt = thr_mma.partition_fragment_B(sVt(_, _, 0, 0));
    auto s2r_q = typename Traits::SmemCopyQ{};
    auto s2r_q_thr = s2r_q.get_thread_slice(gtid);
    Tensor tSsQ = s2r_q_thr.partition_S(sQ);
    auto s2r_k = typename Traits::SmemCopyK{};
    auto s2r_k_thr = s2r_k.get_thread_slice(gtid);
    Tensor tSsK = s2r_k_thr.partition_S(sK);  // (CPY, N, K, warp, stage)
    auto s2r_v = typename Traits::SmemCopyVt{};
    auto s2r_v_thr = s2r_v.get_thread_slice(gtid);
    Tensor tOsVt = s2r_v_thr.partition_S(sVt);

    // Each thread's accumulators cover two rows of the tile (the 16x8 MMA's row halves); each row
    // has its own head (bias, ALiBi slope) and token, so its own ScoreTransform.
    Tensor tScS = thr_mma.partition_C(make_identity_tensor(Shape<Int<BM>, Int<BNW>>{}));
    static_assert(decltype(size<1>(tScS))::value == 1, "one 16-row MMA tile per warp");
    detail::ScoreTransform st_row[2];
    int i_row[2];
    CUTE_UNROLL
    for (int rh = 0; rh < 2; ++rh) {
      const int m = m0 + int(get<0>(tScS(make_coord(make_coord(0, rh), 0, 0))));
      i_row[rh] = m / group;  // rows past the tile's end are computed (finite: Q is zero) and never stored
      st_row[rh] = detail::make_score_transform(p, seq, b, head_of(m)).scaled_by(0.5f);
    }
    const bool alibi = p.alibi_slopes != nullptr;

    for (int it = 0; it < n_blocks; ++it) {
      cp_async_wait<kStages - 2>();  // block it (and Q) landed for this thread ...
      __syncthreads();               // ... and for every thread; stage (it - 1) % kStages is free
      if constexpr (Traits::kQInRegisters) {
        if (it == 0) {
          copy(s2r_q, tSsQ, s2r_q_thr.retile_D(tSrQ));
          __syncthreads();  // every thread has its Q before the last stage (Q's bytes) is loaded
        }
      }
      if (it + kStages - 1 < n_blocks) {
        const int n = n_begin + it + kStages - 1;
        if constexpr (kPrefetchPages) {
          load_kv(n, (it + kStages - 1) % kStages, next_pages);
          if (it + kStages < n_blocks) next_pages = fetch_pages(n + 1);
        } else {
          load_kv(n, (it + kStages - 1) % kStages, BlockPages{});
        }
      }
      cp_async_fence();

      const int stage = it % kStages;
      Tensor acc_s = partition_fragment_C(mma, Shape<Int<BM>, Int<BNW>>{});
      clear(acc_s);
      if constexpr (Traits::kQInRegisters) {
        gemm_rs(acc_s, tSrQ, tSrK, tSsK(_, _, _, wn, stage), mma, s2r_k, s2r_k_thr);
      } else {
        gemm_ss(acc_s, tSrQ, tSrK, tSsQ, tSsK(_, _, _, wn, stage), mma, s2r_q, s2r_k, s2r_q_thr, s2r_k_thr);
      }

      // P = sigmoid(transform(S)). Blocks that every row sees whole (all but the sequence's last
      // block and the mask edges) skip the mask; masked and past-the-end keys give exactly 0.
      const std::int64_t j0 = std::int64_t(n_begin + it) * BN + wn * BNW;
      const bool full = !alibi && st0.block_unmasked(i_lo, i_hi, j0, j0 + BNW);
      CUTE_UNROLL
      for (int rh = 0; rh < 2; ++rh) {
        const detail::ScoreTransform::Tile tile = st_row[rh].tile(i_row[rh], j0);  // (0, c): key j0 + c
        detail::ScoreTransform::Tile plain = tile;
        plain.alibi_slope = 0.0f;
        CUTE_UNROLL
        for (int ni = 0; ni < size<2>(acc_s); ++ni) {
          CUTE_UNROLL
          for (int cp = 0; cp < 2; ++cp) {
            const auto idx = make_coord(make_coord(cp, rh), 0, ni);
            float& s = acc_s(idx);
            if (full) {
              s = sigmoid_of_half_logit<Element>(plain.logit(s, 0, 0));
            } else {
              const int c = int(get<1>(tScS(idx)));
              const float prob = sigmoid_of_half_logit<Element>(tile.logit(s, 0, c));
              s = tile.masked(0, c) ? 0.0f : prob;
            }
          }
        }
      }
      Tensor rP = convert_fragment<Element>(acc_s);
      Tensor tOrP = make_tensor(rP.data(), acc_layout_as_a_operand(rP.layout()));
      gemm_rs(acc_o, tOrP, tOrVt, tOsVt(_, _, _, wn, stage), mma, s2r_v, s2r_v_thr);
    }
  }
  cp_async_wait<0>();
  allow_dependent_launch();
  __syncthreads();  // every warp is done with the K/V stages: they hold the fp32 sum now

  // ---- epilogue: the key slices' partial O summed in a fixed order, then stored ----
  constexpr int kAccStride = Traits::kAccStride;
  float* sacc = reinterpret_cast<float*>(smem_k);
  {
    Tensor tOcO = thr_mma.partition_C(make_identity_tensor(Shape<Int<BM>, Int<D>>{}));
    CUTE_UNROLL
    for (int i = 0; i < size(acc_o); ++i) {
      sacc[(wn * BM + int(get<0>(tOcO(i)))) * kAccStride + int(get<1>(tOcO(i)))] = acc_o(i);
    }
  }
  const bool bad = __syncthreads_or(page_fault || page_bad) || !seq_ok;
  for (int c = tid; c < rows * kVecs; c += kThreads) {
    const int r = c / kVecs;
    const int col = (c % kVecs) * 8;
    float v[8];
    CUTE_UNROLL
    for (int e = 0; e < 8; ++e) v[e] = 0.0f;
    CUTE_UNROLL
    for (int w = 0; w < Traits::kWarpsN; ++w) {
      const float4* src = reinterpret_cast<const float4*>(sacc + (w * BM + r) * kAccStride + col);
      const float4 lo = src[0], hi = src[1];
      v[0] += lo.x; v[1] += lo.y; v[2] += lo.z; v[3] += lo.w;
      v[4] += hi.x; v[5] += hi.y; v[6] += hi.z; v[7] += hi.w;
    }
    if (bad) {
      CUTE_UNROLL
      for (int e = 0; e < 8; ++e) v[e] = NAN;
    }
    const int m = m0 + r;
    const int i = m / group;
    const std::int64_t h = head_of(m);
    if (workspace != nullptr) {
      float4* dst = reinterpret_cast<float4*>(
          workspace + (((std::int64_t(split) * p.batch + b) * nq + i) * p.heads_q + h) * D + col);
      dst[0] = make_float4(v[0], v[1], v[2], v[3]);
      dst[1] = make_float4(v[4], v[5], v[6], v[7]);
    } else {
      store8(static_cast<Element*>(p.o) + p.o_stride.offset(b, i, h) + col, v);
    }
  }
}

// out = the sum of the splits' fp32 partials, cast to the dtype. The partials are [splits, rows,
// D] with (row, D) flattened into float4 columns; a CTA of 256 threads owns 256 / kLanes
// consecutive columns, and lane l of a column adds splits l, l + kLanes, ... in order (4 loads in
// flight), then the lanes are added in order: a fixed order, so the bits do not depend on timing.
// kLanes follows the split count (SumShape::lanes): 32 lanes keep every split's load in flight at
// once up to 128 splits (one thread walking 256 splits in turn took longer than the attention); 4
// lanes keep few splits from leaving most threads idle.
// On sm_90 it is launched as a programmatic dependent of decode_kernel (launch.cuh): it starts while
// the attention's epilogue runs and waits here for all of that grid's writes.
struct SumShape {
  static constexpr int kThreads = 256;
  static constexpr int kInFlight = 4;
  static constexpr int lanes(int splits) { return splits > 8 ? 32 : 4; }
};

template <int D, class Element, int kLanes>
__global__ void __launch_bounds__(SumShape::kThreads)
    sum_splits_kernel(const __grid_constant__ detail::KVCacheParams p, const float* workspace, int splits) {
  constexpr int kCols = SumShape::kThreads / kLanes;  // float4 columns of a CTA
  constexpr int kInFlight = SumShape::kInFlight;
  constexpr int kRowCols = D / 4;
  __shared__ float4 part[kLanes][kCols];
  wait_for_prerequisite_grid();
  const std::int64_t rows = p.batch * p.seqlen_q * p.heads_q;
  const std::int64_t cols = rows * kRowCols;  // float4s of one split's partial
  const int c = int(threadIdx.x) % kCols;
  const int lane = int(threadIdx.x) / kCols;
  const std::int64_t col = std::int64_t(blockIdx.x) * kCols + c;
  float4 acc = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
  auto add = [](float4& a, const float4& b) { a.x += b.x; a.y += b.y; a.z += b.z; a.w += b.w; };
  if (col < cols) {
    const float4* src = reinterpret_cast<const float4*>(workspace) + col;
    int s = lane;
    for (; s + (kInFlight - 1) * kLanes < splits; s += kInFlight * kLanes) {
      float4 v[kInFlight];
      CUTE_UNROLL
      for (int k = 0; k < kInFlight; ++k) v[k] = src[(s + k * kLanes) * cols];
      CUTE_UNROLL
      for (int k = 0; k < kInFlight; ++k) add(acc, v[k]);
    }
    for (; s < splits; s += kLanes) add(acc, src[s * cols]);
  }
  part[lane][c] = acc;
  __syncthreads();
  if (threadIdx.x < kCols && col < cols) {
    float4 sum = part[0][c];
    CUTE_UNROLL
    for (int l = 1; l < kLanes; ++l) add(sum, part[l][c]);
    const std::int64_t row = col / kRowCols;
    const std::int64_t h = row % p.heads_q;
    const std::int64_t i = (row / p.heads_q) % p.seqlen_q;
    const std::int64_t b = row / (p.heads_q * p.seqlen_q);
    store4(static_cast<Element*>(p.o) + p.o_stride.offset(b, i, h) + (col % kRowCols) * 4, sum);
  }
}

}  // namespace flashsigmoid::cuda::decode
