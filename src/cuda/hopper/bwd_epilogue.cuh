// Hopper backward epilogue: the dK and dV accumulator tiles of a key block through K's and V's shared
// memory to global memory, with the forward's store_output (the tiles have the O tile's shape).
#pragma once

#include <cstdint>

#include <cutlass/arch/barrier.h>

#include "common/score_transform.hpp"
#include "cuda/common/dscores.cuh"  // scale_fragment
#include "cuda/hopper/bwd_traits.cuh"
#include "cuda/hopper/fwd_epilogue.cuh"  // store_output
#include "cuda/hopper/named_barriers.hpp"

namespace flashsigmoid::cuda::hopper {

// What the forward's store_output needs to stage one (kBlockN, D) dK or dV accumulator tile through
// the shared-memory buffer `tile` (K's or V's space, 128 x D elements either way).
template <class Traits>
struct KeyTileStore {
  using Element = typename Traits::Element;
  static constexpr int kHeadDim = Traits::kHeadDim;
  using TiledMmaPV = typename Traits::TiledMmaDKV;
  using SmemLayoutO = typename Traits::SmemLayoutV;
  struct SharedStorage {
    Element* tile;
    CUTE_DEVICE Element* o_tile() { return tile; }
  };
};

// dV through V's space (each warpgroup reads only its own rows of V), dK = scale acc_dk through K's
// space once both warpgroups' dQ GEMMs, which read every row of K, are done. Key rows past the
// sequence end are not written; rows that no query sees are zeros.
template <class Traits, class AccKV>
__device__ __forceinline__ void store_key_grads(const detail::BwdParams& p, typename Traits::SharedStorage& ss,
                                                AccKV& acc_dk, const AccKV& acc_dv, const detail::SeqInfo& seq,
                                                int b, int hk, std::int64_t j0, std::int64_t keys, int ctid) {
  using Element = typename Traits::Element;
  cutlass::arch::NamedBarrier::sync(Traits::kNConsumerThreads, kBarEpilogue);
  using Store = KeyTileStore<Traits>;
  Element* dv_tile = static_cast<Element*>(p.dv) + p.dv_stride.offset(b, seq.k_begin + j0, hk);
  Element* dk_tile = static_cast<Element*>(p.dk) + p.dk_stride.offset(b, seq.k_begin + j0, hk);
  typename Store::SharedStorage v_space{ss.v.data()};
  typename Store::SharedStorage k_space{ss.k.data()};
  store_output<Store>(acc_dv, v_space, dv_tile, p.dv_stride.row, keys, ctid);
  scale_fragment(acc_dk, p.scale);
  store_output<Store>(acc_dk, k_space, dk_tile, p.dk_stride.row, keys, ctid);
}

}  // namespace flashsigmoid::cuda::hopper
