// Resolved problem description handed from validation to the backends.
// Plain data (no std:: containers) so it can be passed to a CUDA kernel by value.
#pragma once

#include <cstdint>

#include "flashsigmoid/flashsigmoid.hpp"

// Host and device (CUDA units) or plain inline (C++ units): the helpers shared by every backend.
#if defined(__CUDACC__)
#define FS_HD __host__ __device__ __forceinline__
#else
#define FS_HD inline
#endif

namespace flashsigmoid::detail {

// Strides (in elements) of one [.., N, H, D] operand; the D stride is 1.
struct OperandStrides {
  std::int64_t batch = 0;  // 0 for varlen (rows are addressed through cu_seqlens)
  std::int64_t row = 0;
  std::int64_t head = 0;

  // Element offset of (batch b, row, head h), d = 0. Varlen: row counts from the packed start.
  FS_HD std::int64_t offset(std::int64_t b, std::int64_t r, std::int64_t h) const {
    return b * batch + r * row + h * head;
  }
};

struct AttnParams {
  DType dtype = DType::float32;
  Device device{};

  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  void* o = nullptr;
  OperandStrides q_stride, k_stride, v_stride, o_stride;

  std::int64_t batch = 0;
  std::int64_t seqlen_q = 0;  // dense: Nq; varlen: max_seqlen_q
  std::int64_t seqlen_k = 0;  // dense: Nk; varlen: max_seqlen_k
  std::int64_t heads_q = 0;
  std::int64_t heads_kv = 0;
  std::int64_t head_dim = 0;

  // Varlen: sequence b spans rows [cu_seqlens[b], cu_seqlens[b+1]). Null when dense.
  const std::int32_t* cu_seqlens_q = nullptr;
  const std::int32_t* cu_seqlens_k = nullptr;
  std::int64_t total_q = 0;  // varlen: rows of the packed q / k tensors (the Hopper kernel's TMA
  std::int64_t total_k = 0;  // descriptors span them); 0 when dense

  float scale = 1.0f;
  BiasMode bias_mode = BiasMode::neg_log_seqlen_k;
  float bias_value = 0.0f;
  const float* bias = nullptr;  // [Hq] when bias_mode == per_head

  const float* alibi_slopes = nullptr;  // null = no ALiBi
  std::int64_t alibi_batch_stride = 0;  // 0 for [Hq] slopes, Hq for [B, Hq]

  bool causal = false;
  std::int64_t window_left = -1;  // -1 = unbounded
  std::int64_t window_right = -1;
  // Options::positions: query i sits at key position i + position_diag (all sequences); when
  // false, at i + Nk - Nq of its own sequence (bottom-right).
  bool global_positions = false;
  std::int64_t position_diag = 0;  // q offset - k offset

  void* stream = nullptr;
  bool deterministic = false;
  int num_threads = 0;

  bool is_varlen() const { return cu_seqlens_q != nullptr; }
  std::int64_t group_size() const { return heads_q / heads_kv; }
};

struct BwdParams : AttnParams {
  const void* dout = nullptr;
  void* dq = nullptr;
  void* dk = nullptr;
  void* dv = nullptr;
  OperandStrides do_stride, dq_stride, dk_stride, dv_stride;
  float* dbias = nullptr;  // [Hq], null = not requested
  std::int64_t rows_q = 0;  // rows of q and dQ: B * Nq dense, q.shape[0] varlen (sizes dQ workspaces)
};

// Attention over a KV cache, resolved by validation. The AttnParams part describes the query side
// (q, o, Hq, D, scale, bias, masks, ALiBi; k / v point at the caches with their strides, seqlen_q =
// Nq_new, seqlen_k = cache_capacity (a bound on every Nk_b that needs no device values), batch = B);
// the rest says where each sequence's keys live.
struct KVCacheParams : AttnParams {
  const std::int32_t* cache_seqlens = nullptr;  // [B]
  const std::int32_t* block_table = nullptr;    // [B, max_pages] when paged, else null
  std::int64_t block_table_stride = 0;          // elements between rows of block_table
  std::int64_t max_pages = 0;
  std::int64_t page_size = 0;                   // paged: rows per page; dense: 0
  std::int64_t num_pages = 0;                   // paged: pages in the cache
  const std::int32_t* cache_batch_idx = nullptr;  // dense, optional [B]
  std::int64_t cache_batch = 0;                 // dense: B_cache, the rows cache_batch_idx may name
  std::int64_t cache_capacity = 0;              // dense: Nmax; paged: max_pages * page_size
  void* k_cache = nullptr;                      // writable views for the append (same as k / v)
  void* v_cache = nullptr;
  const void* k_new = nullptr;                  // null = nothing to append
  const void* v_new = nullptr;
  OperandStrides k_new_stride, v_new_stride;
  int num_splits = 0;                           // resolved (>= 1) by the backend's heuristic when 0
};

// The most key-range splits forward_with_kvcache accepts (bounds the fp32 partials' workspace).
constexpr int kMaxKVCacheSplits = 256;

}  // namespace flashsigmoid::detail
