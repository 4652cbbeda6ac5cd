// The d(bias) partial of one CTA: every thread's sum of dS added in a fixed order (a shuffle tree
// per warp, then the warps in order), so the backward's d(bias) is bitwise reproducible. Shared by
// every CUDA backward kernel.
#pragma once

namespace flashsigmoid::cuda {

// Writes the sum of `value` over the kNWarps warps of threads [0, 32 kNWarps) (tid: the thread's index
// among them) to *dst, from thread 0. warp_sums: kNWarps floats of shared memory that no thread reads
// or writes between this call's sync() and the previous call's read by thread 0. sync(): a barrier over
// exactly those threads (__syncthreads, or a named barrier when other warps run a different role).
template <int kNWarps, class Sync>
__device__ __forceinline__ void store_block_sum(float value, float* warp_sums, int tid, float* dst, Sync&& sync) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) value += __shfl_xor_sync(0xffffffffu, value, off);
  if ((tid & 31) == 0) warp_sums[tid >> 5] = value;
  sync();
  if (tid == 0) {
    float sum = 0.0f;
#pragma unroll
    for (int w = 0; w < kNWarps; ++w) sum += warp_sums[w];
    *dst = sum;
  }
}

}  // namespace flashsigmoid::cuda
