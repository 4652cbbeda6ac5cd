// The backward's stream-ordered workspaces and the small kernels that finish its default (atomic dQ)
// mode, shared by the portable and the Hopper backward launchers: the d(bias) partials, the zeroed
// fp32 dQ accumulator, dQ's conversion and d(bias)'s reduction. cudaMallocAsync / cudaMemsetAsync /
// cudaFreeAsync on the call's stream: no host synchronisation, so the backward can be captured in a
// CUDA graph.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "cuda/portable/bwd_kernel.cuh"  // dq_convert_kernel, dbias_reduce_kernel
#include "cuda/portable/launch.hpp"      // check_cuda

namespace flashsigmoid::cuda::portable {

// `who` names the launcher in error messages ("backward", "Hopper backward").
struct BwdWorkspace {
  float* part = nullptr;      // d(bias) partials: n_part floats, only when p.dbias is set
  float* dq_accum = nullptr;  // zeroed fp32 [rows_q, Hq, D], only when asked for
  int* flags = nullptr;       // zeroed int32 counters, only when asked for (zeroed_flags)
  const char* who = "backward";

  BwdWorkspace(const detail::BwdParams& p, std::int64_t n_part, bool with_dq_accum, int head_dim,
               cudaStream_t stream, const char* who_) : who(who_) {
    if (p.dbias != nullptr && n_part > 0) {
      check(cudaMallocAsync(reinterpret_cast<void**>(&part), std::size_t(n_part) * sizeof(float), stream),
            "cudaMallocAsync(", " d(bias) workspace)");
    }
    const std::size_t accum_bytes = std::size_t(p.rows_q * p.heads_q * head_dim) * sizeof(float);
    if (with_dq_accum && accum_bytes > 0) {
      check(cudaMallocAsync(reinterpret_cast<void**>(&dq_accum), accum_bytes, stream), "cudaMallocAsync(",
            " dQ workspace)");
      check(cudaMemsetAsync(dq_accum, 0, accum_bytes, stream), "cudaMemsetAsync(", " dQ workspace)");
    }
  }

  // n zeroed int32 counters (the Hopper backward's deterministic mode orders its dQ adds by them).
  int* zeroed_flags(std::int64_t n, cudaStream_t stream) {
    if (n > 0) {
      check(cudaMallocAsync(reinterpret_cast<void**>(&flags), std::size_t(n) * sizeof(int), stream),
            "cudaMallocAsync(", " dQ order flags)");
      check(cudaMemsetAsync(flags, 0, std::size_t(n) * sizeof(int), stream), "cudaMemsetAsync(", " dQ order flags)");
    }
    return flags;
  }

  void release(cudaStream_t stream) {
    if (flags != nullptr) check(cudaFreeAsync(flags, stream), "cudaFreeAsync(", " dQ order flags)");
    if (dq_accum != nullptr) check(cudaFreeAsync(dq_accum, stream), "cudaFreeAsync(", " dQ workspace)");
    if (part != nullptr) check(cudaFreeAsync(part, stream), "cudaFreeAsync(", " d(bias) workspace)");
  }

  // dQ = scale * dq_accum, rows of each sequence only.
  template <class Traits>
  void convert_dq(const detail::BwdParams& p, cudaStream_t stream) const {
    constexpr int kConvertRows = 64;  // dq_convert_kernel's rows per CTA
    const std::int64_t blocks = (p.seqlen_q + kConvertRows - 1) / kConvertRows;
    if (blocks > 0 && p.batch > 0) {
      const dim3 grid(unsigned(blocks), unsigned(p.heads_q), unsigned(p.batch));
      dq_convert_kernel<Traits><<<grid, 128, 0, stream>>>(p, dq_accum);
      check(cudaGetLastError(), "", " dQ conversion launch");
    }
  }

  // d(bias) = the sum of the part_blocks partials per (batch, head). kUnit: the kernel's symbol
  // instance (bwd_kernel.cuh: the sm_90a-only units use their own).
  template <int kUnit = 0>
  void reduce_dbias(const detail::BwdParams& p, std::int64_t part_blocks, cudaStream_t stream) const {
    const int threads = 128;
    const unsigned blocks = unsigned((p.heads_q + threads - 1) / threads);
    dbias_reduce_kernel<kUnit><<<blocks, threads, 0, stream>>>(part, p.dbias, int(p.batch), int(p.heads_q),
                                                               part != nullptr ? int(part_blocks) : 0);
    check(cudaGetLastError(), "", " d(bias) reduction launch");
  }

 private:
  // check_cuda with the message "<before><who><after>", built only on failure.
  void check(cudaError_t err, const char* before, const char* after) const {
    if (err != cudaSuccess) check_cuda(err, (std::string(before) + who + after).c_str());
  }
};

}  // namespace flashsigmoid::cuda::portable
