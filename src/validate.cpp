#include "validate.hpp"

#include <algorithm>
#include <cmath>
#include <sstream>

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

void check_storage(const char* name, const TensorView& t) {
  if (t.data == nullptr && t.numel() > 0) fail(std::string(name) + " has a null data pointer");
  for (int d = 0; d < t.rank; ++d) {
    if (t.stride[d] < 0) {
      fail(std::string(name) + " has a negative stride in dimension " + std::to_string(d) +
           "; accepted: non-negative strides");
    }
  }
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

AttnParams make_params(const TensorView& q, const TensorView& k, const TensorView& v, const Options& o) {
  AttnParams p;
  const bool varlen = o.cu_seqlens_q.defined() || o.cu_seqlens_k.defined();
  if (!q.defined()) fail("q is required");
  p.dtype = q.dtype;
  p.device = q.device;

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
  if (k.shape[hd + 1] != p.head_dim) {
    fail("k has head_dim " + std::to_string(k.shape[hd + 1]) + " but q has head_dim " +
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
           std::to_string(p.seqlen_k) + (varlen ? ", the max_seqlen values)" : ")"));
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
  return p;
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
  return p;
}

}  // namespace flashsigmoid::detail
