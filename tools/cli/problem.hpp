// One attention problem for the CLI: a configuration, random inputs on the host
// (kept for the reference) and on the run device, outputs, and the checks
// against the float64 reference.
#pragma once

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "flashsigmoid/flashsigmoid.hpp"
#include "memory.hpp"

namespace flashsigmoid::cli {

enum class AlibiMode { none, per_head, per_batch_head };  // slopes [Hq] or [B, Hq]

struct Config {
  std::int64_t batch = 1;
  std::int64_t seqlen_q = 1024;
  std::int64_t seqlen_k = 1024;
  std::int64_t heads_q = 8;
  std::int64_t heads_kv = 8;
  std::int64_t head_dim = 64;
  DType dtype = DType::float32;
  bool causal = false;
  std::int64_t window_left = -1;
  std::int64_t window_right = -1;
  AlibiMode alibi = AlibiMode::none;
  BiasMode bias_mode = BiasMode::neg_log_seqlen_k;
  float bias_value = 0.0f;
  // Varlen when non-empty: per-sequence lengths (batch = their count); seqlen_q/k are then the maxima.
  std::vector<std::int32_t> varlen_q, varlen_k;
  std::int64_t row_padding = 0;  // extra elements after each row (non-contiguous strides)
  int threads = 0;

  bool varlen() const { return !varlen_q.empty(); }
  std::int64_t total_q() const;  // rows of q: B*Nq, or the packed total
  std::int64_t total_k() const;
  // Bytes of every buffer a run allocates (inputs on the host and the device, outputs), computed
  // with checked arithmetic: throws flashsigmoid::Error naming the product that overflows.
  std::int64_t bytes_needed() const;
  // Forward FLOPs: 4*B*Hq*Nq*Nk*D (varlen: summed per sequence), halved for causal when Nq == Nk.
  double forward_flops() const;
  std::string describe() const;
};

struct TensorCheck {
  std::string name;
  double error = 0.0;        // relative L2 vs the float64 reference (inf for NaN/inf)
  double plain_error = -1.0; // the plain fp32 implementation's error (low precision only; -1 = not run)
  double bound = 0.0;        // the bound it had to meet
  bool pass = false;
};

// The SPEC's accuracy bounds: fp32 1e-5, fp16 2e-3, bf16 1e-2; for fp16/bf16 also at most
// 2x the plain implementation's error (with its outputs rounded to the same dtype; floor 1e-5).
double dtype_bound(DType dtype);

// Inputs of a problem on the host: contiguous [B, N, H, D] (or packed [total, H, D]) in the
// problem's dtype, plus the fp32/int32 parameter tensors. options() points into this object.
struct HostData {
  Config cfg;
  std::vector<unsigned char> q, k, v, dout;
  std::vector<float> alibi, bias;
  std::vector<std::int32_t> cu_q, cu_k;

  Options options();
  TensorView view(const std::vector<unsigned char>& data, bool is_q) const;
};

// Outputs of a run, downloaded into contiguous doubles.
struct Outputs {
  std::vector<double> out, dq, dk, dv, dbias;
};

// Compares outputs with reference::forward (and reference::backward when with_backward).
std::vector<TensorCheck> compare_with_reference(HostData& data, const Outputs& got, bool with_backward);

class Problem {
 public:
  Problem(const Config& config, Device device, std::uint64_t seed);
  Problem(const Problem&) = delete;
  Problem& operator=(const Problem&) = delete;

  const Config& config() const { return host_.cfg; }
  Device device() const { return device_; }

  // Fills the outputs (and padding) with NaN so an unwritten element fails the check.
  void poison_outputs();
  // One call of flashsigmoid::forward / backward on the device (no sync).
  void forward();
  void backward();

  // Downloads the outputs and compares them with the float64 reference.
  std::vector<TensorCheck> check(bool with_backward);
  // The same, restricted to batch 0 (all batches with a per-head bias, whose dbias sums over
  // them) and kv head 0 with its query heads: those outputs and gradients depend on nothing
  // else, so the check is exact at 1/(B*Hkv) of the full cost. Varlen: the full check.
  std::vector<TensorCheck> check_slice(bool with_backward);

 private:
  struct DeviceTensor {
    Buffer buf;
    TensorView view;
  };
  DeviceTensor make_tensor(std::int64_t rows, std::int64_t heads, const std::vector<unsigned char>* init);
  std::vector<double> download(const DeviceTensor& t, std::int64_t rows, std::int64_t heads) const;
  Outputs download_all(bool with_backward) const;

  HostData host_;
  Device device_;
  Options options_;  // device-side options
  DeviceTensor q_, k_, v_, dout_, out_, dq_, dk_, dv_;
  Buffer alibi_dev_, bias_dev_, cu_q_dev_, cu_k_dev_, dbias_dev_;
};

}  // namespace flashsigmoid::cli
