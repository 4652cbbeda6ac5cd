// Forward epilogue: fp32 accumulators -> input dtype -> shared memory (Q's space) -> 16-byte
// coalesced global stores; rows past the sequence end are not written.
#pragma once

#include "cuda/portable/fwd_traits.cuh"

namespace flashsigmoid::cuda::portable {

template <class Traits, class AccO, class GmemO>
__device__ __forceinline__ void store_output(const AccO& acc_o, typename Traits::Element* smem, GmemO& gO,
                                             long long rows_left, int tid) {
  using Element = typename Traits::Element;
  Tensor rO = convert_fragment<Element>(acc_o);
  Tensor sO = make_tensor(make_smem_ptr(smem), typename Traits::SmemLayoutO{});

  auto r2s = typename Traits::SmemCopyO{};
  auto r2s_thr = r2s.get_thread_slice(tid);
  Tensor tRrO = r2s_thr.retile_S(rO);
  Tensor tRsO = r2s_thr.partition_D(sO);
  __syncthreads();  // every warp is done reading Q / V from shared memory
  copy(r2s, tRrO, tRsO);
  __syncthreads();

  auto s2g = typename Traits::GmemStore{};
  auto s2g_thr = s2g.get_thread_slice(tid);
  Tensor tGsO = s2g_thr.partition_S(sO);
  Tensor tGgO = s2g_thr.partition_D(gO);
  Tensor tGrO = make_tensor<Element>(shape(tGsO));
  copy(s2g, tGsO, tGrO);  // all shared reads first, then the stores stream out
  Tensor cO = make_identity_tensor(Shape<Int<Traits::kBlockM>, Int<Traits::kHeadDim>>{});
  copy_rows_pred(s2g, tGrO, tGgO, s2g_thr.partition_S(cO), rows_left);
}

}  // namespace flashsigmoid::cuda::portable
