// Where the keys of one sequence of a KV cache live, and whether its device-side values
// (cache_seqlens, cache_batch_idx, page ids) are in range. Validation cannot read them without a
// host sync, so the append and attention kernels check them here: a sequence that fails is not
// appended and its output rows are NaN, and nothing outside the cache is ever addressed.
#pragma once

#include <cstdint>

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

// d = a * b + c with a 32 x 32 -> 64-bit multiply (one IMAD.WIDE.U32).
__device__ __forceinline__ std::uint64_t mad_wide(std::uint32_t a, std::uint32_t b, std::uint64_t c) {
  std::uint64_t d;
  asm("mad.wide.u32 %0, %1, %2, %3;" : "=l"(d) : "r"(a), "r"(b), "l"(c));
  return d;
}

// Where the attention kernel's thread reads its K and V rows: the (sequence, kv head, column) part
// of the address computed once, so that a key costs two wide multiply-adds (page, slot) instead of
// 64-bit index arithmetic with the strides re-read per row, which was most of a short decode CTA's
// instructions. Byte strides fit in 32 bits (elements below 2^31 at 2 bytes, checked on the host by
// check_shape); a dense cache is one page (id 0) whose slot is the key's position. Zero-filled rows
// (past the sequence, or a bad page id) name page 0 slot 0 and read nothing (cp.async src-size 0).
template <class Element>
struct KVRowBase {
  std::uint64_t k, v;                          // byte addresses of (page 0, slot 0)
  std::uint32_t k_page, k_row, v_page, v_row;  // byte strides

  __device__ __forceinline__ KVRowBase(const detail::KVCacheParams& p, const SeqCache& s, std::int64_t head, int col) {
    constexpr std::uint32_t kBytes = sizeof(Element);
    const std::int64_t row = p.block_table == nullptr ? s.row : 0;
    k = reinterpret_cast<std::uint64_t>(static_cast<const Element*>(p.k) +
                                        (row * p.k_stride.batch + head * p.k_stride.head + col));
    v = reinterpret_cast<std::uint64_t>(static_cast<const Element*>(p.v) +
                                        (row * p.v_stride.batch + head * p.v_stride.head + col));
    k_page = std::uint32_t(p.k_stride.batch) * kBytes;
    v_page = std::uint32_t(p.v_stride.batch) * kBytes;
    k_row = std::uint32_t(p.k_stride.row) * kBytes;
    v_row = std::uint32_t(p.v_stride.row) * kBytes;
  }
  __device__ __forceinline__ const Element* key(std::uint32_t page, std::uint32_t slot) const {
    return reinterpret_cast<const Element*>(mad_wide(page, k_page, mad_wide(slot, k_row, k)));
  }
  __device__ __forceinline__ const Element* value(std::uint32_t page, std::uint32_t slot) const {
    return reinterpret_cast<const Element*>(mad_wide(page, v_page, mad_wide(slot, v_row, v)));
  }
};

__device__ __forceinline__ std::int64_t element_offset(const detail::OperandStrides& st, const KeySlot& k,
                                                       std::int64_t head) {
  return k.page * st.batch + k.slot * st.row + head * st.head;
}

// Per thread: true when a page id of pages [begin, end) of sequence b that this thread reads is out
// of range (dense caches have none). The ids are split over the block's threads.
__device__ __forceinline__ bool pages_out_of_range(const detail::KVCacheParams& p, std::int64_t b, std::int64_t begin,
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
  return bad;
}

// Block-wide: true when every page id of pages [begin, end) of sequence b is in range. Every thread
// of the block must call it.
__device__ __forceinline__ bool pages_in_range(const detail::KVCacheParams& p, std::int64_t b, std::int64_t begin,
                                               std::int64_t end) {
  return !__syncthreads_or(pages_out_of_range(p, b, begin, end));
}

// Pages that hold keys [0, len_k) (0 for a dense cache).
__device__ __forceinline__ std::int64_t pages_of(const detail::KVCacheParams& p, int len_k) {
  return p.block_table == nullptr ? 0 : (len_k + p.page_size - 1) / p.page_size;
}

}  // namespace flashsigmoid::cuda::decode
