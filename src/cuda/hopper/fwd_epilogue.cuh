// Hopper forward epilogue: fp32 accumulators -> input dtype -> shared memory (O's own buffer, or
// Q's space: Traits::kOwnO) -> 16-byte coalesced global stores, rows past the sequence end not
// written.
//
// Each consumer warpgroup stores its own 64 rows, so it needs only its own named barrier (no
// CTA-wide sync): the rows it overwrites are read by no one else (in Q's space, its last wgmma
// reading them finished at the last warpgroup_wait<0>() of the mainloop). Plain stores rather than a TMA
// store: a TMA store clips only at the tensor's bounds, and a varlen tile must not write past
// its sequence into the next one's rows.
#pragma once

#include <cutlass/arch/barrier.h>

#include "cuda/common/mma_copy.cuh"
#include "cuda/hopper/fwd_traits.cuh"

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
  auto thr_pv = mma_pv.get_thread_slice(ctid);
  Tensor rO = convert_fragment<Element>(acc_o);
  Tensor tOsO = thr_pv.partition_C(sO);
  static_assert(decltype(size(rO))::value == decltype(size(tOsO))::value);
  // The warpgroup's threads have all read back their rows of the previous tile's O (persistent CTA).
  cutlass::arch::NamedBarrier::sync(128, 1 + wg);
  copy(rO, tOsO);
  // Named barrier 1 + wg (CUTLASS's user ids, offset past its reserved ones): the 128 threads of
  // this warpgroup have written their rows of O.
  cutlass::arch::NamedBarrier::sync(128, 1 + wg);

  Tensor sOw = local_tile(sO, Shape<_64, Int<D>>{}, make_coord(wg, _0{}));
  Tensor gOw = make_tensor(make_gmem_ptr(o_tile + std::int64_t(wg) * 64 * o_row_stride), Shape<_64, Int<D>>{},
                           make_stride(o_row_stride, _1{}));
  using Store = typename GmemCopy<Element, 128, D>::Store;
  Store s2g;
  auto s2g_thr = s2g.get_thread_slice(wtid);
  Tensor tSsO = s2g_thr.partition_S(sOw);
  Tensor tSgO = s2g_thr.partition_D(gOw);
  Tensor tSrO = make_tensor<Element>(shape(tSsO));
  copy(s2g, tSsO, tSrO);  // all shared reads first, then the stores stream out
  Tensor cO = s2g_thr.partition_S(make_identity_tensor(Shape<_64, Int<D>>{}));
  copy_rows_pred(s2g, tSrO, tSgO, cO, rows_left - std::int64_t(wg) * 64);
}

}  // namespace flashsigmoid::cuda::hopper
