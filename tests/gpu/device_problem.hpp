// Shared by the GPU tests: a Problem (tests/cpp/problem.hpp) mirrored on the device, the list of
// cases every kernel is tested on (every option, odd shapes, Nq != Nk, GQA/MQA, varlen with empty
// sequences, window, ALiBi, bias modes) expanded over {bf16, fp16} x the built head dims.
#pragma once

#include <algorithm>
#include <cstdlib>
#include <string>
#include <utility>
#include <vector>

#include "device_buffer.hpp"
#include "problem.hpp"  // tests/cpp: Case, make_problem, describe, test_seed

namespace fs_gpu {

using flashsigmoid::BiasMode;
using flashsigmoid::DType;
using flashsigmoid::testing::Layout;
using fs_test::Alibi;
using fs_test::Case;

// Head dims compiled into this build (from FLASHSIGMOID_HEAD_DIMS).
inline const std::vector<int> kBuiltHeadDims = {FLASHSIGMOID_TEST_HEAD_DIMS};

// A supported head dim that this build did not instantiate, or 0 when every one is built.
inline int unbuilt_head_dim() {
  for (int D : flashsigmoid::kSupportedHeadDims) {
    if (std::find(kBuiltHeadDims.begin(), kBuiltHeadDims.end(), D) == kBuiltHeadDims.end()) return D;
  }
  return 0;
}

// Runs f, which must throw flashsigmoid::Error whose message contains `needle`.
template <class F>
void expect_error(F&& f, const std::string& needle) {
  try {
    f();
    ADD_FAILURE() << "expected flashsigmoid::Error containing '" << needle << "'";
  } catch (const flashsigmoid::Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

// SPEC.md's relative-L2 bounds per input dtype.
inline double tolerance(DType t) { return t == DType::bfloat16 ? 1e-2 : 2e-3; }

// Uploads the per-head bias and ALiBi slopes that `o` uses (host copies host_bias, host_alibi)
// into bias / alibi and points `o` at them.
inline void upload_head_params(const flashsigmoid::testing::HostTensor& host_bias,
                               const flashsigmoid::testing::HostTensor& host_alibi, flashsigmoid::Options& o,
                               DeviceTensor& bias, DeviceTensor& alibi) {
  if (o.bias.defined()) {
    bias = DeviceTensor(host_bias);
    o.bias = bias;
  }
  if (o.alibi_slopes.defined()) {
    alibi = DeviceTensor(host_alibi);
    o.alibi_slopes = alibi;
  }
}

// The problem's tensors mirrored on the GPU, and the options pointing at them.
struct DeviceProblem {
  DeviceTensor q, k, v, dout, cu_q, cu_k, bias, alibi;
  flashsigmoid::Options o;
  explicit DeviceProblem(const fs_test::Problem& p) : q(p.q), k(p.k), v(p.v), dout(p.dout) {
    o = p.o;
    if (p.o.cu_seqlens_q.defined()) {
      cu_q = DeviceTensor(p.cu_q);
      cu_k = DeviceTensor(p.cu_k);
      o.cu_seqlens_q = cu_q;
      o.cu_seqlens_k = cu_k;
    }
    upload_head_params(p.bias, p.alibi, o, bias, alibi);
  }
};

// Appends a case named `name`: the defaults of Case, then `edit` (the case lists' building block).
template <class Edit>
void add_case(std::vector<Case>& list, std::string name, Edit&& edit) {
  Case c;
  c.name = std::move(name);
  edit(c);
  list.push_back(c);
}

// GTest needs at least one case per suite: a list left empty because none of its head dims is built
// gets one placeholder (D 0) that the test skips, saying so.
inline std::vector<Case> or_placeholder(std::vector<Case> cases) {
  if (cases.empty()) {
    Case c;
    c.name = "no_head_dim_built";
    c.D = 0;
    cases.push_back(c);
  }
  return cases;
}

inline std::vector<Case> base_cases() {
  std::vector<Case> base;
  auto add = [&](std::string name, auto&& edit) { add_case(base, std::move(name), edit); };
  add("basic", [](Case& c) { c.B = 2; c.Nq = c.Nk = 130; });
  add("one_block", [](Case& c) { c.B = 1; c.Nq = c.Nk = 64; });
  add("tiny", [](Case& c) { c.B = 3; c.Nq = 1; c.Nk = 1; });
  add("short_q", [](Case& c) { c.Nq = 5; c.Nk = 3; });
  add("nq_lt_nk", [](Case& c) { c.Nq = 77; c.Nk = 513; });
  add("nq_gt_nk", [](Case& c) { c.Nq = 300; c.Nk = 45; });
  add("causal", [](Case& c) { c.Nq = c.Nk = 257; c.causal = true; });
  add("causal_nq_lt_nk", [](Case& c) { c.Nq = 100; c.Nk = 300; c.causal = true; });
  add("causal_nq_gt_nk", [](Case& c) { c.Nq = 300; c.Nk = 100; c.causal = true; });  // rows with no keys
  add("window", [](Case& c) { c.Nq = c.Nk = 300; c.window_left = 32; c.window_right = 16; });
  add("window_left_causal", [](Case& c) { c.Nq = c.Nk = 333; c.window_left = 64; c.causal = true; });
  add("window_right_only", [](Case& c) { c.Nq = 200; c.Nk = 260; c.window_right = 20; });
  add("window_zero", [](Case& c) { c.Nq = c.Nk = 150; c.window_left = 0; c.window_right = 0; });
  add("alibi_per_head", [](Case& c) { c.Nq = c.Nk = 200; c.alibi = Alibi::per_head; });
  add("alibi_per_batch_causal", [](Case& c) { c.Nq = 90; c.Nk = 170; c.causal = true; c.alibi = Alibi::per_batch; });
  add("bias_scalar", [](Case& c) { c.Nq = c.Nk = 140; c.bias_mode = BiasMode::scalar; c.bias_value = -3.5f; });
  add("bias_per_head", [](Case& c) { c.Hq = 4; c.Hkv = 4; c.Nq = c.Nk = 140; c.bias_mode = BiasMode::per_head; });
  add("scale", [](Case& c) { c.Nq = c.Nk = 100; c.scale = 0.3f; });
  add("gqa", [](Case& c) { c.Hq = 8; c.Hkv = 2; c.Nq = 70; c.Nk = 190; });
  add("mqa_causal", [](Case& c) { c.Hq = 4; c.Hkv = 1; c.Nq = c.Nk = 160; c.causal = true; });
  add("heads_major", [](Case& c) { c.Hq = 4; c.Hkv = 2; c.Nq = c.Nk = 129; c.layout = Layout::heads_major; });
  add("long_causal", [](Case& c) { c.B = 1; c.Hq = c.Hkv = 1; c.Nq = c.Nk = 1500; c.causal = true; });
  // Every P ~ 1e-4 or smaller (b = -log 2049, ALiBi): the sigmoid's error relative to small P shows
  // in fp16 here (the tanh form measured 2.5-2.9x the plain implementation's error; sigmoid.cuh).
  add("small_p_causal_alibi", [](Case& c) {
    c.B = 1; c.Nq = 200; c.Nk = 2049; c.causal = true; c.alibi = Alibi::per_head;
  });
  add("small_p_varlen", [](Case& c) { c.lens_q = {3000, 40}; c.lens_k = {3000, 2500}; });
  add("empty_keys", [](Case& c) { c.Nq = 20; c.Nk = 0; });
  add("varlen", [](Case& c) { c.Hq = 4; c.Hkv = 2; c.lens_q = {37, 0, 200, 129}; c.lens_k = {50, 10, 180, 129}; });
  add("varlen_causal", [](Case& c) { c.lens_q = {1, 65, 300}; c.lens_k = {1, 200, 300}; c.causal = true; });
  add("varlen_window_alibi", [](Case& c) {
    c.lens_q = {130, 3, 64}; c.lens_k = {130, 0, 100}; c.window_left = 17; c.window_right = 5; c.alibi = Alibi::per_batch;
  });
  add("varlen_gqa_bias", [](Case& c) {
    c.Hq = 6; c.Hkv = 3; c.lens_q = {70, 129}; c.lens_k = {90, 64}; c.bias_mode = BiasMode::per_head;
  });
  // Global positions (Options::positions: one block of a longer sequence, as context parallelism
  // runs it): keys all in the past, all in the future (every output 0), the diagonal inside tiles,
  // windows and ALiBi far from position 0, varlen, GQA with a learnable bias.
  using Pos = flashsigmoid::Options::PositionOffsets;
  add("pos_past_keys_causal", [](Case& c) { c.Nq = 200; c.Nk = 150; c.causal = true; c.positions = Pos{500, 100}; });
  add("pos_future_keys_causal", [](Case& c) { c.Nq = 130; c.Nk = 140; c.causal = true; c.positions = Pos{0, 200}; });
  add("pos_diagonal_causal", [](Case& c) { c.Nq = 300; c.Nk = 260; c.causal = true; c.positions = Pos{70, 33}; });
  add("pos_window_alibi", [](Case& c) {
    c.Nq = c.Nk = 257; c.window_left = 40; c.window_right = 10; c.alibi = Alibi::per_head; c.positions = Pos{1000, 900};
  });
  add("pos_varlen_causal", [](Case& c) {
    c.lens_q = {130, 0, 64}; c.lens_k = {100, 20, 129}; c.causal = true; c.positions = Pos{64, 0};
  });
  add("pos_gqa_bias_causal", [](Case& c) {
    c.Hq = 4; c.Hkv = 2; c.Nq = 190; c.Nk = 200; c.causal = true; c.bias_mode = BiasMode::per_head; c.positions = Pos{129, 1};
  });

  return base;
}

// Each base case for bf16 and fp16 and every built head dim, named <case>_<dtype>_d<D>.
inline std::vector<Case> expand_cases(const std::vector<Case>& base) {
  std::vector<Case> cases;
  for (int D : kBuiltHeadDims) {
    for (DType t : {DType::bfloat16, DType::float16}) {
      for (Case c : base) {
        c.D = D;
        c.dtype = t;
        c.name += std::string(t == DType::bfloat16 ? "_bf16" : "_fp16") + "_d" + std::to_string(D);
        cases.push_back(c);
      }
    }
  }
  return cases;
}


}  // namespace fs_gpu
