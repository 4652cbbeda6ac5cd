// Hopper forward epilogue: fp32 accumulators -> input dtype -> shared memory (O's own buffer, or
// Q's space: Traits::kOwnO) by stmatrix -> 16-byte coalesced global stores, rows past the sequence
// end not written. stmatrix takes a 32-bit shared address per 8 x 8 block; a plain CuTe copy into the
// swizzled tile compiled to one generic 64-bit store per register (SASS).
//
// Each consumer warpgroup stores its own 64 rows, so it needs only its own named barrier (no
// CTA-wide sync): the rows it overwrites are read by no one else (in Q's space, its last wgmma
// reading them finished at the last warpgroup_wait<0>() of the mainloop). Plain stores rather than a TMA
// store: a TMA store clips only at the tensor's bounds, and a varlen tile must not write past
// its sequence into the next one's rows.
#pragma once

#include <cute/atom/copy_traits_sm90.hpp>  // SM90_U32x4_STSM_N
#include <cutlass/arch/barrier.h>

#include "cuda/common/mma_copy.cuh"
#include "cuda/hopper/fwd_traits.cuh"
#include "cuda/hopper/named_barriers.hpp"

namespace flashsigmoid::cuda::hopper {

// o_tile: element (0, 0) of the CTA's output tile; rows_left: valid rows of the tile.
template <class Traits, class AccO>
__device__ __forceinline__ void store_output(const AccO& acc_o, typename Traits::SharedStorage& ss,
                                             typename Traits::Element* o_tile, std::int64_t o_row_stride,
                                             std::int64_t rows_left, int ctid) {
  using Element = typename Traits::Element;
  constexpr int D = Traits::kHeadDim;
  const int wg = ctid / 128;  // consumer warpgroup: rows [64 wg, 64 wg + 64) of the tile
  const int wtid = ctid % 128;

  Tensor sO = make_tensor(make_smem_ptr(ss.o_tile()), typename Traits::SmemLayoutO{});
  typename Traits::TiledMmaPV mma_pv;
  Tensor rO = convert_fragment<Element>(acc_o);
  auto r2s = make_tiled_copy_C(Copy_Atom<SM90_U32x4_STSM_N, Element>{}, mma_pv);
  auto r2s_thr = r2s.get_thread_slice(ctid);
  Tensor tR2SrO = r2s_thr.retile_S(rO);
  Tensor tR2SsO = r2s_thr.partition_D(sO);
  // The warpgroup's threads have all read back their rows of the previous tile's O (persistent CTA).
  cutlass::arch::NamedBarrier::sync(128, kBarStoreOutput + wg);
  copy(r2s, tR2SrO, tR2SsO);
  // The 128 threads of this warpgroup have written their rows of O.
  cutlass::arch::NamedBarrier::sync(128, kBarStoreOutput + wg);

  Tensor gOw = make_tensor(make_gmem_ptr(o_tile + std::int64_t(wg) * 64 * o_row_stride), Shape<_64, Int<D>>{},
                           make_stride(o_row_stride, _1{}));
  using Store = typename GmemCopy<Element, 128, D>::Store;
  Store s2g;
  auto s2g_thr = s2g.get_thread_slice(wtid);
  Tensor tSgO = s2g_thr.partition_D(gOw);
  Tensor cO = s2g_thr.partition_S(make_identity_tensor(Shape<_64, Int<D>>{}));  // (8 columns, M, N)
  // All shared reads first (16 bytes each, by 32-bit shared address: the swizzle moves whole 16-byte
  // chunks, so each 8-column vector stays contiguous), then the stores stream out.
  Tensor tSrO = make_tensor<Element>(shape(cO));
  Tensor tSrO16 = recast<uint128_t>(tSrO);
  const auto offsets = as_position_independent_swizzle_layout(typename Traits::SmemLayoutO{});
  const uint32_t base = cast_smem_ptr_to_uint(ss.o_tile());
  CUTE_UNROLL
  for (int m = 0; m < size<1>(cO); ++m) {
    CUTE_UNROLL
    for (int n = 0; n < size<2>(cO); ++n) {
      const uint32_t addr =
          base + uint32_t(sizeof(Element)) * uint32_t(offsets(64 * wg + get<0>(cO(0, m, n)), get<1>(cO(0, m, n))));
      uint32_t* v = reinterpret_cast<uint32_t*>(&tSrO16(0, m, n));
      asm volatile("ld.shared.v4.b32 {%0, %1, %2, %3}, [%4];\n"
                   : "=r"(v[0]), "=r"(v[1]), "=r"(v[2]), "=r"(v[3])
                   : "r"(addr));
    }
  }
  copy_rows_pred(s2g, tSrO, tSgO, cO, rows_left - std::int64_t(wg) * 64);
}

}  // namespace flashsigmoid::cuda::hopper
