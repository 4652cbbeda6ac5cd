// Ampere-class building blocks shared by the portable kernels: the SM80 MMA atom per dtype,
// swizzled shared-memory layouts, cp.async / ldmatrix tiled copies and the two GEMM shapes
// (both operands from shared memory; A from registers).
#pragma once

#include <type_traits>

#include <cute/tensor.hpp>
#include <cute/atom/copy_atom.hpp>
#include <cute/atom/mma_atom.hpp>
#include <cutlass/array.h>
#include <cutlass/numeric_conversion.h>
#include <cutlass/numeric_types.h>

namespace flashsigmoid::cuda {

using namespace cute;

// 16x8x16 tensor-core MMA, fp32 accumulate.
template <class Element>
using Sm80MmaAtom = std::conditional_t<std::is_same_v<Element, cutlass::half_t>,
                                       SM80_16x8x16_F32F16F16F32_TN, SM80_16x8x16_F32BF16BF16F32_TN>;

// kNWarps warps stacked along M; the N tile of 16 lets one ldmatrix.x4 feed two N atoms.
template <class Element, int kNWarps>
using Sm80TiledMma =
    TiledMMA<MMA_Atom<Sm80MmaAtom<Element>>, Layout<Shape<Int<kNWarps>, _1, _1>>, Tile<Int<16 * kNWarps>, _16, _16>>;

// Row-major (rows, kCols) smem tile with an XOR swizzle so that both the 16-byte cp.async
// writes and the ldmatrix reads (8 rows x 16 bytes) are bank-conflict free.
template <int kHeadDim>
struct SmemAtom {
  static constexpr int kCols = kHeadDim % 64 == 0 ? 64 : 32;  // 128 or 64 bytes per row
  using Layout = decltype(composition(Swizzle<kCols == 64 ? 3 : 2, 3, 3>{},
                                      cute::Layout<Shape<_8, Int<kCols>>, Stride<Int<kCols>, _1>>{}));
};

// Global -> shared with 16-byte cp.async.cg (bypasses L1: K/V are streamed once per CTA).
template <class Element, int kNThreads, int kHeadDim>
struct GmemCopy {
  static constexpr int kThreadsPerRow = SmemAtom<kHeadDim>::kCols / 8;
  using ThrLayout = Layout<Shape<Int<kNThreads / kThreadsPerRow>, Int<kThreadsPerRow>>, Stride<Int<kThreadsPerRow>, _1>>;
  using ValLayout = Layout<Shape<_1, _8>>;
  using Load = decltype(make_tiled_copy(Copy_Atom<SM80_CP_ASYNC_CACHEGLOBAL<cute::uint128_t>, Element>{},
                                        ThrLayout{}, ValLayout{}));
  // Plain 16-byte copies, for the epilogue (shared -> global).
  using Store = decltype(make_tiled_copy(Copy_Atom<UniversalCopy<cute::uint128_t>, Element>{}, ThrLayout{},
                                         ValLayout{}));
};

// Copies a (CPY, ROWS, COLS) partition row by row: rows at or beyond row_limit are zero-filled in
// shared memory instead of read (no out-of-bounds access; zeros keep 0 * garbage out of P V).
template <class TiledCopy, class Src, class Dst, class Coord>
__device__ __forceinline__ void copy_rows_zfill(const TiledCopy& tiled_copy, const Src& src, Dst&& dst,
                                                const Coord& coord, long long row_limit) {
  CUTE_UNROLL
  for (int m = 0; m < size<1>(src); ++m) {
    if (get<0>(coord(0, m, 0)) < row_limit) {
      CUTE_UNROLL
      for (int k = 0; k < size<2>(src); ++k) copy(tiled_copy, src(_, m, k), dst(_, m, k));
    } else {
      clear(dst(_, m, _));
    }
  }
}

// Copies only the rows below row_limit (stores past a sequence's end are dropped).
template <class TiledCopy, class Src, class Dst, class Coord>
__device__ __forceinline__ void copy_rows_pred(const TiledCopy& tiled_copy, const Src& src, Dst&& dst,
                                               const Coord& coord, long long row_limit) {
  CUTE_UNROLL
  for (int m = 0; m < size<1>(src); ++m) {
    if (get<0>(coord(0, m, 0)) < row_limit) {
      CUTE_UNROLL
      for (int k = 0; k < size<2>(src); ++k) copy(tiled_copy, src(_, m, k), dst(_, m, k));
    }
  }
}

// acc += A B^T with A and B in shared memory; ldmatrix of k-slice k+1 is issued before the
// MMAs of slice k so the shared-memory latency hides behind the tensor cores.
template <class Acc, class FragA, class FragB, class SmemA, class SmemB, class TiledMma, class CopyA,
          class CopyB, class ThrCopyA, class ThrCopyB>
__device__ __forceinline__ void gemm_ss(Acc& acc, FragA& rA, FragB& rB, const SmemA& sA, const SmemB& sB,
                                        const TiledMma& mma, const CopyA& copy_a, const CopyB& copy_b,
                                        const ThrCopyA& thr_a, const ThrCopyB& thr_b) {
  auto rA_view = thr_a.retile_D(rA);
  auto rB_view = thr_b.retile_D(rB);
  copy(copy_a, sA(_, _, 0), rA_view(_, _, 0));
  copy(copy_b, sB(_, _, 0), rB_view(_, _, 0));
  CUTE_UNROLL
  for (int k = 0; k < size<2>(rA); ++k) {
    if (k + 1 < size<2>(rA)) {
      copy(copy_a, sA(_, _, k + 1), rA_view(_, _, k + 1));
      copy(copy_b, sB(_, _, k + 1), rB_view(_, _, k + 1));
    }
    cute::gemm(mma, rA(_, _, k), rB(_, _, k), acc);
  }
}

// acc += A B^T with A already in registers (P) and B in shared memory.
template <class Acc, class FragA, class FragB, class SmemB, class TiledMma, class CopyB, class ThrCopyB>
__device__ __forceinline__ void gemm_rs(Acc& acc, const FragA& rA, FragB& rB, const SmemB& sB,
                                        const TiledMma& mma, const CopyB& copy_b, const ThrCopyB& thr_b) {
  auto rB_view = thr_b.retile_D(rB);
  copy(copy_b, sB(_, _, 0), rB_view(_, _, 0));
  CUTE_UNROLL
  for (int k = 0; k < size<2>(rA); ++k) {
    if (k + 1 < size<2>(rA)) copy(copy_b, sB(_, _, k + 1), rB_view(_, _, k + 1));
    cute::gemm(mma, rA(_, _, k), rB(_, _, k), acc);
  }
}

// Converts a (compact) register fragment element-wise; the converter packs float pairs into
// bf16x2 / half2 instructions.
template <class To, class Engine, class Layout>
__device__ __forceinline__ auto convert_fragment(const Tensor<Engine, Layout>& t) {
  using From = typename Engine::value_type;
  constexpr int N = decltype(size(t))::value;
  Tensor out = make_tensor<To>(t.layout());
  cutlass::NumericArrayConverter<To, From, N> conv;
  *reinterpret_cast<cutlass::Array<To, N>*>(out.data()) =
      conv(*reinterpret_cast<const cutlass::Array<From, N>*>(t.data()));
  return out;
}

// The accumulator of a 16x8 MMA is ((2,2), M, N) per thread; two neighbouring N atoms (16 key
// columns) hold exactly the registers of the 16x8x16 A operand ((2,2,2), M, N/2). Reinterpreting
// the layout feeds P to the second GEMM straight from registers.
template <class Layout>
__device__ __forceinline__ constexpr auto acc_layout_as_a_operand(Layout acc) {
  auto l = logical_divide(acc, Shape<Underscore, Underscore, _2>{});
  return make_layout(make_layout(get<0>(l), get<2, 0>(l)), get<1>(l), get<2, 1>(l));
}

}  // namespace flashsigmoid::cuda
