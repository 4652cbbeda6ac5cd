// Float64 reference and the "plain" fp32 materialising implementation (see reference.hpp).
//
// Deliberately self-contained: the mask, bias and ALiBi rules below are written from SPEC.md,
// not taken from src/common/score_transform.hpp.
#include "reference/reference.hpp"

#include <atomic>
#include <cmath>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>

#include "reference/testing.hpp"

namespace flashsigmoid::reference {
namespace {

using testing::load_element;
using testing::round_to_dtype;
using testing::to_vector;

[[noreturn]] void bad(const std::string& msg) { throw std::invalid_argument("flashsigmoid::reference: " + msg); }

// One (batch entry / varlen sequence): its rows in the row-major [rows, H, D] arrays.
struct Seq {
  std::int64_t q_row = 0, k_row = 0, len_q = 0, len_k = 0;
};

struct Problem {
  DType dtype = DType::float32;
  std::int64_t heads_q = 0, heads_kv = 0, dim = 0;
  std::vector<Seq> seqs;
  double scale = 0.0;
  // Per (sequence, head): bias value and ALiBi slope, as given (bias_mode resolved below).
  std::vector<double> bias;   // [seqs * Hq]
  std::vector<double> slope;  // [seqs * Hq]
  bool causal = false;
  std::int64_t left = -1, right = -1;
  // Options::positions: query row i of every sequence at position q_offset + i, key j at k_offset + j.
  std::optional<Options::PositionOffsets> positions;

  // SPEC: query i is aligned with key i + Nk - Nq (bottom-right): query position i + Nk - Nq, key
  // position j. With global positions: query position q_offset + i, key position k_offset + j.
  std::int64_t query_position(const Seq& s, std::int64_t i) const {
    return positions ? positions->q + i : i + s.len_k - s.len_q;
  }
  std::int64_t key_position(std::int64_t j) const { return positions ? positions->k + j : j; }
  // Causal: key position <= query position. Window (left, right): query position - left <= key
  // position <= query position + right, a bound only when >= 0.
  bool visible(const Seq& s, std::int64_t i, std::int64_t j) const {
    const std::int64_t qp = query_position(s, i), kp = key_position(j);
    if (causal && kp > qp) return false;
    if (left >= 0 && kp < qp - left) return false;
    if (right >= 0 && kp > qp + right) return false;
    return true;
  }
  // -slope * |query position - key position|
  std::int64_t alibi_distance(const Seq& s, std::int64_t i, std::int64_t j) const {
    const std::int64_t d = query_position(s, i) - key_position(j);
    return d < 0 ? -d : d;
  }
};

void check_operand(const char* name, const TensorView& t, int rank) {
  if (t.rank != rank) bad(std::string(name) + " has rank " + std::to_string(t.rank) + ", expected " + std::to_string(rank));
  if (t.device.type != DeviceType::cpu) bad(std::string(name) + " must be a CPU tensor");
  if (t.numel() > 0 && t.data == nullptr) bad(std::string(name) + " has a null data pointer");
}

std::vector<std::int64_t> read_cu(const TensorView& t, const char* name) {
  if (t.rank != 1 || t.dtype != DType::int32 || t.device.type != DeviceType::cpu || t.data == nullptr) {
    bad(std::string(name) + " must be a CPU int32 [B + 1] tensor");
  }
  std::vector<std::int64_t> cu(static_cast<std::size_t>(t.shape[0]));
  for (std::size_t b = 0; b < cu.size(); ++b) {
    cu[b] = static_cast<std::int64_t>(
        load_element(static_cast<const std::int32_t*>(t.data) + static_cast<std::int64_t>(b) * t.stride[0], DType::int32));
  }
  return cu;
}

double read_param(const TensorView& t, std::int64_t b, std::int64_t h) {
  if (t.device.type != DeviceType::cpu || t.data == nullptr) bad("bias / alibi_slopes must be CPU tensors");
  const std::int64_t off = t.rank == 1 ? h * t.stride[0] : b * t.stride[0] + h * t.stride[1];
  return load_element(static_cast<const unsigned char*>(t.data) + off * element_size(t.dtype), t.dtype);
}

Problem make_problem(const TensorView& q, const TensorView& k, const TensorView& v, const Options& o) {
  Problem p;
  const bool varlen = o.cu_seqlens_q.defined() || o.cu_seqlens_k.defined();
  const int rank = varlen ? 3 : 4;
  check_operand("q", q, rank);
  check_operand("k", k, rank);
  check_operand("v", v, rank);
  for (int d = 0; d < rank; ++d) {
    if (k.shape[d] != v.shape[d]) bad("k and v shapes differ");
  }
  p.dtype = q.dtype;
  const int hd = rank - 2;
  p.heads_q = q.shape[hd];
  p.heads_kv = k.shape[hd];
  p.dim = q.shape[hd + 1];
  if (k.shape[hd + 1] != p.dim) bad("head_dim differs between q and k");
  if (p.heads_kv <= 0 || p.heads_q % p.heads_kv != 0) bad("Hq must be a multiple of Hkv");

  if (varlen) {
    const auto cq = read_cu(o.cu_seqlens_q, "cu_seqlens_q");
    const auto ck = read_cu(o.cu_seqlens_k, "cu_seqlens_k");
    if (cq.size() != ck.size() || cq.empty()) bad("cu_seqlens_q and cu_seqlens_k must both be [B + 1]");
    for (std::size_t b = 0; b + 1 < cq.size(); ++b) {
      Seq s{cq[b], ck[b], cq[b + 1] - cq[b], ck[b + 1] - ck[b]};
      if (s.len_q < 0 || s.len_k < 0 || s.q_row < 0 || s.k_row < 0 || s.q_row + s.len_q > q.shape[0] ||
          s.k_row + s.len_k > k.shape[0]) {
        bad("cu_seqlens out of range for sequence " + std::to_string(b));
      }
      p.seqs.push_back(s);
    }
  } else {
    if (k.shape[0] != q.shape[0]) bad("batch differs between q and k");
    for (std::int64_t b = 0; b < q.shape[0]; ++b) {
      p.seqs.push_back(Seq{b * q.shape[1], b * k.shape[1], q.shape[1], k.shape[1]});
    }
  }

  p.scale = o.scale ? static_cast<double>(*o.scale) : 1.0 / std::sqrt(static_cast<double>(p.dim));
  const std::int64_t nseq = static_cast<std::int64_t>(p.seqs.size());
  p.bias.assign(static_cast<std::size_t>(nseq * p.heads_q), 0.0);
  p.slope.assign(static_cast<std::size_t>(nseq * p.heads_q), 0.0);
  for (std::int64_t b = 0; b < nseq; ++b) {
    for (std::int64_t h = 0; h < p.heads_q; ++h) {
      double bias = 0.0;
      switch (o.bias_mode) {
        case BiasMode::neg_log_seqlen_k: {
          const std::int64_t nk = p.seqs[b].len_k;
          bias = nk > 0 ? -std::log(static_cast<double>(nk)) : 0.0;  // no keys: no scores at all
          break;
        }
        case BiasMode::scalar: bias = o.bias_value; break;
        case BiasMode::per_head:
          if (o.bias.rank != 1 || o.bias.shape[0] != p.heads_q) bad("per_head bias must be [Hq]");
          bias = read_param(o.bias, 0, h);
          break;
        default: bad("unknown bias_mode");
      }
      p.bias[b * p.heads_q + h] = bias;
      if (o.alibi_slopes.defined()) {
        const TensorView& a = o.alibi_slopes;
        const bool ok = (a.rank == 1 && a.shape[0] == p.heads_q) ||
                        (a.rank == 2 && a.shape[0] == nseq && a.shape[1] == p.heads_q);
        if (!ok) bad("alibi_slopes must be [Hq] or [B, Hq]");
        p.slope[b * p.heads_q + h] = read_param(a, b, h);
      }
    }
  }
  p.causal = o.causal;
  p.left = o.window_left;
  p.right = o.window_right;
  p.positions = o.positions;
  return p;
}

// Runs fn(seq, kv_head) over every (sequence, kv head) pair on `threads` threads. Each pair
// owns disjoint rows of every output (dq rows of its query heads, dk/dv rows of its kv head).
template <class Fn>
void parallel_for_pairs(const Problem& p, int threads, Fn&& fn) {
  const std::int64_t items = static_cast<std::int64_t>(p.seqs.size()) * p.heads_kv;
  if (threads <= 0) threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  threads = static_cast<int>(std::min<std::int64_t>(threads, items));
  std::atomic<std::int64_t> next{0};
  auto worker = [&] {
    for (std::int64_t it = next++; it < items; it = next++) fn(it / p.heads_kv, it % p.heads_kv);
  };
  if (threads <= 1) {
    worker();
    return;
  }
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) pool.emplace_back(worker);
  for (auto& th : pool) th.join();
}

// The attention math on row-major [rows, H, D] arrays of T, for T = double (reference, no
// rounding) or T = float (plain: `low` rounds matmul operands and results to the input dtype).
// Scores are materialised for `row_block` query rows at a time (0: all of a sequence's rows,
// the whole S as a framework would); the reference uses blocks so that long sequences fit.
template <class T>
struct Engine {
  const Problem& p;
  bool low;                      // round to p.dtype where a framework would
  std::int64_t row_block = 0;    // query rows per materialised score block; 0 = all

  T rnd(T x) const { return low ? static_cast<T>(round_to_dtype(x, p.dtype)) : x; }

  // [len, D] copy of head h of rows [row, row + len) of a [rows, H, D] array.
  std::vector<T> head_rows(const std::vector<T>& a, std::int64_t heads, std::int64_t row, std::int64_t len,
                           std::int64_t h) const {
    const std::int64_t D = p.dim;
    std::vector<T> out(static_cast<std::size_t>(len * D));
    for (std::int64_t i = 0; i < len; ++i) {
      for (std::int64_t d = 0; d < D; ++d) out[i * D + d] = a[((row + i) * heads + h) * D + d];
    }
    return out;
  }
  std::vector<T> transpose(const std::vector<T>& a, std::int64_t rows) const {
    const std::int64_t D = p.dim;
    std::vector<T> t(a.size());
    for (std::int64_t i = 0; i < rows; ++i) {
      for (std::int64_t d = 0; d < D; ++d) t[d * rows + i] = a[i * D + d];
    }
    return t;
  }
  // C[m, n] = sum_d A[m, d] * Bt[d, n]  (A: [m, D] rows, Bt: [D, n]).
  std::vector<T> matmul_abt(const T* a, const std::vector<T>& bt, std::int64_t m, std::int64_t n) const {
    const std::int64_t D = p.dim;
    std::vector<T> c(static_cast<std::size_t>(m * n), T(0));
    for (std::int64_t i = 0; i < m; ++i) {
      T* ci = c.data() + i * n;
      for (std::int64_t d = 0; d < D; ++d) {
        const T aid = a[i * D + d];
        const T* bd = bt.data() + d * n;
        for (std::int64_t j = 0; j < n; ++j) ci[j] += aid * bd[j];
      }
    }
    return c;
  }

  // Sigmoid probabilities P [rows, Lk] of query rows [i0, i0 + rows) of (sequence s, query head h);
  // masked entries are 0. qh: those rows of q, [rows, D].
  std::vector<T> probs(std::int64_t s, std::int64_t h, std::int64_t i0, std::int64_t rows, const T* qh,
                       const std::vector<T>& kt) const {
    const Seq& sq = p.seqs[s];
    std::vector<T> P = matmul_abt(qh, kt, rows, sq.len_k);
    const T scale = static_cast<T>(p.scale);
    const T bias = static_cast<T>(p.bias[s * p.heads_q + h]);
    const T slope = static_cast<T>(p.slope[s * p.heads_q + h]);
    for (std::int64_t r = 0; r < rows; ++r) {
      const std::int64_t i = i0 + r;
      for (std::int64_t j = 0; j < sq.len_k; ++j) {
        T& e = P[r * sq.len_k + j];
        if (!p.visible(sq, i, j)) {
          e = T(0);
          continue;
        }
        const T x = scale * e + bias - slope * static_cast<T>(p.alibi_distance(sq, i, j));
        e = T(1) / (T(1) + std::exp(-x));
      }
    }
    return P;
  }

  std::int64_t block_of(std::int64_t len_q) const { return row_block > 0 ? row_block : std::max<std::int64_t>(len_q, 1); }

  void forward(const std::vector<T>& q, const std::vector<T>& k, const std::vector<T>& v, std::vector<T>& o,
               int threads) const {
    const std::int64_t D = p.dim, Hq = p.heads_q, Hkv = p.heads_kv, group = Hq / Hkv;
    parallel_for_pairs(p, threads, [&](std::int64_t s, std::int64_t hk) {
      const Seq& sq = p.seqs[s];
      const std::int64_t Lk = sq.len_k, blk = block_of(sq.len_q);
      const auto kt = transpose(head_rows(k, Hkv, sq.k_row, Lk, hk), Lk);
      const auto vh = head_rows(v, Hkv, sq.k_row, Lk, hk);
      for (std::int64_t h = hk * group; h < (hk + 1) * group; ++h) {
        const auto qh = head_rows(q, Hq, sq.q_row, sq.len_q, h);
        for (std::int64_t i0 = 0; i0 < sq.len_q; i0 += blk) {
          const std::int64_t rows = std::min(blk, sq.len_q - i0);
          auto P = probs(s, h, i0, rows, qh.data() + i0 * D, kt);
          for (auto& x : P) x = rnd(x);
          for (std::int64_t r = 0; r < rows; ++r) {
            std::vector<T> acc(static_cast<std::size_t>(D), T(0));
            for (std::int64_t j = 0; j < Lk; ++j) {
              const T pij = P[r * Lk + j];
              for (std::int64_t d = 0; d < D; ++d) acc[d] += pij * vh[j * D + d];
            }
            for (std::int64_t d = 0; d < D; ++d) o[((sq.q_row + i0 + r) * Hq + h) * D + d] = rnd(acc[d]);
          }
        }
      }
    });
  }

  // dbias_parts[s * Hq + h] receives the sum of dS of (s, h), abs_parts the sum of |dS|; the caller
  // reduces in order.
  void backward(const std::vector<T>& q, const std::vector<T>& k, const std::vector<T>& v, const std::vector<T>& dout,
                std::vector<T>& dq, std::vector<T>& dk, std::vector<T>& dv, std::vector<T>& dbias_parts,
                std::vector<T>& abs_parts, int threads) const {
    const std::int64_t D = p.dim, Hq = p.heads_q, Hkv = p.heads_kv, group = Hq / Hkv;
    parallel_for_pairs(p, threads, [&](std::int64_t s, std::int64_t hk) {
      const Seq& sq = p.seqs[s];
      const std::int64_t Lq = sq.len_q, Lk = sq.len_k, blk = block_of(Lq);
      const T scale = static_cast<T>(p.scale);
      const auto kh = head_rows(k, Hkv, sq.k_row, Lk, hk);
      const auto vh = head_rows(v, Hkv, sq.k_row, Lk, hk);
      const auto kt = transpose(kh, Lk);
      const auto vt = transpose(vh, Lk);
      std::vector<T> dk_acc(static_cast<std::size_t>(Lk * D), T(0)), dv_acc(dk_acc.size(), T(0));
      for (std::int64_t h = hk * group; h < (hk + 1) * group; ++h) {
        const auto qh = head_rows(q, Hq, sq.q_row, Lq, h);
        const auto doh = head_rows(dout, Hq, sq.q_row, Lq, h);
        T db = T(0), db_abs = T(0);
        for (std::int64_t i0 = 0; i0 < Lq; i0 += blk) {
          const std::int64_t rows = std::min(blk, Lq - i0);
          const T* qb = qh.data() + i0 * D;
          const T* dob = doh.data() + i0 * D;
          const auto P = probs(s, h, i0, rows, qb, kt);
          auto dS = matmul_abt(dob, vt, rows, Lk);  // dP = dO V^T
          for (std::int64_t n = 0; n < rows * Lk; ++n) {
            dS[n] = rnd(dS[n] * P[n] * (T(1) - P[n]));  // masked: P == 0, so dS == 0
            db += dS[n];
            db_abs += std::abs(dS[n]);
          }
          for (std::int64_t r = 0; r < rows; ++r) {
            std::vector<T> acc(static_cast<std::size_t>(D), T(0));
            for (std::int64_t j = 0; j < Lk; ++j) {
              const T ds = dS[r * Lk + j];
              const T pr = rnd(P[r * Lk + j]);
              for (std::int64_t d = 0; d < D; ++d) {
                acc[d] += ds * kh[j * D + d];
                dk_acc[j * D + d] += ds * qb[r * D + d];
                dv_acc[j * D + d] += pr * dob[r * D + d];
              }
            }
            for (std::int64_t d = 0; d < D; ++d) dq[((sq.q_row + i0 + r) * Hq + h) * D + d] = rnd(scale * acc[d]);
          }
        }
        dbias_parts[s * Hq + h] = db;
        abs_parts[s * Hq + h] = db_abs;
      }
      for (std::int64_t j = 0; j < Lk; ++j) {
        for (std::int64_t d = 0; d < D; ++d) {
          dk[((sq.k_row + j) * Hkv + hk) * D + d] = rnd(scale * dk_acc[j * D + d]);
          dv[((sq.k_row + j) * Hkv + hk) * D + d] = rnd(dv_acc[j * D + d]);
        }
      }
    });
  }
};

// Query rows per score block in the float64 reference: bounds its memory to 256 * Nk doubles
// per thread, so that long sequences (e.g. the CLI's checks) fit.
constexpr std::int64_t kReferenceRowBlock = 256;

template <class T>
std::vector<T> convert(const std::vector<double>& a) {
  return std::vector<T>(a.begin(), a.end());
}

template <class T>
std::vector<double> run_forward(const TensorView& q, const TensorView& k, const TensorView& v, const Options& o,
                                bool low, int threads) {
  const Problem p = make_problem(q, k, v, o);
  const Engine<T> e{p, low, low ? 0 : kReferenceRowBlock};
  std::vector<T> out(static_cast<std::size_t>(q.numel()), T(0));  // rows outside every sequence stay 0
  e.forward(convert<T>(to_vector(q)), convert<T>(to_vector(k)), convert<T>(to_vector(v)), out, threads);
  return std::vector<double>(out.begin(), out.end());
}

template <class T>
Grads run_backward(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& dout,
                   const Options& o, bool low, int threads) {
  const Problem p = make_problem(q, k, v, o);
  if (dout.rank != q.rank) bad("dout must have q's shape");
  for (int d = 0; d < q.rank; ++d) {
    if (dout.shape[d] != q.shape[d]) bad("dout must have q's shape");
  }
  const Engine<T> e{p, low, low ? 0 : kReferenceRowBlock};
  std::vector<T> dq(static_cast<std::size_t>(q.numel()), T(0)), dk(static_cast<std::size_t>(k.numel()), T(0)),
      dv(dk.size(), T(0)), parts(p.seqs.size() * static_cast<std::size_t>(p.heads_q), T(0)), abs_parts(parts);
  e.backward(convert<T>(to_vector(q)), convert<T>(to_vector(k)), convert<T>(to_vector(v)),
             convert<T>(to_vector(dout)), dq, dk, dv, parts, abs_parts, threads);
  Grads g;
  g.dq.assign(dq.begin(), dq.end());
  g.dk.assign(dk.begin(), dk.end());
  g.dv.assign(dv.begin(), dv.end());
  g.dbias.assign(static_cast<std::size_t>(p.heads_q), 0.0);
  g.dbias_abs.assign(g.dbias.size(), 0.0);
  for (std::int64_t h = 0; h < p.heads_q; ++h) {
    T acc = T(0), acc_abs = T(0);
    for (std::size_t s = 0; s < p.seqs.size(); ++s) {
      acc += parts[s * p.heads_q + h];
      acc_abs += abs_parts[s * p.heads_q + h];
    }
    g.dbias[h] = acc;
    g.dbias_abs[h] = acc_abs;
  }
  return g;
}

}  // namespace

std::vector<double> forward(const TensorView& q, const TensorView& k, const TensorView& v, const Options& o) {
  return run_forward<double>(q, k, v, o, false, 0);
}

Grads backward(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& dout,
               const Options& o) {
  return run_backward<double>(q, k, v, dout, o, false, 0);
}

std::vector<double> plain_forward(const TensorView& q, const TensorView& k, const TensorView& v, const Options& o) {
  return run_forward<float>(q, k, v, o, true, o.num_threads);
}

Grads plain_backward(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& dout,
                     const Options& o) {
  return run_backward<float>(q, k, v, dout, o, true, o.num_threads);
}

}  // namespace flashsigmoid::reference
