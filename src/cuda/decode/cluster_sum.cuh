// The split sum through distributed shared memory (sm_90 thread-block clusters): the splits of one
// (row block, sequence x kv head) are one cluster, each leaves its fp32 partial O in its own shared
// memory, and each CTA then adds a share of the output's vectors over every CTA of the cluster in rank
// order (a fixed order: the bits do not depend on timing). No workspace and no second kernel.
// Compiled for every architecture; below sm_90 a CTA is always a cluster of one and this is never
// reached (launch.cuh launches clusters on sm_90 devices with sm_90 code only).
#pragma once

#include <cstdint>

#include <cute/arch/cluster_sm90.hpp>
#include <cute/arch/util.hpp>

namespace flashsigmoid::cuda::decode {

// CTAs in this CTA's cluster (1 without a cluster launch and below sm_90).
__device__ __forceinline__ int cluster_ctas() { return int(cute::cluster_shape().x); }

// Every thread of every CTA of the cluster: shared-memory writes before it are visible to the whole
// cluster after it (release / acquire).
__device__ __forceinline__ void cluster_barrier() {
#if defined(CUTE_ARCH_CLUSTER_SM90_ENABLED)
  // Not cute::cluster_sync: its asm has no memory clobber, so the compiler could move the shared
  // memory stores and loads around it.
  asm volatile("barrier.cluster.arrive.release.aligned;\n\tbarrier.cluster.wait.acquire.aligned;" ::: "memory");
#endif
}

// 16 bytes of CTA `rank`'s shared memory at the address that `smem` has in this CTA.
__device__ __forceinline__ float4 load_peer_f4(const float* smem, int rank) {
  float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#if defined(CUTE_ARCH_CLUSTER_SM90_ENABLED)
  const std::uint32_t addr = cute::set_block_rank(cute::cast_smem_ptr_to_uint(smem), std::uint32_t(rank));
  asm volatile("ld.shared::cluster.v4.f32 {%0, %1, %2, %3}, [%4];"
               : "=f"(v.x), "=f"(v.y), "=f"(v.z), "=f"(v.w)
               : "r"(addr)
               : "memory");
#else
  (void)smem;
  (void)rank;
#endif
  return v;
}

// Adds the cluster's partials and hands each of this CTA's share of the 8-column vectors to
// store(row, col, v[8]). partial(r, col) is the address of this CTA's fp32 partial of row r, columns
// col .. col + 7 (the same layout in every CTA); vectors = rows * D / 8. Ends with a barrier, so no
// CTA leaves while another still reads its shared memory.
template <int kThreads, class Partial, class Store>
__device__ __forceinline__ void cluster_sum(int rows, int vecs_per_row, Partial&& partial, Store&& store) {
  cluster_barrier();  // every CTA's partial is in its shared memory
  const int ctas = cluster_ctas();
  const int rank = int(cute::block_rank_in_cluster());
  for (int c = rank * kThreads + int(threadIdx.x); c < rows * vecs_per_row; c += ctas * kThreads) {
    const int r = c / vecs_per_row;
    const int col = (c % vecs_per_row) * 8;
    const float* src = partial(r, col);
    float v[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll 4
    for (int s = 0; s < ctas; ++s) {
      const float4 lo = load_peer_f4(src, s), hi = load_peer_f4(src + 4, s);
      v[0] += lo.x; v[1] += lo.y; v[2] += lo.z; v[3] += lo.w;
      v[4] += hi.x; v[5] += hi.y; v[6] += hi.z; v[7] += hi.w;
    }
    store(r, col, v);
  }
  cluster_barrier();
}

}  // namespace flashsigmoid::cuda::decode
