// Append: k_new / v_new [B, Nq_new, Hkv, D] written into the cache at positions
// cache_seqlens[b] .. + Nq_new - 1 of each sequence. A CTA copies kTokens new tokens of one
// sequence (every kv head, 16-byte vectors), after checking that sequence's values: a sequence
// with an out-of-range length, cache row or page id is left unwritten (its attention rows are NaN).
#pragma once

#include <cstdint>

#include "cuda/decode/sequence.cuh"

namespace flashsigmoid::cuda::decode {

struct AppendShape {
  static constexpr int kThreads = 128;
  static constexpr int kTokens = 16;  // new tokens per CTA (decode: one CTA per sequence)
};

template <int D>
__global__ void __launch_bounds__(AppendShape::kThreads) append_kernel(const __grid_constant__ detail::KVCacheParams p) {
  const std::int64_t b = blockIdx.x;
  const SeqCache s = load_seq(p, b);
  // Every page of the sequence, not only those written: a sequence is appended only when its
  // attention will run, so that a rejected sequence's cache stays as it was.
  const bool ok = pages_in_range(p, b, 0, pages_of(p, s.len_k)) && s.ok;
  if (!ok) return;

  constexpr int kVecs = D / 8;  // 16-byte vectors per row
  const int t0 = blockIdx.y * AppendShape::kTokens;
  const int tokens = min(AppendShape::kTokens, int(p.seqlen_q) - t0);
  const int work = tokens * int(p.heads_kv) * kVecs;
  for (int w = threadIdx.x; w < work; w += AppendShape::kThreads) {
    const int vec = w % kVecs;
    const int hk = (w / kVecs) % int(p.heads_kv);
    const int i = t0 + w / (kVecs * int(p.heads_kv));
    const KeySlot dst = locate_key(p, b, s, s.cached + i);  // in range: checked above
    const auto* kn = static_cast<const uint4*>(p.k_new) + (p.k_new_stride.offset(b, i, hk) / 8 + vec);
    const auto* vn = static_cast<const uint4*>(p.v_new) + (p.v_new_stride.offset(b, i, hk) / 8 + vec);
    auto* kc = static_cast<uint4*>(p.k_cache) + (element_offset(p.k_stride, dst, hk) / 8 + vec);
    auto* vc = static_cast<uint4*>(p.v_cache) + (element_offset(p.v_stride, dst, hk) / 8 + vec);
    *kc = *kn;
    *vc = *vn;
  }
}

}  // namespace flashsigmoid::cuda::decode
