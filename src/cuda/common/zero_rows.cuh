// Zeros the rows of a packed varlen output ([total, H, D]) that lie past the last sequence,
// rows [cu_seqlens[B], total). They belong to no sequence, so no attention kernel writes them, but
// every output element is promised to be written. cu_seqlens lives on the device and the host must
// not read it (that would synchronise), so the kernel reads where the tail starts; a call with no
// tail costs one small launch.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "common/params.hpp"

namespace flashsigmoid::cuda {

template <class Element>
__global__ void zero_rows_from_kernel(Element* base, detail::OperandStrides s, int heads, int dim,
                                      const std::int32_t* first_row, std::int64_t rows) {
  const std::int64_t first = *first_row;
  const std::int64_t per_row = std::int64_t(heads) * dim;
  const std::int64_t n = (rows - first) * per_row;  // <= 0: no tail
  const std::int64_t step = std::int64_t(gridDim.x) * blockDim.x;
  for (std::int64_t e = std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < n; e += step) {
    const std::int64_t r = first + e / per_row, in_row = e % per_row;
    base[s.offset(0, r, in_row / dim) + in_row % dim] = Element(0.0f);
  }
}

// Rows [*first_row, rows) of every head of `base` (strides s, last dim contiguous) become 0, on
// `stream`. Returns the launch's error.
template <class Element>
cudaError_t zero_rows_from(void* base, const detail::OperandStrides& s, std::int64_t heads, std::int64_t dim,
                           const std::int32_t* first_row, std::int64_t rows, cudaStream_t stream) {
  if (rows <= 0 || heads <= 0) return cudaSuccess;
  constexpr int kThreads = 256;
  // Enough blocks for a long tail; a grid-stride loop covers the rest. The tail is usually empty
  // or a few padding rows, so the grid stays small.
  const std::int64_t elems = rows * heads * dim;
  const int blocks = static_cast<int>(std::min<std::int64_t>((elems + kThreads - 1) / kThreads, 128));
  zero_rows_from_kernel<Element><<<blocks, kThreads, 0, stream>>>(static_cast<Element*>(base), s,
                                                                  static_cast<int>(heads), static_cast<int>(dim),
                                                                  first_row, rows);
  return cudaGetLastError();
}

}  // namespace flashsigmoid::cuda
