// The Hopper backward's deterministic mode: the order in which key blocks add their dQ parts.
#pragma once

#include <cstdint>

#include <cutlass/barrier.h>  // GenericBarrier

#include "common/score_transform.hpp"
#include "cuda/hopper/bwd_traits.cuh"

namespace flashsigmoid::cuda::hopper {

// Deterministic mode: the key blocks that see a query block add their dQ parts to it in decreasing
// key-block order, so every dQ element is summed in one fixed order. One flag per (batch, query head,
// query block, warpgroup) counts the adds done; key block n waits until the flag equals its rank (the
// last key block that sees the query block, minus n: masks leave a contiguous range), adds, and counts
// the add once it has completed in global memory (done(), deferred to the next step's first GEMMs so
// the consumer does not stall on it). Why decreasing: each key block walks its query blocks upwards
// from the first it sees, and under causal / window masks a higher key block starts higher, so it
// reaches a query block one step before the next lower one: the waits are short (in increasing
// order they added up along the chain, which measured far slower at causal). The grid
// runs in reverse key-block order in this mode, so key block n waits only for key blocks of the same
// (kv head, batch) that the GPU started before it: the waits cannot deadlock. Only the issuing
// thread takes part.
struct DqOrder {
  struct NoSync {  // GenericBarrier syncs its group around a flag; here the group is one thread
    CUTLASS_DEVICE static void sync() {}
  };
  using Flags = cutlass::GenericBarrier<NoSync>;
  int* flags = nullptr;
  int index = 0;  // this (batch, head, query block, warpgroup)'s flag
  int rank = 0;   // adds that must precede this key block's

  // From the parameters alone (not from values the step keeps in registers). Query rows [i0, i1).
  template <class Traits>
  CUTLASS_DEVICE static DqOrder make(const BwdKernelParams<Traits>& prm, int b, int h, int n_block, std::int64_t i0,
                                     std::int64_t i1, int wg) {
    const detail::BwdParams& p = prm.p;
    const detail::ScoreTransform st = detail::make_score_transform(p, detail::seq_info(p, b), b, h);
    DqOrder o;
    o.flags = prm.dq_order;
    o.index = int(((std::int64_t(b) * p.heads_q + h) * prm.m_blocks + i0 / Traits::kBlockM) *
                      Traits::kNConsumerWarpGroups + wg);
    o.rank = int(st.last_key_block(i1, Traits::kBlockN)) - n_block;
    return o;
  }
  CUTLASS_DEVICE void wait_turn() const {
    Flags::wait_eq(flags, 0, index, rank);
    asm volatile("fence.proxy.async.global;\n" ::: "memory");  // the TMA add after the flag's acquire
  }
  CUTLASS_DEVICE void done() const {
    asm volatile("cp.async.bulk.wait_group 0;\n" ::: "memory");  // the add has completed in global memory
    asm volatile("fence.proxy.async.global;\n" ::: "memory");    // ... and is ordered before the release
    Flags::arrive_inc(flags, 0, index, 1);
  }
};

}  // namespace flashsigmoid::cuda::hopper
