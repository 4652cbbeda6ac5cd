// BwdWorkspace (bwd_workspace.hpp) and its two finishing kernels, compiled once for every built
// architecture: every backward (portable or Hopper) launches the same kernels.
#include "cuda/common/bwd_workspace.hpp"

#include <cstdint>
#include <string>

#include <cutlass/array.h>
#include <cutlass/numeric_conversion.h>
#include <cutlass/numeric_types.h>

#include "common/score_transform.hpp"  // SeqInfo
#include "cuda/common/check.hpp"

namespace flashsigmoid::cuda {

// dQ = scale * dq_accum (dq_accum_strides), in dQ's dtype and strides, for the kRows rows blockIdx.x
// of sequence blockIdx.z, head blockIdx.y; 8 columns (16 bytes of dQ) per thread and step. Rows past
// the sequence end are not written.
template <int D, class Element>
__global__ void __launch_bounds__(128)
    dq_convert_kernel(const __grid_constant__ detail::BwdParams p, const float* __restrict__ dq_accum) {
  constexpr int kRows = 64;
  constexpr int kVec = 8;
  constexpr int kVecsPerRow = D / kVec;
  const int h = blockIdx.y;
  const int b = blockIdx.z;
  const detail::SeqInfo seq = detail::seq_info(p, b);
  const std::int64_t r0 = std::int64_t(blockIdx.x) * kRows;
  if (r0 >= seq.len_q) return;
  const int rows = seq.len_q - r0 < kRows ? int(seq.len_q - r0) : kRows;
  const detail::OperandStrides acc_stride = dq_accum_strides<D>(p);
  cutlass::NumericArrayConverter<Element, float, kVec> conv;
  for (int idx = threadIdx.x; idx < rows * kVecsPerRow; idx += blockDim.x) {
    const std::int64_t row = seq.q_begin + r0 + idx / kVecsPerRow;
    const int col = (idx % kVecsPerRow) * kVec;
    const float4* src = reinterpret_cast<const float4*>(dq_accum + acc_stride.offset(b, row, h) + col);
    const float4 lo = src[0];
    const float4 hi = src[1];
    cutlass::Array<float, kVec> v;
    v[0] = lo.x; v[1] = lo.y; v[2] = lo.z; v[3] = lo.w;
    v[4] = hi.x; v[5] = hi.y; v[6] = hi.z; v[7] = hi.w;
#pragma unroll
    for (int i = 0; i < kVec; ++i) v[i] *= p.scale;
    const cutlass::Array<Element, kVec> out = conv(v);
    *reinterpret_cast<uint4*>(static_cast<Element*>(p.dq) + p.dq_stride.offset(b, row, h) + col) =
        *reinterpret_cast<const uint4*>(&out);
  }
}

// dbias[h] = sum over b, then over blocks, of part[(b * heads + h) * blocks + block], in that fixed
// order (float64 accumulation; one thread per head).
__global__ void dbias_reduce_kernel(const float* __restrict__ part, float* __restrict__ dbias, int batch, int heads,
                                    int blocks) {
  const int h = blockIdx.x * blockDim.x + threadIdx.x;
  if (h >= heads) return;
  double s = 0.0;
  for (int b = 0; b < batch; ++b) {
    const float* row = part + (std::int64_t(b) * heads + h) * blocks;
    for (int m = 0; m < blocks; ++m) s += double(row[m]);
  }
  dbias[h] = float(s);
}

namespace {

template <int D, class Element>
cudaError_t launch_dq_convert(const detail::BwdParams& p, const float* dq_accum, cudaStream_t stream) {
  constexpr int kConvertRows = 64;  // dq_convert_kernel's rows per CTA
  const std::int64_t blocks = (p.seqlen_q + kConvertRows - 1) / kConvertRows;
  if (blocks <= 0 || p.batch <= 0) return cudaSuccess;
  const dim3 grid(unsigned(blocks), unsigned(p.heads_q), unsigned(p.batch));
  dq_convert_kernel<D, Element><<<grid, 128, 0, stream>>>(p, dq_accum);
  return cudaGetLastError();
}

// Every supported head dim (validation allows no other), so this unit depends on no build option.
template <class Element>
cudaError_t launch_dq_convert(const detail::BwdParams& p, const float* dq_accum, cudaStream_t stream) {
  switch (p.head_dim) {
    case 32: return launch_dq_convert<32, Element>(p, dq_accum, stream);
    case 64: return launch_dq_convert<64, Element>(p, dq_accum, stream);
    case 96: return launch_dq_convert<96, Element>(p, dq_accum, stream);
    case 128: return launch_dq_convert<128, Element>(p, dq_accum, stream);
    case 256: return launch_dq_convert<256, Element>(p, dq_accum, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace

BwdWorkspace::BwdWorkspace(const detail::BwdParams& p, std::int64_t n_part, bool with_dq_accum, cudaStream_t stream,
                           const char* who)
    : who_(who) {
  if (p.dbias != nullptr && n_part > 0) {
    check(cudaMallocAsync(reinterpret_cast<void**>(&part), std::size_t(n_part) * sizeof(float), stream),
          "cudaMallocAsync(", " d(bias) workspace)");
  }
  const std::size_t accum_bytes = std::size_t(p.rows_q * p.heads_q * p.head_dim) * sizeof(float);
  if (with_dq_accum && accum_bytes > 0) {
    check(cudaMallocAsync(reinterpret_cast<void**>(&dq_accum), accum_bytes, stream), "cudaMallocAsync(",
          " dQ workspace)");
    check(cudaMemsetAsync(dq_accum, 0, accum_bytes, stream), "cudaMemsetAsync(", " dQ workspace)");
  }
}

int* BwdWorkspace::zeroed_flags(std::int64_t n, cudaStream_t stream) {
  if (n > 0) {
    check(cudaMallocAsync(reinterpret_cast<void**>(&flags), std::size_t(n) * sizeof(int), stream), "cudaMallocAsync(",
          " dQ order flags)");
    check(cudaMemsetAsync(flags, 0, std::size_t(n) * sizeof(int), stream), "cudaMemsetAsync(", " dQ order flags)");
  }
  return flags;
}

void BwdWorkspace::release(cudaStream_t stream) {
  if (flags != nullptr) check(cudaFreeAsync(flags, stream), "cudaFreeAsync(", " dQ order flags)");
  if (dq_accum != nullptr) check(cudaFreeAsync(dq_accum, stream), "cudaFreeAsync(", " dQ workspace)");
  if (part != nullptr) check(cudaFreeAsync(part, stream), "cudaFreeAsync(", " d(bias) workspace)");
}

void BwdWorkspace::convert_dq(const detail::BwdParams& p, cudaStream_t stream) const {
  const cudaError_t err = p.dtype == DType::bfloat16 ? launch_dq_convert<cutlass::bfloat16_t>(p, dq_accum, stream)
                                                     : launch_dq_convert<cutlass::half_t>(p, dq_accum, stream);
  check(err, "", " dQ conversion launch");
}

void BwdWorkspace::reduce_dbias(const detail::BwdParams& p, std::int64_t part_blocks, cudaStream_t stream) const {
  const int threads = 128;
  const unsigned blocks = unsigned((p.heads_q + threads - 1) / threads);
  dbias_reduce_kernel<<<blocks, threads, 0, stream>>>(part, p.dbias, int(p.batch), int(p.heads_q),
                                                      part != nullptr ? int(part_blocks) : 0);
  check(cudaGetLastError(), "", " d(bias) reduction launch");
}

void BwdWorkspace::check(cudaError_t err, const char* before, const char* after) const {
  if (err != cudaSuccess) check_cuda(err, (std::string(before) + who_ + after).c_str());
}

}  // namespace flashsigmoid::cuda
