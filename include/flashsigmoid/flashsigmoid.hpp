// flashsigmoid: sigmoid self-attention, O = sigmoid(scale * Q K^T + b + alibi) V.
//
// The public C++ API. Every backend (CPU, CUDA) takes the same tensor views and
// the same Options; validation happens once, in forward()/backward(), and bad
// input throws flashsigmoid::Error naming the argument, what it got and what is
// accepted.
#pragma once

#include <array>
#include <cstdint>
#include <initializer_list>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace flashsigmoid {

// Thrown for every rejected input and every backend failure.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

enum class DType : int { float32 = 0, float16 = 1, bfloat16 = 2, float64 = 3, int32 = 4 };
enum class DeviceType : int { cpu = 0, cuda = 1 };

struct Device {
  DeviceType type = DeviceType::cpu;
  int index = 0;
};

const char* to_string(DType dtype);
const char* to_string(DeviceType type);
std::size_t element_size(DType dtype);

constexpr int kMaxRank = 4;

// A non-owning view of a strided tensor. Shapes and strides are in elements.
// rank == 0 means "not given" (for optional tensors).
struct TensorView {
  void* data = nullptr;
  DType dtype = DType::float32;
  Device device{};
  int rank = 0;
  std::array<std::int64_t, kMaxRank> shape{};
  std::array<std::int64_t, kMaxRank> stride{};

  bool defined() const { return rank > 0; }
  std::int64_t numel() const;
  // A row-major (contiguous) view over `data`.
  static TensorView contiguous(void* data, DType dtype, std::initializer_list<std::int64_t> shape,
                               Device device = {});
};

enum class BiasMode : int {
  neg_log_seqlen_k = 0,  // b = -log(Nk), per sequence (per varlen sequence: its own Nk). The default.
  scalar = 1,            // b = Options::bias_value
  per_head = 2,          // b = Options::bias[h], fp32 [Hq], learnable (backward gives d(bias))
};

// The one options struct shared by every backend.
struct Options {
  std::optional<float> scale;  // default 1/sqrt(D)
  BiasMode bias_mode = BiasMode::neg_log_seqlen_k;
  float bias_value = 0.0f;  // used when bias_mode == scalar
  TensorView bias;          // fp32 [Hq], used when bias_mode == per_head

  bool causal = false;            // bottom-right aligned when Nq != Nk
  std::int64_t window_left = -1;  // sliding window (left, right); -1 = unbounded
  std::int64_t window_right = -1;
  TensorView alibi_slopes;  // optional fp32 [Hq] or [B, Hq]: adds -slope * |i + Nk - Nq - j|

  // Global positions, for a call that sees one block of a longer sequence (context parallelism).
  // When set, query row i is at position q + i and key j at position k + j (varlen: i and j count
  // from each sequence's start; every sequence gets the same offsets), and causal, the window and
  // ALiBi compare these positions: causal keeps key j iff k + j <= q + i, the window keeps
  // q + i - left <= k + j <= q + i + right, ALiBi adds -slope * |(q + i) - (k + j)|. Unset is the
  // bottom-right rule, i.e. q = Nk - Nq and k = 0 per sequence. Offsets are >= 0 and every position
  // stays below 2^29. The default bias is still -log of this call's Nk: a caller that splits a
  // sequence passes the global -log(N) as bias_mode scalar.
  struct PositionOffsets {
    std::int64_t q = 0;
    std::int64_t k = 0;
  };
  std::optional<PositionOffsets> positions;

  // Varlen: q/k/v packed as [total, H, D]; cu_seqlens_* int32 [B + 1] on the
  // tensors' device; max_seqlen_* bound every sequence's length.
  TensorView cu_seqlens_q;
  TensorView cu_seqlens_k;
  std::int64_t max_seqlen_q = 0;
  std::int64_t max_seqlen_k = 0;

  void* stream = nullptr;      // CUDA: the cudaStream_t to run on (nullptr = default stream)
  bool deterministic = false;  // backward: bitwise reproducible results (CUDA: false adds dQ with atomics,
                               // faster; see README "Determinism and memory"; the CPU path always is)
  int num_threads = 0;         // CPU: worker threads (0 = all hardware threads)
};

// out = sigmoid attention of (q, k, v). Shapes:
//   dense:  q, out [B, Nq, Hq, D];  k, v [B, Nk, Hkv, D]
//   varlen: q, out [total_q, Hq, D]; k, v [total_k, Hkv, D] with cu_seqlens in options
// Last dimension contiguous; other strides free. Hq % Hkv == 0.
void forward(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& out,
             const Options& options = {});

// Gradients written by backward(). dq/dk/dv are shaped like q/k/v, in the same
// dtype; dbias (fp32 [Hq]) is written only when given, and is only accepted
// with bias_mode == per_head.
struct Gradients {
  TensorView dq;
  TensorView dk;
  TensorView dv;
  TensorView dbias;
};

void backward(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& dout,
              const Gradients& grads, const Options& options = {});

// Attention of new query tokens over a key/value cache (decode, append, chunked prefill,
// speculative verification). The cache is either
//   dense: k_cache, v_cache [B_cache, Nmax, Hkv, D], sequence b in cache row cache_batch_idx[b]
//          (int32 [B], optional: row b when not given), or
//   paged: k_cache, v_cache [num_pages, page_size, Hkv, D] with block_table int32 [B, max_pages]:
//          key position t of sequence b lives in page block_table[b][t / page_size], slot t % page_size.
// cache_seqlens int32 [B]: keys already in the cache of sequence b. When k_new / v_new
// [B, Nq_new, Hkv, D] are given they are first written into the cache at positions
// cache_seqlens[b] .. cache_seqlens[b] + Nq_new - 1 (in place), so one call appends and attends.
// Query row i of sequence b (q [B, Nq_new, Hq, D]) attends to the Nk_b = cache_seqlens[b] (+ Nq_new
// when k_new is given) keys of its sequence; causal / window / ALiBi are aligned bottom-right over
// them (the last query row is key position Nk_b - 1). On CPU tensors cache_seqlens / block_table are
// checked before anything is written; a rejected call leaves the cache unchanged.
struct KVCache {
  TensorView k_cache;
  TensorView v_cache;
  TensorView cache_seqlens;    // int32 [B], required
  TensorView block_table;      // int32 [B, max_pages]: the cache is paged when given
  TensorView cache_batch_idx;  // int32 [B], dense caches only (optional)
  TensorView k_new;            // optional [B, Nq_new, Hkv, D]; given together with v_new
  TensorView v_new;
};

// out [B, Nq_new, Hq, D] = sigmoid attention of q over the cache. The bias has no default here:
// options.bias_mode must be scalar or per_head (a model trained with b = -log(n) decodes with that
// same b, not -log of the current cache length); neg_log_seqlen_k is rejected. num_splits splits
// each sequence's key range (0 = a heuristic); partials are summed in fp32 in a fixed order, so the
// result does not depend on the thread count.
void forward_with_kvcache(const TensorView& q, const KVCache& cache, const TensorView& out,
                          const Options& options = {}, int num_splits = 0);

// Head dims that the kernels accept.
constexpr std::array<int, 5> kSupportedHeadDims = {32, 64, 96, 128, 256};

// True when this build carries CUDA kernels and a CUDA device is visible.
bool cuda_available();

// Head dims this build has CUDA kernels for (FLASHSIGMOID_HEAD_DIMS at configure time); empty
// without the CUDA backend. The CPU backend takes every one of kSupportedHeadDims.
std::vector<int> cuda_head_dims();

}  // namespace flashsigmoid
