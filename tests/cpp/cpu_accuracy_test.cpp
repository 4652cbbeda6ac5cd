// flashsigmoid::forward / backward on the CPU against the float64 reference (SPEC.md "Accuracy"):
// fresh random inputs every run, outputs poisoned with NaN inside a guard band, per-tensor
// relative L2 error within the dtype's bound and never worse than 2x the plain implementation's.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "problem.hpp"
#include "reference/reference.hpp"

namespace fs_test {
namespace {

namespace ref = flashsigmoid::reference;
using flashsigmoid::testing::rel_l2;

double dtype_bound(DType t) {
  switch (t) {
    case DType::bfloat16: return 1e-2;
    case DType::float16: return 2e-3;
    default: return 1e-5;  // float32 (SPEC) and float64 (held to float32's bound)
  }
}

// Checks one output tensor of dtype `dtype` against the reference and against the plain
// implementation's error. `conditioning` (>= 1) scales the float32 floor of the plain bar, and the
// dtype's bound up to `bound_cap`, for a tensor whose elements are sums of terms that cancel (see
// dbias below).
void check_tensor(const char* what, DType dtype, const std::vector<double>& expected,
                  const std::vector<double>& plain, const HostTensor& got, double conditioning = 1.0,
                  double bound_cap = 0.0) {
  SCOPED_TRACE(what);
  EXPECT_TRUE(got.guard_intact()) << what << ": a write landed outside the tensor (guard band or padding)";
  const double err = rel_l2(expected, got.view());  // +inf when any NaN survived (an unwritten element)
  const double plain_err = rel_l2(expected, plain);
  // For float16/bfloat16 the plain error is dominated by rounding to the dtype and "2x plain" is a
  // meaningful bar. For float32/float64 the plain error is fp32 summation noise (~1e-7, depending on
  // summation order), so 2x of it is not a stable bound; it gets a floor of 1e-6, still 10x tighter
  // than SPEC's 1e-5.
  const bool low = dtype == DType::float16 || dtype == DType::bfloat16;
  const double plain_bound = low ? 2.0 * plain_err : std::max(2.0 * plain_err, 1e-6 * conditioning);
  const double bound = std::max(dtype_bound(dtype), std::min(bound_cap, dtype_bound(dtype) * conditioning));
  EXPECT_LE(err, bound) << what << " rel L2 error " << err << " (plain: " << plain_err << ", bound " << bound
                        << ", conditioning " << conditioning << ")";
  EXPECT_LE(err, plain_bound) << what << " rel L2 error " << err << " > 2x plain " << plain_err
                              << " (float32 floor 1e-6 x conditioning " << conditioning << ")";
}

double l2(const std::vector<double>& x) {
  double s = 0.0;
  for (double v : x) s += v * v;
  return std::sqrt(s);
}

class CpuAccuracy : public ::testing::TestWithParam<Case> {};

TEST_P(CpuAccuracy, ForwardAndBackward) {
  const Case& c = GetParam();
  const std::uint64_t seed = test_seed();
  SCOPED_TRACE(describe(c) + "; FLASHSIGMOID_TEST_SEED=" + std::to_string(seed));
  Problem p = make_problem(c, seed);
  const auto q_bytes = p.q.bytes(), k_bytes = p.k.bytes(), v_bytes = p.v.bytes(), do_bytes = p.dout.bytes();

  // ---- forward
  HostTensor out = p.like_q();  // poisoned: NaN inside, canary around
  flashsigmoid::forward(p.q, p.k, p.v, out, p.o);
  const auto expected = ref::forward(p.q, p.k, p.v, p.o);
  check_tensor("out", c.dtype, expected, ref::plain_forward(p.q, p.k, p.v, p.o), out);

  // ---- backward
  HostTensor dq = p.like_q(), dk = p.like_k(), dv = p.like_k();
  HostTensor dbias(DType::float32, {c.Hq});
  flashsigmoid::Gradients g{dq, dk, dv, {}};
  if (c.bias_mode == BiasMode::per_head) g.dbias = dbias;
  flashsigmoid::backward(p.q, p.k, p.v, p.dout, g, p.o);
  const auto eg = ref::backward(p.q, p.k, p.v, p.dout, p.o);
  const auto pg = ref::plain_backward(p.q, p.k, p.v, p.dout, p.o);
  check_tensor("dq", c.dtype, eg.dq, pg.dq, dq);
  check_tensor("dk", c.dtype, eg.dk, pg.dk, dk);
  check_tensor("dv", c.dtype, eg.dv, pg.dv, dv);
  if (c.bias_mode == BiasMode::per_head) {
    // dbias is a float32 tensor whatever the inputs' dtype, computed from exact inputs: float32's bound.
    // Each element sums Nq x Nk terms dS of both signs: its rounding error scales with sum |dS|, not
    // with the sum, so where the terms cancel its relative error grows for any summation order (and
    // can be tiny by chance for one, the plain one included). The float32 floor of the plain bar is
    // therefore also 1e-7 of sum |dS| (L2 over heads; ~2 ulp): 1e-7 x the cancellation |sum |dS|| /
    // |sum dS| relative to dbias. Float32's 1e-5 stays for float32 / float64 inputs; from float16 /
    // bfloat16 inputs it is 1e-6 of sum |dS| where that is larger, at most the inputs' SPEC bound (a
    // 757 : 1 cancellation gave 1.04e-5 with float16 inputs, 1.4e-8 of sum |dS|, the plain 9.2e-4).
    const double sum = l2(eg.dbias);
    const double conditioning = sum > 0.0 ? std::max(1.0, 0.1 * l2(eg.dbias_abs) / sum) : 1.0;
    check_tensor("dbias", DType::float32, eg.dbias, pg.dbias, dbias, conditioning, dtype_bound(c.dtype));
  } else {
    EXPECT_TRUE(dbias.guard_intact());
  }

  // Inputs are read-only.
  EXPECT_EQ(p.q.bytes(), q_bytes);
  EXPECT_EQ(p.k.bytes(), k_bytes);
  EXPECT_EQ(p.v.bytes(), v_bytes);
  EXPECT_EQ(p.dout.bytes(), do_bytes);
}

std::vector<Case> cases() {
  std::vector<Case> cs;
  const DType f32 = DType::float32, bf16 = DType::bfloat16, f16 = DType::float16, f64 = DType::float64;
  auto add = [&](Case c) { cs.push_back(std::move(c)); };

  // Every dtype x every head dim (small N; a mix of causal, GQA and Nq != Nk).
  for (DType t : {f32, bf16, f16, f64}) {
    for (std::int64_t D : {32, 64, 96, 128, 256}) {
      Case c;
      c.name = std::string(flashsigmoid::to_string(t)) + "_d" + std::to_string(D);
      c.dtype = t;
      c.D = D;
      c.B = 2;
      c.Nq = 45;
      c.Nk = D == 96 ? 51 : 45;
      c.causal = D == 64 || D == 256;
      if (D == 128) c.Hq = 4;  // GQA 4:2
      add(c);
    }
  }
  // Odd sequence lengths, from 1 to 1000.
  add({.name = "n1_f32", .dtype = f32, .B = 3, .Nq = 1, .Nk = 1});
  add({.name = "n1_causal_bf16", .dtype = bf16, .B = 2, .Nq = 1, .Nk = 1, .causal = true});
  add({.name = "n17_f16_d128", .dtype = f16, .B = 2, .Nq = 17, .Nk = 17, .D = 128});
  add({.name = "n257_causal_bf16", .dtype = bf16, .B = 1, .Nq = 257, .Nk = 257, .causal = true});
  add({.name = "n257_f16_d128", .dtype = f16, .B = 1, .Nq = 257, .Nk = 257, .Hq = 2, .Hkv = 1, .D = 128});
  add({.name = "n1000_causal_bf16", .dtype = bf16, .B = 1, .Nq = 1000, .Nk = 1000, .Hq = 2, .Hkv = 1, .causal = true});
  add({.name = "n1000_f32", .dtype = f32, .B = 1, .Nq = 1000, .Nk = 1000, .Hq = 1, .Hkv = 1, .D = 128});
  add({.name = "n1000_window_alibi_f16", .dtype = f16, .B = 1, .Nq = 1000, .Nk = 1000, .Hq = 2, .Hkv = 1,
       .window_left = 128, .window_right = 0, .alibi = Alibi::per_head});
  add({.name = "n257_d256_causal_bf16", .dtype = bf16, .B = 1, .Nq = 257, .Nk = 257, .Hq = 2, .Hkv = 2, .D = 256, .causal = true});
  // Nq != Nk, causal bottom-right (Nq < Nk and Nq > Nk: the first Nq - Nk rows see nothing).
  add({.name = "causal_nq_lt_nk_f32", .dtype = f32, .Nq = 37, .Nk = 100, .causal = true});
  add({.name = "causal_nq_gt_nk_f32", .dtype = f32, .Nq = 100, .Nk = 37, .causal = true});
  add({.name = "causal_nq_lt_nk_bf16", .dtype = bf16, .Nq = 37, .Nk = 100, .D = 128, .causal = true});
  add({.name = "causal_nq_gt_nk_f16", .dtype = f16, .Nq = 100, .Nk = 37, .D = 32, .causal = true});
  add({.name = "nq_ne_nk_f16", .dtype = f16, .Nq = 20, .Nk = 70});
  add({.name = "causal_nq_gt_nk_multiblock_bf16", .dtype = bf16, .B = 1, .Nq = 300, .Nk = 200, .Hq = 2, .Hkv = 1, .causal = true});
  add({.name = "causal_nq_lt_nk_multiblock_f32", .dtype = f32, .B = 1, .Nq = 130, .Nk = 333, .Hq = 1, .Hkv = 1, .D = 32, .causal = true});
  // GQA / MQA.
  add({.name = "gqa_6_2_causal_bf16", .dtype = bf16, .Nq = 40, .Nk = 40, .Hq = 6, .Hkv = 2, .causal = true});
  add({.name = "mqa_4_1_f32", .dtype = f32, .Nq = 40, .Nk = 50, .Hq = 4, .Hkv = 1});
  add({.name = "mqa_4_1_f16", .dtype = f16, .Nq = 40, .Nk = 40, .Hq = 4, .Hkv = 1, .D = 128});
  // Varlen, uneven lengths: an empty sequence, one with keys but no queries, one with queries but no keys.
  const std::vector<std::int64_t> lq = {5, 0, 33, 17, 0, 6}, lk = {9, 0, 20, 40, 7, 0};
  add({.name = "varlen_f32", .dtype = f32, .lens_q = lq, .lens_k = lk});
  // Varlen sequences spanning several 64-row blocks, with a block-aligned one.
  const std::vector<std::int64_t> lq2 = {130, 0, 65, 200, 1}, lk2 = {64, 150, 0, 129, 77};
  add({.name = "varlen_multiblock_f32", .dtype = f32, .Hq = 2, .Hkv = 1, .D = 32, .lens_q = lq2, .lens_k = lk2});
  add({.name = "varlen_multiblock_causal_window_bf16", .dtype = bf16, .lens_q = lq2, .lens_k = lk2, .causal = true,
       .window_left = 70, .bias_mode = BiasMode::per_head});
  add({.name = "varlen_causal_bf16", .dtype = bf16, .lens_q = lq, .lens_k = lk, .causal = true});
  add({.name = "varlen_window_f16", .dtype = f16, .D = 128, .lens_q = lq, .lens_k = lk, .window_left = 6, .window_right = 3});
  add({.name = "varlen_gqa_alibi_perhead_bias_f32", .dtype = f32, .Hq = 4, .Hkv = 2, .lens_q = lq, .lens_k = lk,
       .causal = true, .bias_mode = BiasMode::per_head, .alibi = Alibi::per_batch});
  add({.name = "varlen_padded_bf16", .dtype = bf16, .Hq = 2, .Hkv = 1, .lens_q = lq, .lens_k = lk,
       .layout = Layout::padded});
  add({.name = "varlen_heads_major_f16", .dtype = f16, .lens_q = lq, .lens_k = lk, .causal = true,
       .layout = Layout::heads_major});
  // Sliding windows, alone and with causal; also with Nq != Nk.
  add({.name = "window_16_8_bf16", .dtype = bf16, .Nq = 80, .Nk = 80, .window_left = 16, .window_right = 8});
  add({.name = "window_left_unbounded_f32", .dtype = f32, .Nq = 60, .Nk = 60, .window_right = 4});
  add({.name = "window_right_unbounded_f16", .dtype = f16, .Nq = 60, .Nk = 60, .window_left = 10});
  add({.name = "window_causal_f32", .dtype = f32, .Nq = 70, .Nk = 70, .causal = true, .window_left = 8});
  add({.name = "window_causal_right_f32", .dtype = f32, .Nq = 50, .Nk = 70, .causal = true, .window_left = 5, .window_right = 9});
  add({.name = "window_0_0_bf16", .dtype = bf16, .Nq = 50, .Nk = 50, .window_left = 0, .window_right = 0});
  add({.name = "window_nq_gt_nk_f32", .dtype = f32, .Nq = 64, .Nk = 30, .window_left = 3, .window_right = 2});
  // ALiBi [Hq] and [B, Hq].
  add({.name = "alibi_heads_causal_f32", .dtype = f32, .Nq = 50, .Nk = 70, .Hq = 4, .Hkv = 2, .causal = true, .alibi = Alibi::per_head});
  add({.name = "alibi_batch_bf16", .dtype = bf16, .Nq = 60, .Nk = 45, .alibi = Alibi::per_batch});
  add({.name = "alibi_heads_window_f16", .dtype = f16, .Nq = 60, .Nk = 60, .window_left = 20, .window_right = 20, .alibi = Alibi::per_head});
  add({.name = "alibi_window_multiblock_f32", .dtype = f32, .B = 1, .Nq = 200, .Nk = 260, .Hq = 2, .Hkv = 2, .D = 32,
       .window_left = 90, .window_right = 40, .alibi = Alibi::per_batch});
  // Bias modes (per_head: dbias is checked too) and an explicit scale.
  add({.name = "bias_scalar_f32", .dtype = f32, .bias_mode = BiasMode::scalar, .bias_value = -2.5f});
  add({.name = "bias_scalar_bf16", .dtype = bf16, .causal = true, .bias_mode = BiasMode::scalar, .bias_value = 1.5f});
  add({.name = "bias_per_head_f32", .dtype = f32, .Nq = 40, .Nk = 55, .Hq = 4, .Hkv = 2, .bias_mode = BiasMode::per_head});
  add({.name = "bias_per_head_bf16", .dtype = bf16, .Nq = 64, .Nk = 64, .Hq = 3, .Hkv = 1, .causal = true, .bias_mode = BiasMode::per_head});
  add({.name = "bias_per_head_f16", .dtype = f16, .Nq = 64, .Nk = 64, .D = 128, .bias_mode = BiasMode::per_head, .alibi = Alibi::per_head});
  add({.name = "bias_per_head_f64", .dtype = f64, .bias_mode = BiasMode::per_head});
  add({.name = "scale_0_3_f32", .dtype = f32, .scale = 0.3f});
  // Non-contiguous layouts (inputs and outputs alike).
  add({.name = "padded_f32", .dtype = f32, .Nq = 30, .Nk = 41, .Hq = 4, .Hkv = 2, .causal = true, .layout = Layout::padded});
  add({.name = "heads_major_bf16", .dtype = bf16, .Nq = 30, .Nk = 30, .Hq = 4, .Hkv = 1, .D = 128, .layout = Layout::heads_major});
  // Global positions (one block of a longer sequence): keys all in the past, all in the future
  // (every output row 0), the diagonal crossing the block pair, queries before and after keys,
  // with windows, ALiBi, GQA, varlen and a learnable bias.
  using Pos = Options::PositionOffsets;
  add({.name = "pos_causal_past_keys_f32", .dtype = f32, .B = 1, .Nq = 70, .Nk = 90, .causal = true,
       .positions = Pos{200, 64}});
  add({.name = "pos_causal_future_keys_bf16", .dtype = bf16, .B = 2, .Nq = 70, .Nk = 90, .causal = true,
       .positions = Pos{0, 100}});
  add({.name = "pos_causal_diagonal_f32", .dtype = f32, .B = 1, .Nq = 150, .Nk = 130, .Hq = 2, .Hkv = 1, .D = 32,
       .causal = true, .bias_mode = BiasMode::per_head, .positions = Pos{96, 40}});
  add({.name = "pos_causal_queries_first_f16", .dtype = f16, .B = 1, .Nq = 100, .Nk = 140, .D = 128, .causal = true,
       .positions = Pos{10, 50}});
  add({.name = "pos_window_alibi_bf16", .dtype = bf16, .B = 1, .Nq = 200, .Nk = 150, .Hq = 2, .Hkv = 2, .D = 32,
       .window_left = 100, .window_right = 20, .alibi = Alibi::per_head, .positions = Pos{300, 180}});
  add({.name = "pos_causal_alibi_gqa_f32", .dtype = f32, .B = 2, .Nq = 66, .Nk = 129, .Hq = 4, .Hkv = 2, .D = 32,
       .causal = true, .bias_mode = BiasMode::scalar, .bias_value = -4.0f, .alibi = Alibi::per_batch,
       .positions = Pos{129, 0}});
  add({.name = "pos_alibi_no_mask_f32", .dtype = f32, .B = 1, .Nq = 40, .Nk = 70, .alibi = Alibi::per_head,
       .positions = Pos{90, 60}});
  add({.name = "pos_window_only_f64", .dtype = f64, .B = 1, .Nq = 90, .Nk = 90, .window_left = 30, .window_right = 30,
       .positions = Pos{0, 70}});
  add({.name = "pos_varlen_causal_window_bf16", .dtype = bf16, .Hq = 2, .Hkv = 1, .lens_q = lq2, .lens_k = lk2,
       .causal = true, .window_left = 90, .bias_mode = BiasMode::per_head, .positions = Pos{64, 20}});
  // The backward's chunks of key blocks (backward.cpp): 10 key blocks in 8 chunks of one or two blocks
  // (a window leaves some chunks seeing few queries); 16 blocks in 8 chunks of two; varlen sequences with
  // fewer key blocks than chunks (empty chunks), with GQA, causal and a learnable bias.
  add({.name = "chunks_uneven_window_gqa_bias_f32", .dtype = f32, .B = 1, .Nq = 640, .Nk = 600, .Hq = 4, .Hkv = 2,
       .D = 32, .window_left = 200, .window_right = 50, .bias_mode = BiasMode::per_head});
  add({.name = "chunks_uneven_causal_gqa_bias_bf16", .dtype = bf16, .B = 1, .Nq = 600, .Nk = 600, .Hq = 4, .Hkv = 2,
       .D = 64, .causal = true, .bias_mode = BiasMode::per_head});
  add({.name = "chunks_two_blocks_bf16_d128", .dtype = bf16, .B = 1, .Nq = 1024, .Nk = 1024, .Hq = 1, .Hkv = 1,
       .D = 128});
  const std::vector<std::int64_t> lq3 = {300, 64, 1, 0, 190}, lk3 = {520, 40, 130, 70, 190};
  add({.name = "varlen_chunks_gqa_causal_bias_bf16", .dtype = bf16, .Hq = 4, .Hkv = 2, .D = 32, .lens_q = lq3,
       .lens_k = lk3, .causal = true, .bias_mode = BiasMode::per_head});
  add({.name = "varlen_chunks_gqa_window_bias_f16", .dtype = f16, .Hq = 4, .Hkv = 1, .D = 32, .lens_q = lq3,
       .lens_k = lk3, .window_left = 100, .window_right = 30, .bias_mode = BiasMode::per_head,
       .alibi = Alibi::per_batch});
  return cs;
}

INSTANTIATE_TEST_SUITE_P(Cases, CpuAccuracy, ::testing::ValuesIn(cases()),
                         [](const ::testing::TestParamInfo<Case>& info) { return info.param.name; });

// The CPU path promises bitwise reproducible results.
TEST(CpuDeterminism, BackwardTwiceIsBitwiseEqual) {
  const std::uint64_t seed = test_seed();
  SCOPED_TRACE("FLASHSIGMOID_TEST_SEED=" + std::to_string(seed));
  Case c{.name = "det", .dtype = DType::bfloat16, .Nq = 70, .Nk = 90, .Hq = 4, .Hkv = 1, .causal = true,
         .bias_mode = BiasMode::per_head};
  Problem p = make_problem(c, seed);
  p.o.deterministic = true;
  std::vector<std::vector<unsigned char>> runs[2];
  for (auto& r : runs) {
    HostTensor out = p.like_q(), dq = p.like_q(), dk = p.like_k(), dv = p.like_k(), db(DType::float32, {c.Hq});
    flashsigmoid::forward(p.q, p.k, p.v, out, p.o);
    flashsigmoid::backward(p.q, p.k, p.v, p.dout, {dq, dk, dv, db}, p.o);
    r = {out.bytes(), dq.bytes(), dk.bytes(), dv.bytes(), db.bytes()};
  }
  EXPECT_EQ(runs[0], runs[1]);
}

// ... and the same bits whatever the thread count: the backward's sums run in an order fixed by the
// shapes (chunks of key blocks, reduced in chunk order), not by which thread ran which task.
TEST(CpuDeterminism, BackwardSameBitsAnyThreadCount) {
  const std::uint64_t seed = test_seed();
  SCOPED_TRACE("FLASHSIGMOID_TEST_SEED=" + std::to_string(seed));
  for (DType t : {DType::float32, DType::bfloat16}) {
    Case c{.name = "threads", .dtype = t, .B = 2, .Nq = 300, .Nk = 330, .Hq = 4, .Hkv = 2, .D = 32, .causal = true,
           .bias_mode = BiasMode::per_head};
    std::vector<std::vector<unsigned char>> first;
    for (int threads : {1, 2, 3, 8}) {
      Problem p = make_problem(c, seed);
      p.o.num_threads = threads;
      HostTensor dq = p.like_q(), dk = p.like_k(), dv = p.like_k(), db(DType::float32, {c.Hq});
      flashsigmoid::backward(p.q, p.k, p.v, p.dout, {dq, dk, dv, db}, p.o);
      std::vector<std::vector<unsigned char>> run = {dq.bytes(), dk.bytes(), dv.bytes(), db.bytes()};
      if (first.empty()) {
        first = run;
      } else {
        EXPECT_TRUE(run == first) << flashsigmoid::to_string(t) << ": bits differ with " << threads << " threads";
      }
    }
  }
}

}  // namespace
}  // namespace fs_test
