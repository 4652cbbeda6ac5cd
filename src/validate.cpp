#include "validate.hpp"

#include <algorithm>
#include <cmath>
#include <sstream>
#include <utility>
#include <vector>

#include "common/checked_math.hpp"

namespace flashsigmoid::detail {
namespace {

[[noreturn]] void fail(const std::string& msg) { throw Error("flashsigmoid: " + msg); }

std::string device_str(const Device& d) {
  return d.type == DeviceType::cpu ? std::string("cpu") : "cuda:" + std::to_string(d.index);
}

bool same_device(const Device& a, const Device& b) {
  return a.type == b.type && (a.type == DeviceType::cpu || a.index == b.index);
}

void check_rank(const char* name, const TensorView& t, int rank, const char* layout) {
  if (t.rank < 0 || t.rank > kMaxRank) {
    fail(std::string(name) + " has an invalid rank " + std::to_string(t.rank) + "; accepted: " +
         std::to_string(rank) + " " + layout);
  }
  if (t.rank != rank) {
    std::ostringstream os;
    os << name << " must have rank " << rank << " " << layout << ", got rank " << t.rank << " "
       << describe_shape(t);
    fail(os.str());
  }
  for (int d = 0; d < rank; ++d) {
    if (t.shape[d] < 0) fail(std::string(name) + " has a negative size: " + describe_shape(t));
  }
}

// The bytes a tensor's elements span, first to last inclusive (empty tensors span none). Computed
// with checked arithmetic, so that every element offset a backend computes fits in 64 bits.
struct ByteRange {
  std::uintptr_t first = 0, last = 0;
  bool empty = true;
};

ByteRange byte_range(const char* name, const TensorView& t) {
  ByteRange r;
  if (t.numel() == 0) return r;
  auto what = [&] { return std::string("the memory extent of ") + name + " " + describe_shape(t); };
  std::int64_t last_element = 0;
  for (int d = 0; d < t.rank; ++d) {
    last_element = checked_add(last_element, checked_mul(t.shape[d] - 1, t.stride[d], what), what);
  }
  const auto es = static_cast<std::int64_t>(element_size(t.dtype));
  const std::int64_t bytes = checked_mul(checked_add(last_element, 1, what), es, what);
  r.first = reinterpret_cast<std::uintptr_t>(t.data);
  r.last = r.first + static_cast<std::uintptr_t>(bytes) - 1;
  if (r.last < r.first) fail(what() + " runs past the end of the address space");
  r.empty = false;
  return r;
}

void check_storage(const char* name, const TensorView& t) {
  for (int d = 0; d < t.rank; ++d) {
    if (t.stride[d] < 0) {
      fail(std::string(name) + " has a negative stride in dimension " + std::to_string(d) +
           "; accepted: non-negative strides");
    }
  }
  if (t.data == nullptr && t.numel() > 0) fail(std::string(name) + " has a null data pointer");
  byte_range(name, t);
}

// An output written through a zero stride would write one element from several places.
void check_output_strides(const char* name, const TensorView& t) {
  if (t.numel() == 0) return;
  for (int d = 0; d < t.rank; ++d) {
    if (t.stride[d] == 0 && t.shape[d] > 1) {
      fail(std::string(name) + " has stride 0 in dimension " + std::to_string(d) + " (size " +
           std::to_string(t.shape[d]) + "); an output needs one memory location per element");
    }
  }
}

using NamedTensor = std::pair<const char*, const TensorView*>;

// Outputs must not share memory with the inputs or with each other: a kernel reads its inputs
// while others write, so in-place or overlapping buffers give wrong values. Compared by the byte
// ranges the tensors span (conservative for interleaved views, exact otherwise).
void check_no_overlap(const std::vector<NamedTensor>& outputs, const std::vector<NamedTensor>& inputs) {
  auto overlap = [](const NamedTensor& a, const NamedTensor& b) {
    if (!a.second->defined() || !b.second->defined()) return;
    const ByteRange x = byte_range(a.first, *a.second), y = byte_range(b.first, *b.second);
    if (!x.empty && !y.empty && x.first <= y.last && y.first <= x.last) {
      fail(std::string(a.first) + " and " + b.first + " overlap in memory; an output must not share memory " +
           "with an input or another output (in-place attention is not supported)");
    }
  };
  for (std::size_t i = 0; i < outputs.size(); ++i) {
    for (const NamedTensor& in : inputs) overlap(outputs[i], in);
    for (std::size_t j = 0; j < i; ++j) overlap(outputs[i], outputs[j]);
  }
}

// The inputs of every call: q, k, v and the optional parameter tensors.
std::vector<NamedTensor> inputs_of(const TensorView& q, const TensorView& k, const TensorView& v, const Options& o) {
  return {{"q", &q}, {"k", &k}, {"v", &v}, {"bias", &o.bias}, {"alibi_slopes", &o.alibi_slopes},
          {"cu_seqlens_q", &o.cu_seqlens_q}, {"cu_seqlens_k", &o.cu_seqlens_k}};
}

// A small fp32 parameter tensor ([Hq] or [B, Hq]) on the attention tensors' device.
void check_param_vector(const char* name, const TensorView& t, const Device& device) {
  check_storage(name, t);
  if (t.dtype != DType::float32) {
    fail(std::string(name) + " must be float32, got " + to_string(t.dtype));
  }
  if (!same_device(t.device, device)) {
    fail(std::string(name) + " is on " + device_str(t.device) + " but q is on " + device_str(device));
  }
  if (t.shape[t.rank - 1] > 1 && t.stride[t.rank - 1] != 1) {
    fail(std::string(name) + " must be contiguous in its last dimension, got stride " +
         std::to_string(t.stride[t.rank - 1]));
  }
}

// One attention operand: [B, N, H, D] (dense) or [total, H, D] (varlen).
OperandStrides check_operand(const char* name, const TensorView& t, bool varlen, DType dtype,
                             const Device& device) {
  if (varlen) {
    check_rank(name, t, 3, "[total, heads, head_dim] (varlen)");
  } else {
    check_rank(name, t, 4, "[batch, seqlen, heads, head_dim]");
  }
  check_storage(name, t);
  if (t.dtype != dtype) {
    fail(std::string(name) + " has dtype " + to_string(t.dtype) + " but q has dtype " + to_string(dtype) +
         "; all of q, k, v and the outputs must share one dtype");
  }
  if (!same_device(t.device, device)) {
    fail(std::string(name) + " is on " + device_str(t.device) + " but q is on " + device_str(device) +
         "; all tensors must be on one device");
  }
  const int last = t.rank - 1;
  if (t.stride[last] != 1 && t.shape[last] > 1) {
    fail(std::string(name) + " must be contiguous in its last (head_dim) dimension, got stride " +
         std::to_string(t.stride[last]) + "; accepted: stride 1");
  }
  OperandStrides s;
  if (varlen) {
    s.row = t.stride[0];
    s.head = t.stride[1];
  } else {
    s.batch = t.stride[0];
    s.row = t.stride[1];
    s.head = t.stride[2];
  }
  return s;
}

void check_same_shape(const char* name, const TensorView& t, const char* ref_name, const TensorView& ref) {
  bool same = t.rank == ref.rank;
  for (int d = 0; same && d < t.rank; ++d) same = t.shape[d] == ref.shape[d];
  if (!same) {
    fail(std::string(name) + " must have the shape of " + ref_name + " " + describe_shape(ref) + ", got " +
         describe_shape(t));
  }
}

// Reads cu_seqlens on the host (CPU tensors only: on a GPU that would need a sync).
void check_cu_seqlens_values(const char* name, const TensorView& t, std::int64_t total,
                             std::int64_t max_seqlen) {
  const auto* cu = static_cast<const std::int32_t*>(t.data);
  const std::int64_t st = t.stride[0];
  if (cu[0] != 0) fail(std::string(name) + "[0] must be 0, got " + std::to_string(cu[0]));
  for (std::int64_t b = 0; b + 1 < t.shape[0]; ++b) {
    const std::int64_t len = std::int64_t(cu[(b + 1) * st]) - cu[b * st];
    if (len < 0) {
      fail(std::string(name) + " must be non-decreasing, but sequence " + std::to_string(b) +
           " has length " + std::to_string(len));
    }
    if (len > max_seqlen) {
      fail(std::string(name) + ": sequence " + std::to_string(b) + " has length " + std::to_string(len) +
           " > max_seqlen " + std::to_string(max_seqlen));
    }
  }
  const std::int64_t last = cu[(t.shape[0] - 1) * st];
  if (last > total) {
    fail(std::string(name) + " ends at " + std::to_string(last) + " but the packed tensor has only " +
         std::to_string(total) + " rows");
  }
}

void check_cu_seqlens(const char* name, const TensorView& t, std::int64_t batch_plus_one,
                      const Device& device) {
  if (!t.defined()) fail(std::string(name) + " is required for varlen (both cu_seqlens_q and cu_seqlens_k)");
  if (t.rank != 1) fail(std::string(name) + " must have rank 1 [batch + 1], got " + describe_shape(t));
  check_storage(name, t);
  if (t.dtype != DType::int32) fail(std::string(name) + " must be int32, got " + to_string(t.dtype));
  if (!same_device(t.device, device)) {
    fail(std::string(name) + " is on " + device_str(t.device) + " but q is on " + device_str(device));
  }
  if (t.shape[0] < 1) fail(std::string(name) + " must have at least 1 element (batch + 1), got 0");
  if (batch_plus_one >= 0 && t.shape[0] != batch_plus_one) {
    fail(std::string(name) + " has " + std::to_string(t.shape[0]) + " entries but cu_seqlens_q has " +
         std::to_string(batch_plus_one) + "; both must be [batch + 1]");
  }
}

// The dtypes q may have on its device (every other attention tensor must match q).
void check_query_dtype(const TensorView& q) {
  if (q.device.type == DeviceType::cpu) {
    if (q.dtype != DType::float32 && q.dtype != DType::float16 && q.dtype != DType::bfloat16 &&
        q.dtype != DType::float64) {
      fail(std::string("q has dtype ") + to_string(q.dtype) +
           "; accepted on cpu: float32, float16, bfloat16, float64");
    }
  } else {
    if (q.dtype != DType::float16 && q.dtype != DType::bfloat16) {
      fail(std::string("q has dtype ") + to_string(q.dtype) + "; accepted on cuda: float16, bfloat16");
    }
    if (q.device.index < 0) fail("q has an invalid cuda device index " + std::to_string(q.device.index));
  }
}

// Head dim and GQA rules, once p.heads_q / heads_kv / head_dim are read from q and k (k_name's
// head_dim is k_dim).
void check_heads(const AttnParams& p, const char* k_name, std::int64_t k_dim) {
  if (k_dim != p.head_dim) {
    fail(std::string(k_name) + " has head_dim " + std::to_string(k_dim) + " but q has head_dim " +
         std::to_string(p.head_dim) + "; they must match");
  }
  if (std::find(kSupportedHeadDims.begin(), kSupportedHeadDims.end(), p.head_dim) == kSupportedHeadDims.end()) {
    fail("head_dim " + std::to_string(p.head_dim) + " is not supported; accepted: 32, 64, 96, 128, 256");
  }
  if (p.heads_q == 0 || p.heads_kv == 0 || p.heads_q % p.heads_kv != 0) {
    fail("the number of query heads (" + std::to_string(p.heads_q) +
         ") must be a positive multiple of the number of key/value heads (" + std::to_string(p.heads_kv) +
         ")");
  }
}

void resolve_options(AttnParams& p, const Options& o);

AttnParams make_params(const TensorView& q, const TensorView& k, const TensorView& v, const Options& o) {
  AttnParams p;
  const bool varlen = o.cu_seqlens_q.defined() || o.cu_seqlens_k.defined();
  if (!q.defined()) fail("q is required");
  p.dtype = q.dtype;
  p.device = q.device;

  check_query_dtype(q);

  p.q_stride = check_operand("q", q, varlen, p.dtype, p.device);
  p.k_stride = check_operand("k", k, varlen, p.dtype, p.device);
  p.v_stride = check_operand("v", v, varlen, p.dtype, p.device);
  check_same_shape("v", v, "k", k);
  p.q = q.data;
  p.k = k.data;
  p.v = v.data;

  const int hd = varlen ? 1 : 2;  // heads dimension
  p.heads_q = q.shape[hd];
  p.heads_kv = k.shape[hd];
  p.head_dim = q.shape[hd + 1];
  check_heads(p, "k", k.shape[hd + 1]);

  if (varlen) {
    check_cu_seqlens("cu_seqlens_q", o.cu_seqlens_q, -1, p.device);
    check_cu_seqlens("cu_seqlens_k", o.cu_seqlens_k, o.cu_seqlens_q.shape[0], p.device);
    p.batch = o.cu_seqlens_q.shape[0] - 1;
    if (o.max_seqlen_q < 0 || o.max_seqlen_k < 0) {
      fail("max_seqlen_q and max_seqlen_k must be >= 0, got " + std::to_string(o.max_seqlen_q) + " and " +
           std::to_string(o.max_seqlen_k));
    }
    p.seqlen_q = o.max_seqlen_q;
    p.seqlen_k = o.max_seqlen_k;
    p.total_q = q.shape[0];
    p.total_k = k.shape[0];
    if (p.device.type == DeviceType::cpu) {
      check_cu_seqlens_values("cu_seqlens_q", o.cu_seqlens_q, q.shape[0], o.max_seqlen_q);
      check_cu_seqlens_values("cu_seqlens_k", o.cu_seqlens_k, k.shape[0], o.max_seqlen_k);
    }
    if (o.cu_seqlens_q.stride[0] != 1 || o.cu_seqlens_k.stride[0] != 1) {
      fail("cu_seqlens_q and cu_seqlens_k must be contiguous");
    }
    p.cu_seqlens_q = static_cast<const std::int32_t*>(o.cu_seqlens_q.data);
    p.cu_seqlens_k = static_cast<const std::int32_t*>(o.cu_seqlens_k.data);
  } else {
    p.batch = q.shape[0];
    if (k.shape[0] != p.batch) {
      fail("k has batch " + std::to_string(k.shape[0]) + " but q has batch " + std::to_string(p.batch) +
           "; they must match");
    }
    p.seqlen_q = q.shape[1];
    p.seqlen_k = k.shape[1];
  }

  resolve_options(p, o);
  return p;
}

// Scale, bias, ALiBi, window and threads; p.batch, heads_q, head_dim and device are set.
void resolve_options(AttnParams& p, const Options& o) {
  const float scale = o.scale.value_or(1.0f / std::sqrt(static_cast<float>(p.head_dim)));
  if (!std::isfinite(scale)) fail("scale must be finite, got " + std::to_string(scale));
  p.scale = scale;

  p.bias_mode = o.bias_mode;
  switch (o.bias_mode) {
    case BiasMode::neg_log_seqlen_k:
      break;
    case BiasMode::scalar:
      if (!std::isfinite(o.bias_value)) fail("bias_value must be finite, got " + std::to_string(o.bias_value));
      p.bias_value = o.bias_value;
      break;
    case BiasMode::per_head:
      if (!o.bias.defined()) fail("bias_mode per_head needs a bias tensor of shape [Hq]");
      if (o.bias.rank != 1 || o.bias.shape[0] != p.heads_q) {
        fail("bias must have shape [" + std::to_string(p.heads_q) + "] (one value per query head), got " +
             describe_shape(o.bias));
      }
      check_param_vector("bias", o.bias, p.device);
      p.bias = static_cast<const float*>(o.bias.data);
      break;
    default:
      fail("bias_mode " + std::to_string(static_cast<int>(o.bias_mode)) +
           " is not one of neg_log_seqlen_k, scalar, per_head");
  }
  if (o.bias_mode != BiasMode::per_head && o.bias.defined()) {
    fail("a bias tensor was given but bias_mode is not per_head");
  }

  if (o.alibi_slopes.defined()) {
    const TensorView& a = o.alibi_slopes;
    const bool per_head = a.rank == 1 && a.shape[0] == p.heads_q;
    const bool per_batch = a.rank == 2 && a.shape[0] == p.batch && a.shape[1] == p.heads_q;
    if (!per_head && !per_batch) {
      fail("alibi_slopes must have shape [" + std::to_string(p.heads_q) + "] or [" + std::to_string(p.batch) +
           ", " + std::to_string(p.heads_q) + "], got " + describe_shape(a));
    }
    check_param_vector("alibi_slopes", a, p.device);
    p.alibi_slopes = static_cast<const float*>(a.data);
    p.alibi_batch_stride = per_batch ? a.stride[0] : 0;
  }

  if (o.window_left < -1 || o.window_right < -1) {
    fail("window (" + std::to_string(o.window_left) + ", " + std::to_string(o.window_right) +
         ") is invalid; each side must be >= 0, or -1 for unbounded");
  }
  if (o.positions) {
    // Positions below 2^29 keep every distance exact in the kernels' 32-bit tile coordinates.
    constexpr std::int64_t kMaxPosition = std::int64_t(1) << 29;
    const std::int64_t qo = o.positions->q, ko = o.positions->k;
    if (qo < 0 || ko < 0 || qo > kMaxPosition - p.seqlen_q || ko > kMaxPosition - p.seqlen_k) {
      fail("positions (q " + std::to_string(qo) + ", k " + std::to_string(ko) +
           ") are invalid; accepted: offsets >= 0 with q + Nq and k + Nk at most 2^29 = " +
           std::to_string(kMaxPosition) + " (Nq " + std::to_string(p.seqlen_q) + ", Nk " +
           std::to_string(p.seqlen_k) + (p.is_varlen() ? ", the max_seqlen values)" : ")"));
    }
    p.global_positions = true;
    p.position_diag = qo - ko;
  }
  p.causal = o.causal;
  p.window_left = o.window_left;
  p.window_right = o.window_right;
  if (o.num_threads < 0) fail("num_threads must be >= 0 (0 = all), got " + std::to_string(o.num_threads));
  p.stream = o.stream;
  p.deterministic = o.deterministic;
  p.num_threads = o.num_threads;
}

}  // namespace

std::string describe_shape(const TensorView& t) {
  std::ostringstream os;
  os << "[";
  for (int d = 0; d < std::min(t.rank, kMaxRank); ++d) os << (d ? ", " : "") << t.shape[d];
  os << "]";
  return os.str();
}

AttnParams make_forward_params(const TensorView& q, const TensorView& k, const TensorView& v,
                               const TensorView& out, const Options& options) {
  AttnParams p = make_params(q, k, v, options);
  const bool varlen = p.is_varlen();
  p.o_stride = check_operand("out", out, varlen, p.dtype, p.device);
  check_same_shape("out", out, "q", q);
  check_output_strides("out", out);
  check_no_overlap({{"out", &out}}, inputs_of(q, k, v, options));
  p.o = out.data;
  return p;
}

BwdParams make_backward_params(const TensorView& q, const TensorView& k, const TensorView& v,
                               const TensorView& dout, const Gradients& g, const Options& options) {
  BwdParams p;
  static_cast<AttnParams&>(p) = make_params(q, k, v, options);
  const bool varlen = p.is_varlen();
  p.do_stride = check_operand("dout", dout, varlen, p.dtype, p.device);
  check_same_shape("dout", dout, "q", q);
  p.dq_stride = check_operand("dq", g.dq, varlen, p.dtype, p.device);
  check_same_shape("dq", g.dq, "q", q);
  p.dk_stride = check_operand("dk", g.dk, varlen, p.dtype, p.device);
  check_same_shape("dk", g.dk, "k", k);
  p.dv_stride = check_operand("dv", g.dv, varlen, p.dtype, p.device);
  check_same_shape("dv", g.dv, "v", v);
  p.dout = dout.data;
  p.dq = g.dq.data;
  p.dk = g.dk.data;
  p.dv = g.dv.data;
  p.rows_q = varlen ? q.shape[0] : p.batch * p.seqlen_q;
  if (g.dbias.defined()) {
    if (options.bias_mode != BiasMode::per_head) {
      fail("dbias was given but bias_mode is not per_head; only a per-head bias tensor has a gradient");
    }
    if (g.dbias.rank != 1 || g.dbias.shape[0] != p.heads_q) {
      fail("dbias must have shape [" + std::to_string(p.heads_q) + "], got " + describe_shape(g.dbias));
    }
    check_param_vector("dbias", g.dbias, p.device);
    p.dbias = static_cast<float*>(g.dbias.data);
  }
  for (const auto& [name, t] : {NamedTensor{"dq", &g.dq}, {"dk", &g.dk}, {"dv", &g.dv}, {"dbias", &g.dbias}}) {
    if (t->defined()) check_output_strides(name, *t);
  }
  std::vector<NamedTensor> inputs = inputs_of(q, k, v, options);
  inputs.push_back({"dout", &dout});
  check_no_overlap({{"dq", &g.dq}, {"dk", &g.dk}, {"dv", &g.dv}, {"dbias", &g.dbias}}, inputs);
  return p;
}

namespace {

// An int32 index tensor of the KV cache ([B] or [B, max_pages]) on q's device, contiguous in its
// last dimension.
void check_index_tensor(const char* name, const TensorView& t, int rank, const char* layout, std::int64_t batch,
                        const Device& device) {
  check_rank(name, t, rank, layout);
  check_storage(name, t);
  if (t.dtype != DType::int32) fail(std::string(name) + " must be int32, got " + to_string(t.dtype));
  if (!same_device(t.device, device)) {
    fail(std::string(name) + " is on " + device_str(t.device) + " but q is on " + device_str(device) +
         "; all tensors must be on one device");
  }
  if (t.shape[0] != batch) {
    fail(std::string(name) + " has " + std::to_string(t.shape[0]) + " rows but q has batch " +
         std::to_string(batch) + "; accepted: " + layout);
  }
  if (t.stride[rank - 1] != 1 && t.shape[rank - 1] > 1) {
    fail(std::string(name) + " must be contiguous in its last dimension, got stride " +
         std::to_string(t.stride[rank - 1]));
  }
}

// Host-side checks of the cache's index values (CPU tensors only: on a GPU reading them would need
// a host sync; the CUDA kernels check them on the device instead). Every check runs before the
// backend writes anything, so a rejected call leaves the cache unchanged.
void check_kvcache_values(const KVCacheParams& p) {
  const std::int64_t appended = p.k_new != nullptr ? p.seqlen_q : 0;
  struct Write {  // one cache row (dense) or page (paged) that an append writes
    std::int64_t where, seq, logical;
  };
  std::vector<Write> writes;
  for (std::int64_t b = 0; b < p.batch; ++b) {
    const std::int64_t cached = p.cache_seqlens[b];
    const std::string seq = "sequence " + std::to_string(b);
    if (cached < 0) fail("cache_seqlens[" + std::to_string(b) + "] is " + std::to_string(cached) + "; accepted: >= 0");
    const std::int64_t nk = cached + appended;
    if (nk > p.cache_capacity) {
      fail(seq + " needs " + std::to_string(nk) + " keys (cache_seqlens " + std::to_string(cached) + " + " +
           std::to_string(appended) + " appended) but the cache holds " + std::to_string(p.cache_capacity) +
           (p.block_table != nullptr ? " per sequence (block_table's max_pages * page_size)"
                                     : " per sequence (k_cache's dimension 1)"));
    }
    if (p.block_table != nullptr) {
      const std::int32_t* row = p.block_table + b * p.block_table_stride;
      const std::int64_t used = (nk + p.page_size - 1) / p.page_size;
      for (std::int64_t i = 0; i < used; ++i) {
        if (row[i] < 0 || row[i] >= p.num_pages) {
          fail("block_table[" + std::to_string(b) + "][" + std::to_string(i) + "] is page " + std::to_string(row[i]) +
               ", outside the cache's " + std::to_string(p.num_pages) + " pages; accepted: 0 <= page < " +
               std::to_string(p.num_pages));
        }
      }
      for (std::int64_t i = cached / p.page_size; appended > 0 && i < used; ++i) writes.push_back({row[i], b, i});
    } else {
      const std::int64_t r = p.cache_batch_idx != nullptr ? p.cache_batch_idx[b] : b;
      if (r < 0 || r >= p.cache_batch) {
        fail("cache_batch_idx[" + std::to_string(b) + "] is " + std::to_string(r) + "; accepted: 0 <= index < " +
             std::to_string(p.cache_batch) + " (k_cache's dimension 0)");
      }
      if (appended > 0) writes.push_back({r, b, 0});
    }
  }
  // Two appends into one page (or dense cache row) would race and leave it to the scheduling which
  // one wins; sharing pages that no one writes in this call is fine.
  std::sort(writes.begin(), writes.end(), [](const Write& a, const Write& b) { return a.where < b.where; });
  for (std::size_t i = 1; i < writes.size(); ++i) {
    const Write& a = writes[i - 1];
    const Write& b = writes[i];
    if (a.where != b.where) continue;
    if (p.block_table != nullptr) {
      fail("page " + std::to_string(a.where) + " is written by the append of sequence " + std::to_string(a.seq) +
           " (block_table[" + std::to_string(a.seq) + "][" + std::to_string(a.logical) + "]) and of sequence " +
           std::to_string(b.seq) + " (block_table[" + std::to_string(b.seq) + "][" + std::to_string(b.logical) +
           "]); pages that an append writes must not be shared (shared read-only pages are fine)");
    }
    fail("cache row " + std::to_string(a.where) + " is written by the appends of sequences " + std::to_string(a.seq) +
         " and " + std::to_string(b.seq) + " (cache_batch_idx); sequences that append need their own cache rows");
  }
}

}  // namespace

KVCacheParams make_kvcache_params(const TensorView& q, const KVCache& c, const TensorView& out,
                                  const Options& options, int num_splits) {
  KVCacheParams p;
  if (!q.defined()) fail("q is required");
  p.dtype = q.dtype;
  p.device = q.device;
  check_query_dtype(q);
  if (options.cu_seqlens_q.defined() || options.cu_seqlens_k.defined()) {
    fail("forward_with_kvcache takes no cu_seqlens: each sequence's keys are given by cache_seqlens");
  }
  if (options.bias_mode == BiasMode::neg_log_seqlen_k) {
    fail("forward_with_kvcache needs an explicit bias (bias_mode scalar or per_head): a model trained with "
         "b = -log(n) decodes with that same b (e.g. -log of the training length), not -log of the growing "
         "cache length, so there is no length-dependent default");
  }
  p.q_stride = check_operand("q", q, false, p.dtype, p.device);
  p.o_stride = check_operand("out", out, false, p.dtype, p.device);
  check_same_shape("out", out, "q", q);
  p.q = q.data;
  p.o = out.data;
  if (!c.k_cache.defined() || !c.v_cache.defined()) fail("k_cache and v_cache are required");
  p.k_stride = check_operand("k_cache", c.k_cache, false, p.dtype, p.device);
  p.v_stride = check_operand("v_cache", c.v_cache, false, p.dtype, p.device);
  check_same_shape("v_cache", c.v_cache, "k_cache", c.k_cache);
  p.batch = q.shape[0];
  p.seqlen_q = q.shape[1];
  p.heads_q = q.shape[2];
  p.head_dim = q.shape[3];
  p.heads_kv = c.k_cache.shape[2];
  check_heads(p, "k_cache", c.k_cache.shape[3]);

  if (!c.cache_seqlens.defined()) fail("cache_seqlens (int32 [batch]) is required");
  check_index_tensor("cache_seqlens", c.cache_seqlens, 1, "int32 [batch]", p.batch, p.device);
  p.cache_seqlens = static_cast<const std::int32_t*>(c.cache_seqlens.data);
  if (c.block_table.defined()) {
    if (c.cache_batch_idx.defined()) {
      fail("cache_batch_idx is for dense caches; a paged cache (block_table given) names its pages in block_table");
    }
    check_index_tensor("block_table", c.block_table, 2, "int32 [batch, max_pages]", p.batch, p.device);
    p.block_table = static_cast<const std::int32_t*>(c.block_table.data);
    p.block_table_stride = c.block_table.stride[0];
    p.max_pages = c.block_table.shape[1];
    p.num_pages = c.k_cache.shape[0];
    p.page_size = c.k_cache.shape[1];
    if (p.page_size < 1) fail("a paged k_cache [num_pages, page_size, Hkv, D] needs page_size >= 1, got 0");
    p.cache_capacity = p.max_pages * p.page_size;
  } else {
    if (c.cache_batch_idx.defined()) {
      check_index_tensor("cache_batch_idx", c.cache_batch_idx, 1, "int32 [batch]", p.batch, p.device);
      p.cache_batch_idx = static_cast<const std::int32_t*>(c.cache_batch_idx.data);
    } else if (c.k_cache.shape[0] < p.batch) {
      fail("k_cache has " + std::to_string(c.k_cache.shape[0]) + " rows (dimension 0) but q has batch " +
           std::to_string(p.batch) + "; give cache_batch_idx or a cache row per sequence");
    }
    p.cache_batch = c.k_cache.shape[0];
    p.cache_capacity = c.k_cache.shape[1];
  }
  // An upper bound on every sequence's key count that needs no device values (CUDA graphs).
  p.seqlen_k = p.cache_capacity;
  p.k = p.k_cache = c.k_cache.data;
  p.v = p.v_cache = c.v_cache.data;

  if (c.k_new.defined() != c.v_new.defined()) {
    fail(std::string(c.k_new.defined() ? "k" : "v") + " (the new keys/values to append) was given without " +
         (c.k_new.defined() ? "v" : "k") + "; give both or neither");
  }
  if (c.k_new.defined()) {
    p.k_new_stride = check_operand("k (new keys)", c.k_new, false, p.dtype, p.device);
    p.v_new_stride = check_operand("v (new values)", c.v_new, false, p.dtype, p.device);
    const bool ok = c.k_new.shape[0] == p.batch && c.k_new.shape[1] == p.seqlen_q && c.k_new.shape[2] == p.heads_kv &&
                    c.k_new.shape[3] == p.head_dim;
    if (!ok) {
      fail("k (new keys) must have shape [" + std::to_string(p.batch) + ", " + std::to_string(p.seqlen_q) + ", " +
           std::to_string(p.heads_kv) + ", " + std::to_string(p.head_dim) +
           "] ([batch, Nq_new, Hkv, D]: one key per new query token), got " + describe_shape(c.k_new));
    }
    check_same_shape("v (new values)", c.v_new, "k (new keys)", c.k_new);
    p.k_new = c.k_new.data;
    p.v_new = c.v_new.data;
  }

  if (num_splits < 0 || num_splits > kMaxKVCacheSplits) {
    fail("num_splits is " + std::to_string(num_splits) + "; accepted: 0 (a heuristic) to " +
         std::to_string(kMaxKVCacheSplits));
  }
  p.num_splits = num_splits;
  if (options.positions) {
    fail("forward_with_kvcache takes no positions: each sequence's query rows sit at its last keys "
         "(cache_seqlens), aligned bottom-right");
  }
  resolve_options(p, options);
  // out is written; with an append the caches are too, so neither may share memory with what is read.
  const std::vector<NamedTensor> meta = {{"q", &q},
                                         {"k (new keys)", &c.k_new},
                                         {"v (new values)", &c.v_new},
                                         {"cache_seqlens", &c.cache_seqlens},
                                         {"block_table", &c.block_table},
                                         {"cache_batch_idx", &c.cache_batch_idx},
                                         {"bias", &options.bias},
                                         {"alibi_slopes", &options.alibi_slopes}};
  std::vector<NamedTensor> read = meta;
  if (!c.k_new.defined()) {
    read.push_back({"k_cache", &c.k_cache});
    read.push_back({"v_cache", &c.v_cache});
    check_no_overlap({{"out", &out}}, read);
  } else {
    check_no_overlap({{"out", &out}, {"k_cache", &c.k_cache}, {"v_cache", &c.v_cache}}, read);
  }
  if (p.device.type == DeviceType::cpu) check_kvcache_values(p);
  return p;
}

}  // namespace flashsigmoid::detail
