// The backward's stream-ordered workspaces and the kernels that finish them, shared by the portable
// and the Hopper backward launchers: the d(bias) partials, the zeroed fp32 dQ accumulator (and the
// Hopper deterministic mode's order flags), dQ's conversion and d(bias)'s reduction.
// cudaMallocAsync / cudaMemsetAsync / cudaFreeAsync on the call's stream: no host synchronisation, so
// the backward can be captured in a CUDA graph. Host code and kernels: bwd_workspace.cu (built once).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "common/params.hpp"

namespace flashsigmoid::cuda {

// The fp32 dQ workspace: contiguous [rows_q, Hq, D] (dense: [B, Nq, Hq, D]), rows addressed like q's
// (varlen: packed rows, batch stride 0). The kernels add unscaled dS K into it.
template <int D>
__host__ __device__ __forceinline__ detail::OperandStrides dq_accum_strides(const detail::BwdParams& p) {
  detail::OperandStrides s;
  s.head = D;
  s.row = p.heads_q * D;
  s.batch = p.cu_seqlens_q != nullptr ? 0 : p.seqlen_q * s.row;
  return s;
}

class BwdWorkspace {
 public:
  float* part = nullptr;      // d(bias) partials: n_part floats, only when p.dbias is set
  float* dq_accum = nullptr;  // zeroed fp32 [rows_q, Hq, D] (dq_accum_strides), only when asked for
  int* flags = nullptr;       // zeroed int32 counters, only when asked for (zeroed_flags)

  // who: the launcher, in error messages ("backward", "Hopper backward").
  BwdWorkspace(const detail::BwdParams& p, std::int64_t n_part, bool with_dq_accum, cudaStream_t stream,
               const char* who);
  // n zeroed int32 counters (the Hopper backward's deterministic mode orders its dQ adds by them).
  int* zeroed_flags(std::int64_t n, cudaStream_t stream);
  void release(cudaStream_t stream);
  // dQ = scale * dq_accum, in dQ's dtype and strides, rows of each sequence only.
  void convert_dq(const detail::BwdParams& p, cudaStream_t stream) const;
  // d(bias)[h] = the sum over batch, then over the part_blocks partials of (batch, h), in that fixed
  // order (partials at part[(b * Hq + h) * part_blocks + block]).
  void reduce_dbias(const detail::BwdParams& p, std::int64_t part_blocks, cudaStream_t stream) const;

 private:
  const char* who_;
  // check_cuda with the message "<before><who><after>", built only on failure.
  void check(cudaError_t err, const char* before, const char* after) const;
};

}  // namespace flashsigmoid::cuda
