#include "problem.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <sstream>

#include "common/checked_math.hpp"
#include "reference/reference.hpp"
#include "reference/testing.hpp"

namespace flashsigmoid::cli {
namespace {

bool low_precision(DType d) { return d == DType::float16 || d == DType::bfloat16; }

const char* dtype_short(DType d) {
  switch (d) {
    case DType::float32: return "f32";
    case DType::float16: return "f16";
    case DType::bfloat16: return "bf16";
    case DType::float64: return "f64";
    case DType::int32: return "i32";
  }
  return "?";
}

// Heads [h0, h0 + hc) of rows [0, rows) of a contiguous [rows, H, D] array whose scalars are
// `unit` elements of T wide (bytes of a dtype, or 1 for doubles). Dense [B, N, H, D] data is
// [B*N, H, D] here, so rows = b*N keeps the first b batches.
template <typename T>
std::vector<T> slice_heads(const std::vector<T>& src, std::size_t unit, std::int64_t rows, std::int64_t heads,
                           std::int64_t d, std::int64_t h0, std::int64_t hc) {
  std::vector<T> out(static_cast<std::size_t>(rows * hc * d) * unit);
  for (std::int64_t r = 0; r < rows; ++r) {
    const std::size_t from = static_cast<std::size_t>((r * heads + h0) * d) * unit;
    const std::size_t to = static_cast<std::size_t>(r * hc * d) * unit;
    std::copy_n(src.begin() + from, static_cast<std::size_t>(hc * d) * unit, out.begin() + to);
  }
  return out;
}

TensorCheck make_check(const std::string& name, const std::vector<double>& ref, const std::vector<double>& got,
                       const std::vector<double>* plain, DType rounding, DType dtype) {
  TensorCheck c;
  c.name = name;
  c.error = testing::rel_l2(ref, got);
  c.bound = dtype_bound(dtype);
  if (plain != nullptr) {
    std::vector<double> rounded(plain->size());
    for (std::size_t i = 0; i < plain->size(); ++i) rounded[i] = testing::round_to_dtype((*plain)[i], rounding);
    c.plain_error = testing::rel_l2(ref, rounded);
    c.bound = std::min(c.bound, std::max(2.0 * c.plain_error, 1e-5));
  }
  c.pass = c.error <= c.bound;  // false for NaN
  return c;
}

}  // namespace

std::int64_t Config::total_q() const {
  if (varlen()) return std::accumulate(varlen_q.begin(), varlen_q.end(), std::int64_t{0});
  return detail::checked_mul(batch, seqlen_q, "the query rows (--batch x --seqlen)");
}

std::int64_t Config::total_k() const {
  if (varlen()) return std::accumulate(varlen_k.begin(), varlen_k.end(), std::int64_t{0});
  return detail::checked_mul(batch, seqlen_k, "the key rows (--batch x --seqlen-k)");
}

std::int64_t Config::bytes_needed() const {
  using detail::checked_add;
  using detail::checked_product;
  const auto es = static_cast<std::int64_t>(element_size(dtype));
  auto tensor = [&](std::int64_t rows, std::int64_t heads, const char* what) {
    const std::string w = std::string("the size of ") + what + " (rows x heads x head dim x bytes)";
    const std::int64_t row = checked_add(checked_product({heads, head_dim}, w), row_padding, w);
    return checked_product({rows, row, es}, w);
  };
  const std::int64_t q = tensor(total_q(), heads_q, "q"), k = tensor(total_k(), heads_kv, "k");
  // Host copies of q, k, v, dout; device q, k, v, dout, out, dq, dk, dv.
  const std::string w = "the memory of all buffers";
  return checked_add(checked_product({6, q}, w), checked_product({6, k}, w), w);
}

double Config::forward_flops() const {
  auto one = [&](double nq, double nk) {
    return 4.0 * double(heads_q) * nq * nk * double(head_dim) * (causal && nq == nk ? 0.5 : 1.0);
  };
  if (!varlen()) return batch * one(double(seqlen_q), double(seqlen_k));
  double f = 0.0;
  for (std::size_t b = 0; b < varlen_q.size(); ++b) f += one(varlen_q[b], varlen_k[b]);
  return f;
}

std::string Config::describe() const {
  std::ostringstream os;
  os << dtype_short(dtype) << " D=" << head_dim;
  if (varlen()) {
    os << " varlen q=[";
    for (std::size_t b = 0; b < varlen_q.size(); ++b) os << (b ? "," : "") << varlen_q[b];
    os << "] k=[";
    for (std::size_t b = 0; b < varlen_k.size(); ++b) os << (b ? "," : "") << varlen_k[b];
    os << "]";
  } else {
    os << " B=" << batch << " Nq=" << seqlen_q << " Nk=" << seqlen_k;
  }
  os << " H=" << heads_q << "/" << heads_kv;
  if (causal) os << " causal";
  if (window_left >= 0 || window_right >= 0) os << " window=(" << window_left << "," << window_right << ")";
  if (alibi == AlibiMode::per_head) os << " alibi[Hq]";
  if (alibi == AlibiMode::per_batch_head) os << " alibi[B,Hq]";
  if (bias_mode == BiasMode::scalar) os << " bias=" << bias_value;
  if (bias_mode == BiasMode::per_head) os << " bias=per-head";
  if (row_padding > 0) os << " strided(+" << row_padding << ")";
  return os.str();
}

double dtype_bound(DType dtype) {
  switch (dtype) {
    case DType::bfloat16: return 1e-2;
    case DType::float16: return 2e-3;
    default: return 1e-5;
  }
}

// ---- HostData -----------------------------------------------------------------------------

Options HostData::options() {
  Options o;
  o.bias_mode = cfg.bias_mode;
  o.bias_value = cfg.bias_value;
  if (cfg.bias_mode == BiasMode::per_head) o.bias = TensorView::contiguous(bias.data(), DType::float32, {cfg.heads_q});
  o.causal = cfg.causal;
  o.window_left = cfg.window_left;
  o.window_right = cfg.window_right;
  if (cfg.alibi == AlibiMode::per_head) {
    o.alibi_slopes = TensorView::contiguous(alibi.data(), DType::float32, {cfg.heads_q});
  } else if (cfg.alibi == AlibiMode::per_batch_head) {
    o.alibi_slopes = TensorView::contiguous(alibi.data(), DType::float32, {cfg.batch, cfg.heads_q});
  }
  if (cfg.varlen()) {
    o.cu_seqlens_q = TensorView::contiguous(cu_q.data(), DType::int32, {cfg.batch + 1});
    o.cu_seqlens_k = TensorView::contiguous(cu_k.data(), DType::int32, {cfg.batch + 1});
    o.max_seqlen_q = cfg.seqlen_q;
    o.max_seqlen_k = cfg.seqlen_k;
  }
  o.num_threads = cfg.threads;
  return o;
}

TensorView HostData::view(const std::vector<unsigned char>& data, bool is_q) const {
  void* p = const_cast<unsigned char*>(data.data());
  const std::int64_t heads = is_q ? cfg.heads_q : cfg.heads_kv;
  if (cfg.varlen()) {
    return TensorView::contiguous(p, cfg.dtype, {is_q ? cfg.total_q() : cfg.total_k(), heads, cfg.head_dim});
  }
  return TensorView::contiguous(p, cfg.dtype, {cfg.batch, is_q ? cfg.seqlen_q : cfg.seqlen_k, heads, cfg.head_dim});
}

std::vector<TensorCheck> compare_with_reference(HostData& data, const Outputs& got, bool with_backward) {
  const Options o = data.options();
  const DType dt = data.cfg.dtype;
  const TensorView q = data.view(data.q, true), k = data.view(data.k, false), v = data.view(data.v, false);
  const bool low = low_precision(dt);
  std::vector<TensorCheck> checks;

  const std::vector<double> ref = reference::forward(q, k, v, o);
  std::vector<double> plain;
  if (low) plain = reference::plain_forward(q, k, v, o);
  checks.push_back(make_check("out", ref, got.out, low ? &plain : nullptr, dt, dt));
  if (!with_backward) return checks;

  const TensorView dout = data.view(data.dout, true);
  const reference::Grads g = reference::backward(q, k, v, dout, o);
  reference::Grads pg;
  if (low) pg = reference::plain_backward(q, k, v, dout, o);
  checks.push_back(make_check("dq", g.dq, got.dq, low ? &pg.dq : nullptr, dt, dt));
  checks.push_back(make_check("dk", g.dk, got.dk, low ? &pg.dk : nullptr, dt, dt));
  checks.push_back(make_check("dv", g.dv, got.dv, low ? &pg.dv : nullptr, dt, dt));
  if (data.cfg.bias_mode == BiasMode::per_head) {
    checks.push_back(make_check("dbias", g.dbias, got.dbias, low ? &pg.dbias : nullptr, DType::float32, dt));
  }
  return checks;
}

// ---- Problem ------------------------------------------------------------------------------

namespace {

// `bytes` of host memory, or an error that says how much was asked for.
std::vector<unsigned char> host_bytes(std::int64_t bytes, unsigned char fill = 0) {
  try {
    return std::vector<unsigned char>(static_cast<std::size_t>(bytes), fill);
  } catch (const std::bad_alloc&) {
  } catch (const std::length_error&) {
  }
  throw Error("out of host memory: could not allocate " + describe_bytes(bytes));
}

}  // namespace

Problem::Problem(const Config& config, Device device, std::uint64_t seed) : device_(device) {
  Config& c = host_.cfg;
  c = config;
  if (c.varlen()) {
    c.batch = static_cast<std::int64_t>(c.varlen_q.size());
    c.seqlen_q = *std::max_element(c.varlen_q.begin(), c.varlen_q.end());
    c.seqlen_k = *std::max_element(c.varlen_k.begin(), c.varlen_k.end());
  }
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal(0.0, 1.0);
  std::uniform_real_distribution<double> uniform(-0.5, 0.5);
  c.bytes_needed();  // every size below is then free of overflow
  const std::size_t es = element_size(c.dtype);
  auto random_tensor = [&](std::int64_t rows, std::int64_t heads) {
    const std::int64_t n = rows * heads * c.head_dim;
    std::vector<unsigned char> t = host_bytes(n * static_cast<std::int64_t>(es));
    for (std::int64_t i = 0; i < n; ++i) testing::store_element(t.data() + i * es, c.dtype, normal(rng));
    return t;
  };
  host_.q = random_tensor(c.total_q(), c.heads_q);
  host_.k = random_tensor(c.total_k(), c.heads_kv);
  host_.v = random_tensor(c.total_k(), c.heads_kv);
  host_.dout = random_tensor(c.total_q(), c.heads_q);

  if (c.alibi != AlibiMode::none) {
    const std::int64_t rows = c.alibi == AlibiMode::per_batch_head ? c.batch : 1;
    for (std::int64_t b = 0; b < rows; ++b) {
      const double jitter = rows > 1 ? 1.0 + uniform(rng) : 1.0;
      for (std::int64_t h = 0; h < c.heads_q; ++h) {
        host_.alibi.push_back(static_cast<float>(jitter * std::exp2(-8.0 * double(h + 1) / double(c.heads_q))));
      }
    }
  }
  if (c.bias_mode == BiasMode::per_head) {
    for (std::int64_t h = 0; h < c.heads_q; ++h) {
      host_.bias.push_back(static_cast<float>(-std::log(double(std::max<std::int64_t>(c.seqlen_k, 1))) + uniform(rng)));
    }
  }
  if (c.varlen()) {
    host_.cu_q.assign(1, 0);
    host_.cu_k.assign(1, 0);
    for (std::size_t b = 0; b < c.varlen_q.size(); ++b) {
      host_.cu_q.push_back(host_.cu_q.back() + c.varlen_q[b]);
      host_.cu_k.push_back(host_.cu_k.back() + c.varlen_k[b]);
    }
  }

  q_ = make_tensor(c.total_q(), c.heads_q, &host_.q);
  k_ = make_tensor(c.total_k(), c.heads_kv, &host_.k);
  v_ = make_tensor(c.total_k(), c.heads_kv, &host_.v);
  dout_ = make_tensor(c.total_q(), c.heads_q, &host_.dout);
  out_ = make_tensor(c.total_q(), c.heads_q, nullptr);
  dq_ = make_tensor(c.total_q(), c.heads_q, nullptr);
  dk_ = make_tensor(c.total_k(), c.heads_kv, nullptr);
  dv_ = make_tensor(c.total_k(), c.heads_kv, nullptr);

  // Device-side options: the host options with every tensor moved to the device.
  options_ = host_.options();
  auto to_device = [&](Buffer& buf, TensorView& view) {
    if (!view.defined()) return;
    const std::size_t bytes = static_cast<std::size_t>(view.numel()) * element_size(view.dtype);
    buf = Buffer(device_, bytes);
    buf.upload(view.data, bytes);
    view.data = buf.data();
    view.device = device_;
  };
  to_device(bias_dev_, options_.bias);
  to_device(alibi_dev_, options_.alibi_slopes);
  to_device(cu_q_dev_, options_.cu_seqlens_q);
  to_device(cu_k_dev_, options_.cu_seqlens_k);
  dbias_dev_ = Buffer(device_, static_cast<std::size_t>(c.heads_q) * sizeof(float));
}

Problem::DeviceTensor Problem::make_tensor(std::int64_t rows, std::int64_t heads,
                                           const std::vector<unsigned char>* init) {
  const Config& c = host_.cfg;
  const std::size_t es = element_size(c.dtype);
  const std::int64_t row = heads * c.head_dim;
  const std::int64_t row_stride = row + c.row_padding;
  DeviceTensor t;
  t.buf = Buffer(device_, static_cast<std::size_t>(rows * row_stride) * es);
  if (init != nullptr) {
    std::vector<unsigned char> padded = host_bytes(static_cast<std::int64_t>(t.buf.bytes()), 0xFF);  // padding: NaN
    for (std::int64_t r = 0; r < rows; ++r) {
      std::memcpy(padded.data() + r * row_stride * es, init->data() + r * row * es, static_cast<std::size_t>(row) * es);
    }
    t.buf.upload(padded.data(), padded.size());
  } else {
    t.buf.poison();
  }
  TensorView& v = t.view;
  v.data = t.buf.data();
  v.dtype = c.dtype;
  v.device = device_;
  if (c.varlen()) {
    v.rank = 3;
    v.shape = {rows, heads, c.head_dim, 0};
    v.stride = {row_stride, c.head_dim, 1, 0};
  } else {
    const std::int64_t n = rows / std::max<std::int64_t>(c.batch, 1);
    v.rank = 4;
    v.shape = {c.batch, n, heads, c.head_dim};
    v.stride = {n * row_stride, row_stride, c.head_dim, 1};
  }
  return t;
}

std::vector<double> Problem::download(const DeviceTensor& t, std::int64_t rows, std::int64_t heads) const {
  const Config& c = host_.cfg;
  const std::int64_t row = heads * c.head_dim;
  const std::int64_t row_stride = row + c.row_padding;
  const std::size_t es = element_size(c.dtype);
  std::vector<unsigned char> raw(t.buf.bytes());
  t.buf.download(raw.data(), raw.size());
  std::vector<double> out(static_cast<std::size_t>(rows * row));
  for (std::int64_t r = 0; r < rows; ++r) {
    const unsigned char* src = raw.data() + static_cast<std::size_t>(r * row_stride) * es;
    for (std::int64_t i = 0; i < row; ++i) out[r * row + i] = testing::load_element(src + i * es, c.dtype);
  }
  return out;
}

Outputs Problem::download_all(bool with_backward) const {
  const Config& c = host_.cfg;
  Outputs o;
  o.out = download(out_, c.total_q(), c.heads_q);
  if (with_backward) {
    o.dq = download(dq_, c.total_q(), c.heads_q);
    o.dk = download(dk_, c.total_k(), c.heads_kv);
    o.dv = download(dv_, c.total_k(), c.heads_kv);
    if (c.bias_mode == BiasMode::per_head) {
      std::vector<float> db(static_cast<std::size_t>(c.heads_q));
      dbias_dev_.download(db.data(), db.size() * sizeof(float));
      o.dbias.assign(db.begin(), db.end());
    }
  }
  return o;
}

void Problem::poison_outputs() {
  for (DeviceTensor* t : {&out_, &dq_, &dk_, &dv_}) t->buf.poison();
  dbias_dev_.poison();
}

void Problem::forward() { flashsigmoid::forward(q_.view, k_.view, v_.view, out_.view, options_); }

void Problem::backward() {
  Gradients g;
  g.dq = dq_.view;
  g.dk = dk_.view;
  g.dv = dv_.view;
  if (host_.cfg.bias_mode == BiasMode::per_head) {
    g.dbias = TensorView::contiguous(dbias_dev_.data(), DType::float32, {host_.cfg.heads_q}, device_);
  }
  flashsigmoid::backward(q_.view, k_.view, v_.view, dout_.view, g, options_);
}

std::vector<TensorCheck> Problem::check(bool with_backward) {
  return compare_with_reference(host_, download_all(with_backward), with_backward);
}

std::vector<TensorCheck> Problem::check_slice(bool with_backward) {
  const Config& c = host_.cfg;
  // dbias sums over every batch, so with a per-head bias the slice keeps all batches.
  const std::int64_t nb = c.bias_mode == BiasMode::per_head ? c.batch : 1;
  if (c.varlen() || (nb == c.batch && c.heads_kv == 1)) return check(with_backward);
  const std::int64_t g = c.heads_q / c.heads_kv;  // query heads of kv head 0
  const std::int64_t rows_q = nb * c.seqlen_q, rows_k = nb * c.seqlen_k;
  const std::size_t es = element_size(c.dtype);
  HostData sub;
  sub.cfg = c;
  sub.cfg.batch = nb;
  sub.cfg.heads_q = g;
  sub.cfg.heads_kv = 1;
  sub.q = slice_heads(host_.q, es, rows_q, c.heads_q, c.head_dim, 0, g);
  sub.dout = slice_heads(host_.dout, es, rows_q, c.heads_q, c.head_dim, 0, g);
  sub.k = slice_heads(host_.k, es, rows_k, c.heads_kv, c.head_dim, 0, 1);
  sub.v = slice_heads(host_.v, es, rows_k, c.heads_kv, c.head_dim, 0, 1);
  // Slopes [Hq] or [B, Hq] and per-head biases: the first g entries of each row.
  if (!host_.alibi.empty()) {
    const std::int64_t alibi_rows = c.alibi == AlibiMode::per_batch_head ? nb : 1;
    sub.alibi = slice_heads(host_.alibi, 1, alibi_rows, c.heads_q, 1, 0, g);
  }
  if (!host_.bias.empty()) sub.bias.assign(host_.bias.begin(), host_.bias.begin() + g);

  const Outputs all = download_all(with_backward);
  Outputs got;
  got.out = slice_heads(all.out, 1, rows_q, c.heads_q, c.head_dim, 0, g);
  if (with_backward) {
    got.dq = slice_heads(all.dq, 1, rows_q, c.heads_q, c.head_dim, 0, g);
    got.dk = slice_heads(all.dk, 1, rows_k, c.heads_kv, c.head_dim, 0, 1);
    got.dv = slice_heads(all.dv, 1, rows_k, c.heads_kv, c.head_dim, 0, 1);
    if (!all.dbias.empty()) got.dbias.assign(all.dbias.begin(), all.dbias.begin() + g);
  }
  return compare_with_reference(sub, got, with_backward);
}

}  // namespace flashsigmoid::cli
