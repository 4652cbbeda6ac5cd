// Where the keys of one sequence of a KV cache live, and whether its device-side values
// (cache_seqlens, cache_batch_idx, page ids) are in range. Validation cannot read them without a
// host sync, so the append and attention kernels check them here: a sequence that fails is not
// appended and its output rows are NaN, and nothing outside the cache is ever addressed.
#pragma once

#include <cstdint>

#include <cutlass/fast_math.h>

#include "common/params.hpp"

namespace flashsigmoid::cuda::decode {

struct SeqCache {
  int len_k = 0;         // Nk_b: cached keys plus the appended ones; 0 when !ok
  int cached = 0;        // cache_seqlens[b]
  std::int64_t row = 0;  // dense: the cache row of this sequence
  bool ok = false;       // cache_seqlens / cache row in range (page ids are checked apart)
};

__device__ __forceinline__ SeqCache load_seq(const detail::KVCacheParams& p, std::int64_t b) {
  SeqCache s;
  const std::int64_t cached = p.cache_seqlens[b];
  const std::int64_t len_k = cached + (p.k_new != nullptr ? p.seqlen_q : 0);
  s.ok = cached >= 0 && len_k <= p.cache_capacity && len_k < (std::int64_t(1) << 31);
  if (p.block_table == nullptr) {
    s.row = p.cache_batch_idx != nullptr ? p.cache_batch_idx[b] : b;
    s.ok = s.ok && s.row >= 0 && s.row < p.cache_batch;
  }
  if (s.ok) {
    s.cached = int(cached);
    s.len_k = int(len_k);
  }
  return s;
}

// Key position t of sequence b: (page, slot) of a paged cache, (cache row, t) of a dense one.
// `ok` is false for a page id outside [0, num_pages); the caller must then not dereference it.
struct KeySlot {
  std::int64_t page;
  std::int64_t slot;
  bool ok;
};

__device__ __forceinline__ KeySlot locate_key(const detail::KVCacheParams& p, std::int64_t b, const SeqCache& s,
                                              int t) {
  if (p.block_table == nullptr) return {s.row, t, true};
  const int ps = int(p.page_size);
  const int idx = t / ps;
  const std::int64_t page = p.block_table[b * p.block_table_stride + idx];
  return {page, t - idx * ps, page >= 0 && page < p.num_pages};
}

// Key t of a paged sequence whose page id was loaded beforehand (the attention kernel fetches a key
// block's page ids one iteration before its loads, so no cp.async waits on a block_table read).
__device__ __forceinline__ KeySlot paged_slot(const detail::KVCacheParams& p, const cutlass::FastDivmod& page_div,
                                              int t, std::int32_t page) {
  int idx, slot;
  page_div(idx, slot, t);
  return {page, slot, page >= 0 && page < p.num_pages};
}

// The page id of key t of sequence b (t < the sequence's length, so inside its block_table row).
__device__ __forceinline__ std::int32_t page_id(const detail::KVCacheParams& p, const cutlass::FastDivmod& page_div,
                                                std::int64_t b, int t) {
  int idx, slot;
  page_div(idx, slot, t);
  return p.block_table[b * p.block_table_stride + idx];
}

__device__ __forceinline__ std::int64_t element_offset(const detail::OperandStrides& st, const KeySlot& k,
                                                       std::int64_t head) {
  return k.page * st.batch + k.slot * st.row + head * st.head;
}

// Block-wide: true when every page id of pages [begin, end) of sequence b is in range (dense
// caches have none). Every thread of the block must call it.
__device__ __forceinline__ bool pages_in_range(const detail::KVCacheParams& p, std::int64_t b, std::int64_t begin,
                                               std::int64_t end) {
  bool bad = false;
  if (p.block_table != nullptr) {
    // No short-circuit: the loads of one unrolled batch are then independent and in flight together.
#pragma unroll 8
    for (std::int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
      const std::int64_t page = p.block_table[b * p.block_table_stride + i];
      bad |= (page < 0) | (page >= p.num_pages);
    }
  }
  return !__syncthreads_or(bad);
}

// Pages that hold keys [0, len_k) (0 for a dense cache).
__device__ __forceinline__ std::int64_t pages_of(const detail::KVCacheParams& p, int len_k) {
  return p.block_table == nullptr ? 0 : (len_k + p.page_size - 1) / p.page_size;
}

}  // namespace flashsigmoid::cuda::decode
