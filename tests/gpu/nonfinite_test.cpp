// The CUDA kernels' promises about non-finite values and unused rows (README "Error model"), for
// each sigmoid form (bf16: tanh.approx, fp16: exp) and each kernel family (the portable kernels
// forced, and the automatic choice: the Hopper kernels on sm_90):
//   - NaN in gives NaN out: a NaN in q, a per-head bias or an ALiBi slope reaches exactly the
//     outputs and gradients it feeds;
//   - a masked P is exactly 0: finite values in masked K / V rows leave the outputs of queries that
//     cannot see them bitwise unchanged, and key blocks a query block cannot see are never read, so
//     non-finite values there never reach it (inside a partially masked tile they can: the MMA
//     multiplies 0 by them; the README says so);
//   - varlen rows past cu_seqlens[B] of out, dq, dk and dv are written with zeros.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "cuda/kernel_choice.hpp"
#include "device_problem.hpp"
#include "flashsigmoid/flashsigmoid.hpp"
#include "problem.hpp"
#include "row_checks.hpp"

namespace {

using flashsigmoid::BiasMode;
using flashsigmoid::DType;
using flashsigmoid::testing::HostTensor;
using fs_gpu::DeviceProblem;
using fs_gpu::DeviceTensor;
using fs_test::Alibi;
using fs_test::at;
using fs_test::Case;
using fs_test::NanEqual;
using fs_test::Row;
using fs_test::row_equal;
using fs_test::row_kind;

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

struct Variant {
  DType dtype;
  const char* kernel;  // the forward and backward family: "auto" or "portable"
};

std::string variant_name(const Variant& v) {
  return std::string(v.dtype == DType::bfloat16 ? "bf16_tanh_form_" : "fp16_exp_form_") + v.kernel;
}

void PrintTo(const Variant& v, std::ostream* os) { *os << variant_name(v); }

// A head dim the Hopper kernels have when one is built (so "auto" runs them on sm_90).
int test_head_dim() {
  for (int D : fs_gpu::kBuiltHeadDims) {
    if (D == 64 || D == 128) return D;
  }
  return fs_gpu::kBuiltHeadDims.front();
}

struct Outputs {
  std::vector<double> out, dq, dk, dv, dbias;
};

std::vector<double> read(const DeviceTensor& t) {
  std::vector<unsigned char> bytes = t.download();
  return flashsigmoid::testing::to_vector(t.host_view(bytes));
}

// Forward and (when built) backward on the GPU, outputs poisoned first (HostTensor's NaN).
Outputs run(const fs_test::Problem& p) {
  DeviceProblem d(p);
  const HostTensor hq = p.like_q(), hk = p.like_k(), hdb(DType::float32, {p.c.Hq});
  DeviceTensor out(hq), dq(hq), dk(hk), dv(hk), dbias(hdb);
  flashsigmoid::forward(d.q, d.k, d.v, out, d.o);
  Outputs r;
#if defined(FLASHSIGMOID_CUDA_BACKWARD_ENABLED)
  flashsigmoid::Gradients g{dq, dk, dv, {}};
  if (p.c.bias_mode == BiasMode::per_head) g.dbias = dbias;
  flashsigmoid::backward(d.q, d.k, d.v, d.dout, g, d.o);
#endif
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  r.out = read(out);
#if defined(FLASHSIGMOID_CUDA_BACKWARD_ENABLED)
  r.dq = read(dq);
  r.dk = read(dk);
  r.dv = read(dv);
  if (p.c.bias_mode == BiasMode::per_head) r.dbias = read(dbias);
#endif
  return r;
}

constexpr bool kBackward =
#if defined(FLASHSIGMOID_CUDA_BACKWARD_ENABLED)
    true;
#else
    false;
#endif

// Queries 0..n-1 of out (and dq when the backward is built) hold the same bits in r as in clean
// (a NaN counts as a difference).
void expect_rows_unchanged(const Case& c, const Outputs& r, const Outputs& clean, std::int64_t n) {
  for (std::int64_t i = 0; i < n; ++i) {
    for (std::int64_t h = 0; h < c.Hq; ++h) {
      EXPECT_TRUE(row_equal(r.out, clean.out, c.Nq, c.Hq, c.D, i, h, NanEqual::no)) << "out row " << i << " head " << h;
      if (kBackward) {
        EXPECT_TRUE(row_equal(r.dq, clean.dq, c.Nq, c.Hq, c.D, i, h, NanEqual::no)) << "dq row " << i << " head " << h;
      }
    }
  }
}

class GpuNonFinite : public ::testing::TestWithParam<Variant> {
 protected:
  void SetUp() override {
    if (!fs_gpu::has_device()) GTEST_SKIP() << "no CUDA device";
    flashsigmoid::cuda::KernelChoice choice;
    if (std::string(GetParam().kernel) == "portable") {
      choice.forward = choice.backward = flashsigmoid::cuda::KernelFamily::portable;
    }
    choice_ = std::make_unique<flashsigmoid::cuda::ScopedKernelChoice>(choice);
  }
  // One sequence, two query heads on one kv head; deterministic backward (bitwise comparisons).
  Case base(std::int64_t n) const {
    Case c;
    c.name = variant_name(GetParam());
    c.dtype = GetParam().dtype;
    c.B = 1;
    c.Nq = c.Nk = n;
    c.Hq = 2;
    c.Hkv = 1;
    c.D = test_head_dim();
    return c;
  }
  fs_test::Problem problem(const Case& c, std::uint64_t seed) const {
    fs_test::Problem p = fs_test::make_problem(c, seed);
    p.o.deterministic = true;
    return p;
  }

 private:
  std::unique_ptr<flashsigmoid::cuda::ScopedKernelChoice> choice_;
};

TEST_P(GpuNonFinite, NanInQueryGivesNanOut) {
  const Case c = base(200);
  const std::uint64_t seed = fs_test::test_seed();
  SCOPED_TRACE(fs_test::describe(c) + "; FLASHSIGMOID_TEST_SEED=" + std::to_string(seed));
  fs_test::Problem p = problem(c, seed);
  p.q.set(at(c.Nq, c.Hq, c.D, 150, 1, 3), kNaN);
  const Outputs r = run(p);
  for (std::int64_t i = 0; i < c.Nq; ++i) {
    for (std::int64_t h = 0; h < c.Hq; ++h) {
      const Row want = i == 150 && h == 1 ? Row::nan : Row::finite;
      EXPECT_EQ(row_kind(r.out, c.Nq, c.Hq, c.D, i, h), want) << "out row " << i << " head " << h;
      if (kBackward) EXPECT_EQ(row_kind(r.dq, c.Nq, c.Hq, c.D, i, h), want) << "dq row " << i << " head " << h;
    }
  }
  for (std::int64_t j = 0; kBackward && j < c.Nk; ++j) {
    EXPECT_EQ(row_kind(r.dk, c.Nk, c.Hkv, c.D, j, 0), Row::nan) << "dk row " << j;
    EXPECT_EQ(row_kind(r.dv, c.Nk, c.Hkv, c.D, j, 0), Row::nan) << "dv row " << j;
  }
}

void expect_head_one_nan(const Case& c, const Outputs& r) {
  for (std::int64_t i = 0; i < c.Nq; ++i) {
    EXPECT_EQ(row_kind(r.out, c.Nq, c.Hq, c.D, i, 0), Row::finite) << "out row " << i << " head 0";
    EXPECT_EQ(row_kind(r.out, c.Nq, c.Hq, c.D, i, 1), Row::nan) << "out row " << i << " head 1";
    if (!kBackward) continue;
    EXPECT_EQ(row_kind(r.dq, c.Nq, c.Hq, c.D, i, 0), Row::finite) << "dq row " << i << " head 0";
    EXPECT_EQ(row_kind(r.dq, c.Nq, c.Hq, c.D, i, 1), Row::nan) << "dq row " << i << " head 1";
  }
  for (std::int64_t j = 0; kBackward && j < c.Nk; ++j) {
    EXPECT_EQ(row_kind(r.dk, c.Nk, c.Hkv, c.D, j, 0), Row::nan) << "dk row " << j;
    EXPECT_EQ(row_kind(r.dv, c.Nk, c.Hkv, c.D, j, 0), Row::nan) << "dv row " << j;
  }
}

TEST_P(GpuNonFinite, NanInPerHeadBiasGivesNanOut) {
  Case c = base(200);
  c.bias_mode = BiasMode::per_head;
  const std::uint64_t seed = fs_test::test_seed();
  SCOPED_TRACE(fs_test::describe(c) + "; FLASHSIGMOID_TEST_SEED=" + std::to_string(seed));
  fs_test::Problem p = problem(c, seed);
  p.bias.set(1, kNaN);
  const Outputs r = run(p);
  expect_head_one_nan(c, r);
  if (kBackward) {
    EXPECT_TRUE(std::isfinite(r.dbias[0]));
    EXPECT_TRUE(std::isnan(r.dbias[1]));
  }
}

TEST_P(GpuNonFinite, NanInAlibiSlopeGivesNanOut) {
  Case c = base(200);
  c.causal = true;  // partial (diagonal) blocks and full blocks both take the ALiBi path
  c.alibi = Alibi::per_head;
  const std::uint64_t seed = fs_test::test_seed();
  SCOPED_TRACE(fs_test::describe(c) + "; FLASHSIGMOID_TEST_SEED=" + std::to_string(seed));
  fs_test::Problem p = problem(c, seed);
  p.alibi.set(1, kNaN);
  expect_head_one_nan(c, run(p));
}

// Causal: query i sees keys j <= i. Large finite values in value row 40 and key row 41 (inside the
// diagonal tile of queries 0..63) contribute exactly 0 to queries 0..39: P = 0 there, 0 * x = 0.
TEST_P(GpuNonFinite, FiniteValuesInMaskedRowsContributeExactlyZero) {
  Case c = base(100);
  c.causal = true;
  const std::uint64_t seed = fs_test::test_seed();
  SCOPED_TRACE(fs_test::describe(c) + "; FLASHSIGMOID_TEST_SEED=" + std::to_string(seed));
  const Outputs clean = run(problem(c, seed));
  fs_test::Problem p = problem(c, seed);
  for (std::int64_t d = 0; d < c.D; ++d) {
    p.v.set(at(c.Nk, c.Hkv, c.D, 40, 0, d), d % 2 ? 3e4 : -3e4);
    p.k.set(at(c.Nk, c.Hkv, c.D, 41, 0, d), d % 3 ? 3e4 : -3e4);
  }
  const Outputs r = run(p);
  expect_rows_unchanged(c, r, clean, 40);
}

// Causal, 512 keys: NaN in value row 400 and key row 401, and (sliding-window problem below) in
// query row 400, lie in blocks (at most 128 rows in every kernel) that queries / keys below 256
// never share a tile with: those outputs stay bitwise unchanged. Whether the NaN reaches rows that
// share a partially masked tile with it (allowed, documented) is printed, not asserted.
TEST_P(GpuNonFinite, NanInUnreadBlocksNeverArrives) {
  Case c = base(512);
  c.causal = true;
  const std::uint64_t seed = fs_test::test_seed();
  SCOPED_TRACE(fs_test::describe(c) + "; FLASHSIGMOID_TEST_SEED=" + std::to_string(seed));
  const Outputs clean = run(problem(c, seed));
  fs_test::Problem p = problem(c, seed);
  fs_test::set_row(p.v, c.Nk, c.Hkv, c.D, 400, 0, kNaN);
  fs_test::set_row(p.k, c.Nk, c.Hkv, c.D, 401, 0, kNaN);
  const Outputs r = run(p);
  expect_rows_unchanged(c, r, clean, 256);
  int leaked = 0;
  for (std::int64_t i = 384; i < 400; ++i) leaked += row_kind(r.out, c.Nq, c.Hq, c.D, i, 0) != Row::finite;
  std::printf("[%s] masked NaN value row inside the diagonal tile reached %d of the 16 query rows 384..399\n",
              variant_name(GetParam()).c_str(), leaked);
}

TEST_P(GpuNonFinite, NanQueryInUnreadBlocksNeverArrives) {
  if (!kBackward) GTEST_SKIP() << "the CUDA backward is not built";
  Case c = base(512);
  c.window_left = 32;
  c.window_right = 0;  // query 400 sees keys 368..400, in key blocks from 256 on
  const std::uint64_t seed = fs_test::test_seed();
  SCOPED_TRACE(fs_test::describe(c) + "; FLASHSIGMOID_TEST_SEED=" + std::to_string(seed));
  const Outputs clean = run(problem(c, seed));
  fs_test::Problem p = problem(c, seed);
  fs_test::set_row(p.q, c.Nq, c.Hq, c.D, 400, 0, kNaN);
  fs_test::set_row(p.dout, c.Nq, c.Hq, c.D, 400, 1, kNaN);
  const Outputs r = run(p);
  for (std::int64_t j = 0; j < 256; ++j) {
    EXPECT_TRUE(row_equal(r.dk, clean.dk, c.Nk, c.Hkv, c.D, j, 0, NanEqual::no)) << "dk row " << j;
    EXPECT_TRUE(row_equal(r.dv, clean.dv, c.Nk, c.Hkv, c.D, j, 0, NanEqual::no)) << "dv row " << j;
  }
}

// Packed tensors with rows past cu_seqlens[B]: out, dq, dk and dv (poisoned with NaN) get zeros
// there. Those input rows hold finite values, as the README asks (the Hopper kernels load whole
// blocks).
TEST_P(GpuNonFinite, VarlenRowsPastTheLastSequenceAreZero) {
  const DType t = GetParam().dtype;
  const std::int64_t H = 2, Hkv = 1, D = test_head_dim(), rows_q = 137, rows_k = 140, extra_q = 9, extra_k = 5;
  const std::uint64_t seed = fs_test::test_seed();
  SCOPED_TRACE(variant_name(GetParam()) + "; FLASHSIGMOID_TEST_SEED=" + std::to_string(seed));
  HostTensor q(t, {rows_q + extra_q, H, D}), dout(t, {rows_q + extra_q, H, D});
  HostTensor k(t, {rows_k + extra_k, Hkv, D}), v(t, {rows_k + extra_k, Hkv, D});
  q.fill_normal(seed);
  dout.fill_normal(seed + 1);
  k.fill_normal(seed + 2);
  v.fill_normal(seed + 3);
  const HostTensor cu_q = flashsigmoid::testing::make_cu_seqlens({37, 100});
  const HostTensor cu_k = flashsigmoid::testing::make_cu_seqlens({50, 90});
  DeviceTensor dq_in(q), dk_in(k), dv_in(v), ddo(dout), dcu_q(cu_q), dcu_k(cu_k);
  flashsigmoid::Options o;
  o.cu_seqlens_q = dcu_q;
  o.cu_seqlens_k = dcu_k;
  o.max_seqlen_q = 100;
  o.max_seqlen_k = 90;
  o.causal = true;
  const HostTensor hq(t, {rows_q + extra_q, H, D}), hk(t, {rows_k + extra_k, Hkv, D});
  DeviceTensor out(hq), dq(hq), dk(hk), dv(hk);
  flashsigmoid::forward(dq_in, dk_in, dv_in, out, o);
#if defined(FLASHSIGMOID_CUDA_BACKWARD_ENABLED)
  flashsigmoid::backward(dq_in, dk_in, dv_in, ddo, {dq, dk, dv, {}}, o);
#endif
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  fs_test::expect_zero_past("out", read(out), rows_q * H * D);
  if (kBackward) {
    fs_test::expect_zero_past("dq", read(dq), rows_q * H * D);
    fs_test::expect_zero_past("dk", read(dk), rows_k * Hkv * D);
    fs_test::expect_zero_past("dv", read(dv), rows_k * Hkv * D);
  }
}

INSTANTIATE_TEST_SUITE_P(Forms, GpuNonFinite,
                         ::testing::Values(Variant{DType::bfloat16, "auto"}, Variant{DType::bfloat16, "portable"},
                                           Variant{DType::float16, "auto"}, Variant{DType::float16, "portable"}),
                         [](const ::testing::TestParamInfo<Variant>& info) { return variant_name(info.param); });

}  // namespace
