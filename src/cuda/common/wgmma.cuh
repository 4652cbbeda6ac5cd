// Hopper (sm_90a) warpgroup MMA building blocks: the wgmma batch, warp-uniform descriptor slices and
// the accumulator -> register-A-operand view. Used by every kernel family that issues wgmma.
#pragma once

#include <cute/tensor.hpp>
#include <cute/arch/mma_sm90.hpp>
#include <cute/atom/mma_traits_sm90_gmma.hpp>

namespace flashsigmoid::cuda::sm90 {

using namespace cute;

// The slice of a warpgroup-wide tiled MMA whose operand fragments (wgmma shared-memory descriptors)
// depend only on which warpgroup a consumer thread is in: taken at the warpgroup's first thread, with
// the warpgroup index broadcast from lane 0 (as CUTLASS's canonical_warp_group_idx), so the compiler
// sees the descriptors are warp-uniform and keeps them in uniform registers. Accumulator
// (partition_C) coordinates still need the thread's own slice. The Hopper backward uses it; the
// Hopper forward keeps per-thread slices, which measured as fast or faster there (bench/NOTES.md,
// "Uniform wgmma descriptors").
template <class TiledMma>
__device__ __forceinline__ auto descriptor_slice(TiledMma& mma, int ctid) {
  return mma.get_slice(__shfl_sync(0xffffffffu, ctid / 128, 0) * 128);
}

// acc (+)= A B over the K mode of the fragments, as one wgmma batch of this warpgroup. Does not
// wait: the caller calls warpgroup_wait<0>() before reading acc or releasing the operands.
template <bool kZeroInit, class TiledMma, class FragA, class FragB, class Acc>
__device__ __forceinline__ void wgmma_gemm(TiledMma& mma, const FragA& a, const FragB& b, Acc& acc) {
  warpgroup_fence_operand(acc);
  warpgroup_arrive();
  if constexpr (kZeroInit) mma.accumulate_ = GMMA::ScaleOut::Zero;
  CUTE_UNROLL
  for (int k = 0; k < size<2>(a); ++k) {
    cute::gemm(mma, a(_, _, k), b(_, _, k), acc);
    mma.accumulate_ = GMMA::ScaleOut::One;
  }
  warpgroup_commit_batch();
  warpgroup_fence_operand(acc);
}

// The fp32 accumulator of a 64 x N wgmma holds, per thread, ((2 cols, 2 row halves, N/8 column
// groups), 1, 1). The register A operand of a 64 x 16 (x K-block) wgmma is ((2, 2, 2), 1, K/16)
// with the same (col pair, row half, 8-column half) order, so splitting the column groups into
// (2, N/16) turns S's accumulator into P's A operand without moving a register.
template <class AccLayout>
__device__ __forceinline__ constexpr auto acc_layout_as_a_operand(AccLayout acc) {
  static_assert(decltype(rank<0>(acc))::value == 3, "expects a wgmma accumulator layout");
  static_assert(decltype(size<2>(acc))::value == 1, "expects one wgmma atom along N");
  auto v = get<0>(acc);
  auto groups = logical_divide(get<2>(v), cute::Layout<_2>{});  // (2, N/16)
  return make_layout(make_layout(get<0>(v), get<1>(v), get<0>(groups)), get<1>(acc), get<1>(groups));
}

}  // namespace flashsigmoid::cuda::sm90
