// Every rejected input throws flashsigmoid::Error with a message that names the problem.
// Each test starts from a valid problem (ValidInputIsAccepted proves it is one) and breaks one thing.
#include <gtest/gtest.h>

#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "flashsigmoid/flashsigmoid.hpp"
#include "reference/testing.hpp"

#ifndef FLASHSIGMOID_TEST_WITH_CUDA
#define FLASHSIGMOID_TEST_WITH_CUDA 0
#endif

namespace {

using flashsigmoid::BiasMode;
using flashsigmoid::Device;
using flashsigmoid::DeviceType;
using flashsigmoid::DType;
using flashsigmoid::Gradients;
using flashsigmoid::Options;
using flashsigmoid::TensorView;
using flashsigmoid::testing::HostTensor;

// Runs f; returns the text of the flashsigmoid::Error it throws ("" when it throws nothing, so the
// expectation below fails with a readable message). Other exception types fail the test.
std::string error_text(const std::function<void()>& f) {
  std::string text;
  EXPECT_THROW(
      {
        try {
          f();
        } catch (const flashsigmoid::Error& e) {
          text = e.what();
          throw;
        }
      },
      flashsigmoid::Error);
  return text;
}

#define EXPECT_ERROR(statement, substring)                                                              \
  do {                                                                                                  \
    const std::string text_ = error_text([&] { statement; });                                          \
    EXPECT_NE(text_.find(substring), std::string::npos) << "error text: \"" << text_ << "\"\nexpected it to contain: \"" \
                                                        << (substring) << "\"";                         \
  } while (0)

HostTensor filled(DType t, std::vector<std::int64_t> shape) {
  HostTensor x(t, std::move(shape));
  if (t != DType::int32) x.fill_normal(1234);
  return x;
}

// A valid dense problem: q [2, 8, 4, 64], k/v [2, 10, 2, 64] (GQA 4:2), float32 on the CPU.
struct Dense : ::testing::Test {
  HostTensor q = filled(DType::float32, {2, 8, 4, 64});
  HostTensor k = filled(DType::float32, {2, 10, 2, 64});
  HostTensor v = filled(DType::float32, {2, 10, 2, 64});
  HostTensor out = HostTensor(DType::float32, {2, 8, 4, 64});
  HostTensor dout = filled(DType::float32, {2, 8, 4, 64});
  HostTensor dq = HostTensor(DType::float32, {2, 8, 4, 64});
  HostTensor dk = HostTensor(DType::float32, {2, 10, 2, 64});
  HostTensor dv = HostTensor(DType::float32, {2, 10, 2, 64});
  HostTensor dbias = HostTensor(DType::float32, {4});
  HostTensor bias = filled(DType::float32, {4});
  Options o;

  void fwd() { flashsigmoid::forward(q, k, v, out, o); }
  void bwd(TensorView db = {}) { flashsigmoid::backward(q, k, v, dout, Gradients{dq, dk, dv, db}, o); }
  // fwd with replaced views
  void fwd(const TensorView& q_, const TensorView& k_, const TensorView& v_, const TensorView& out_) {
    flashsigmoid::forward(q_, k_, v_, out_, o);
  }
};

TEST_F(Dense, ValidInputIsAccepted) {
  EXPECT_NO_THROW(fwd());
  EXPECT_NO_THROW(bwd());
  o.bias_mode = BiasMode::per_head;
  o.bias = bias;
  EXPECT_NO_THROW(bwd(dbias));
}

TEST_F(Dense, WrongRank) {
  HostTensor q3 = filled(DType::float32, {16, 4, 64});
  EXPECT_ERROR(fwd(q3, k, v, out), "q must have rank 4 [batch, seqlen, heads, head_dim], got rank 3 [16, 4, 64]");
}

TEST_F(Dense, KAndVShapesDiffer) {
  HostTensor v2 = filled(DType::float32, {2, 11, 2, 64});
  EXPECT_ERROR(fwd(q, k, v2, out), "v must have the shape of k [2, 10, 2, 64], got [2, 11, 2, 64]");
}

TEST_F(Dense, OutShapeDiffersFromQ) {
  HostTensor out2(DType::float32, {2, 9, 4, 64});
  EXPECT_ERROR(fwd(q, k, v, out2), "out must have the shape of q [2, 8, 4, 64], got [2, 9, 4, 64]");
}

TEST_F(Dense, BackwardGradientShapesDiffer) {
  dq = HostTensor(DType::float32, {2, 8, 2, 64});
  EXPECT_ERROR(bwd(), "dq must have the shape of q");
  dq = HostTensor(DType::float32, {2, 8, 4, 64});
  dk = HostTensor(DType::float32, {2, 9, 2, 64});
  EXPECT_ERROR(bwd(), "dk must have the shape of k");
  dk = HostTensor(DType::float32, {2, 10, 2, 64});
  dout = filled(DType::float32, {1, 8, 4, 64});
  EXPECT_ERROR(bwd(), "dout must have the shape of q");
}

TEST_F(Dense, BatchMismatch) {
  HostTensor k3 = filled(DType::float32, {3, 10, 2, 64}), v3 = filled(DType::float32, {3, 10, 2, 64});
  EXPECT_ERROR(fwd(q, k3, v3, out), "k has batch 3 but q has batch 2");
}

TEST_F(Dense, HeadDimMismatch) {
  HostTensor k32 = filled(DType::float32, {2, 10, 2, 32}), v32 = filled(DType::float32, {2, 10, 2, 32});
  EXPECT_ERROR(fwd(q, k32, v32, out), "k has head_dim 32 but q has head_dim 64");
}

TEST_F(Dense, DtypeMismatch) {
  HostTensor kb = filled(DType::bfloat16, {2, 10, 2, 64});
  EXPECT_ERROR(fwd(q, kb, v, out), "k has dtype bfloat16 but q has dtype float32");
  HostTensor outh(DType::float16, {2, 8, 4, 64});
  EXPECT_ERROR(fwd(q, k, v, outh), "out has dtype float16 but q has dtype float32");
}

TEST_F(Dense, UnsupportedDtypeOnCpu) {
  HostTensor qi = filled(DType::int32, {2, 8, 4, 64}), ki = filled(DType::int32, {2, 10, 2, 64}),
             vi = filled(DType::int32, {2, 10, 2, 64}), oi = filled(DType::int32, {2, 8, 4, 64});
  EXPECT_ERROR(fwd(qi, ki, vi, oi), "q has dtype int32; accepted on cpu: float32, float16, bfloat16, float64");
}

TEST_F(Dense, DeviceMismatch) {
  TensorView kc = k.view();
  kc.device = Device{DeviceType::cuda, 0};  // host memory behind it: validation must fail before any use
  EXPECT_ERROR(fwd(q, kc, v, out), "k is on cuda:0 but q is on cpu; all tensors must be on one device");
  TensorView oc = out.view();
  oc.device = Device{DeviceType::cuda, 1};
  EXPECT_ERROR(fwd(q, k, v, oc), "out is on cuda:1 but q is on cpu");
}

TEST_F(Dense, CudaTensorsNeedFloat16OrBfloat16) {
  auto on_cuda = [](TensorView t) {
    t.device = Device{DeviceType::cuda, 0};
    return t;
  };
  EXPECT_ERROR(fwd(on_cuda(q), on_cuda(k), on_cuda(v), on_cuda(out)),
               "q has dtype float32; accepted on cuda: float16, bfloat16");
}

TEST_F(Dense, CudaTensorsWithoutCudaBackend) {
  if (FLASHSIGMOID_TEST_WITH_CUDA) {
    GTEST_SKIP() << "this build has the CUDA backend; tests/gpu covers CUDA tensors";
  }
  EXPECT_FALSE(flashsigmoid::cuda_available());
  EXPECT_TRUE(flashsigmoid::cuda_head_dims().empty());
  auto on_cuda = [](const HostTensor& h) {  // host buffers labelled cuda: never dereferenced
    TensorView t = h.view();
    t.device = Device{DeviceType::cuda, 0};
    return t;
  };
  HostTensor qh(DType::float16, {2, 8, 4, 64}), kh(DType::float16, {2, 10, 2, 64}),
      vh(DType::float16, {2, 10, 2, 64}), oh(DType::float16, {2, 8, 4, 64});
  EXPECT_ERROR(fwd(on_cuda(qh), on_cuda(kh), on_cuda(vh), on_cuda(oh)), "no CUDA backend");
  HostTensor dqh(DType::float16, {2, 8, 4, 64}), dkh(DType::float16, {2, 10, 2, 64}), dvh(DType::float16, {2, 10, 2, 64});
  EXPECT_ERROR(flashsigmoid::backward(on_cuda(qh), on_cuda(kh), on_cuda(vh), on_cuda(oh),
                                      Gradients{on_cuda(dqh), on_cuda(dkh), on_cuda(dvh), {}}, o),
               "no CUDA backend");
  EXPECT_TRUE(oh.guard_intact());
}

TEST_F(Dense, UnsupportedHeadDim) {
  HostTensor q80 = filled(DType::float32, {2, 8, 4, 80}), k80 = filled(DType::float32, {2, 10, 2, 80}),
             v80 = filled(DType::float32, {2, 10, 2, 80}), o80(DType::float32, {2, 8, 4, 80});
  EXPECT_ERROR(fwd(q80, k80, v80, o80), "head_dim 80 is not supported; accepted: 32, 64, 96, 128, 256");
}

TEST_F(Dense, QueryHeadsNotAMultipleOfKvHeads) {
  HostTensor k3 = filled(DType::float32, {2, 10, 3, 64}), v3 = filled(DType::float32, {2, 10, 3, 64});
  EXPECT_ERROR(fwd(q, k3, v3, out),
               "the number of query heads (4) must be a positive multiple of the number of key/value heads (3)");
}

TEST_F(Dense, LastDimensionNotContiguous) {
  HostTensor wide = filled(DType::float32, {2, 8, 4, 128});
  TensorView qs = wide.view();
  qs.shape[3] = 64;
  qs.stride[3] = 2;
  EXPECT_ERROR(fwd(qs, k, v, out), "q must be contiguous in its last (head_dim) dimension, got stride 2");
}

TEST_F(Dense, NegativeStride) {
  TensorView qn = q.view();
  qn.data = static_cast<float*>(qn.data) + 7 * qn.stride[1];  // row 7 first, walking backwards
  qn.stride[1] = -qn.stride[1];
  EXPECT_ERROR(fwd(qn, k, v, out), "q has a negative stride in dimension 1");
}

TEST_F(Dense, NullDataPointer) {
  TensorView qn = q.view();
  qn.data = nullptr;
  EXPECT_ERROR(fwd(qn, k, v, out), "q has a null data pointer");
  TensorView on = out.view();
  on.data = nullptr;
  EXPECT_ERROR(fwd(q, k, v, on), "out has a null data pointer");
}

TEST_F(Dense, InvalidWindow) {
  o.window_left = -2;
  EXPECT_ERROR(fwd(), "window (-2, -1) is invalid; each side must be >= 0, or -1 for unbounded");
  o.window_left = 3;
  o.window_right = -7;
  EXPECT_ERROR(fwd(), "window (3, -7) is invalid");
}

TEST_F(Dense, BadAlibiShape) {
  HostTensor a3 = filled(DType::float32, {3});
  o.alibi_slopes = a3;
  EXPECT_ERROR(fwd(), "alibi_slopes must have shape [4] or [2, 4], got [3]");
  HostTensor a24 = filled(DType::float32, {4, 2});
  o.alibi_slopes = a24;
  EXPECT_ERROR(fwd(), "alibi_slopes must have shape [4] or [2, 4], got [4, 2]");
}

TEST_F(Dense, AlibiMustBeFloat32) {
  HostTensor a = filled(DType::float16, {4});
  o.alibi_slopes = a;
  EXPECT_ERROR(fwd(), "alibi_slopes must be float32, got float16");
}

TEST_F(Dense, PerHeadBiasMissing) {
  o.bias_mode = BiasMode::per_head;
  EXPECT_ERROR(fwd(), "bias_mode per_head needs a bias tensor of shape [Hq]");
}

TEST_F(Dense, PerHeadBiasWrongShape) {
  o.bias_mode = BiasMode::per_head;
  HostTensor b3 = filled(DType::float32, {3});
  o.bias = b3;
  EXPECT_ERROR(fwd(), "bias must have shape [4] (one value per query head), got [3]");
}

TEST_F(Dense, BiasTensorWithoutPerHeadMode) {
  o.bias = bias;
  EXPECT_ERROR(fwd(), "a bias tensor was given but bias_mode is not per_head");
}

TEST_F(Dense, DbiasWithoutPerHeadMode) {
  EXPECT_ERROR(bwd(dbias), "dbias was given but bias_mode is not per_head");
  o.bias_mode = BiasMode::scalar;
  EXPECT_ERROR(bwd(dbias), "dbias was given but bias_mode is not per_head");
}

TEST_F(Dense, DbiasWrongShape) {
  o.bias_mode = BiasMode::per_head;
  o.bias = bias;
  HostTensor db2(DType::float32, {2});
  EXPECT_ERROR(bwd(db2), "dbias must have shape [4], got [2]");
}

TEST_F(Dense, NonFiniteScale) {
  o.scale = std::numeric_limits<float>::quiet_NaN();
  EXPECT_ERROR(fwd(), "scale must be finite");
}

TEST_F(Dense, NegativeThreadCount) {
  o.num_threads = -1;
  EXPECT_ERROR(fwd(), "num_threads must be >= 0");
}

// ---- outputs sharing memory with inputs or with each other ------------------------------------

// A view of `t` with another shape / strides / start (in elements): several views of one buffer.
TensorView reshaped(const HostTensor& t, std::vector<std::int64_t> shape, std::vector<std::int64_t> stride,
                    std::int64_t offset = 0) {
  TensorView v = t.view();
  v.data = static_cast<char*>(v.data) + offset * static_cast<std::int64_t>(flashsigmoid::element_size(v.dtype));
  v.rank = static_cast<int>(shape.size());
  for (int d = 0; d < v.rank; ++d) {
    v.shape[d] = shape[d];
    v.stride[d] = stride[d];
  }
  return v;
}

TEST_F(Dense, OutAliasingAnInputIsRejected) {
  HostTensor big = filled(DType::float32, {2, 8, 8, 64});  // q and out as head slices of one buffer
  const TensorView q_heads = reshaped(big, {2, 8, 4, 64}, {4096, 512, 64, 1});
  const TensorView out_same = reshaped(big, {2, 8, 4, 64}, {4096, 512, 64, 1});
  const TensorView out_shifted = reshaped(big, {2, 8, 4, 64}, {4096, 512, 64, 1}, 2 * 64);  // heads 2..5
  EXPECT_ERROR(fwd(q_heads, k, v, out_same), "out and q overlap in memory");
  EXPECT_ERROR(fwd(q_heads, k, v, out_shifted), "out and q overlap in memory");
  // out over the last bytes of v: overlapping only in v's last element.
  HostTensor kv = filled(DType::float32, {2 * 10 * 2 * 64 + 2 * 8 * 4 * 64 - 1});
  const TensorView v_first = reshaped(kv, {2, 10, 2, 64}, {1280, 128, 64, 1});
  const TensorView out_after = reshaped(kv, {2, 8, 4, 64}, {2048, 256, 64, 1}, 2 * 10 * 2 * 64 - 1);
  EXPECT_ERROR(fwd(q, k, v_first, out_after), "out and v overlap in memory");
  // One element further on, they do not overlap.
  HostTensor kv2 = filled(DType::float32, {2 * 10 * 2 * 64 + 2 * 8 * 4 * 64});
  const TensorView v2 = reshaped(kv2, {2, 10, 2, 64}, {1280, 128, 64, 1});
  const TensorView out2 = reshaped(kv2, {2, 8, 4, 64}, {2048, 256, 64, 1}, 2 * 10 * 2 * 64);
  EXPECT_NO_THROW(fwd(q, k, v2, out2));
}

TEST_F(Dense, OutAliasingKWithEqualShapes) {
  HostTensor q2 = filled(DType::float32, {2, 8, 2, 64}), k2 = filled(DType::float32, {2, 8, 2, 64});
  HostTensor v2 = filled(DType::float32, {2, 8, 2, 64});
  EXPECT_ERROR(fwd(q2, k2, v2, k2), "out and k overlap in memory");
  EXPECT_ERROR(fwd(q2, k2, v2, v2), "out and v overlap in memory");
  EXPECT_ERROR(fwd(q2, k2, v2, q2), "out and q overlap in memory");
}

TEST_F(Dense, OutputWithZeroStrideIsRejected) {
  const TensorView out_bcast = reshaped(out, {2, 8, 4, 64}, {0, 256, 64, 1});
  EXPECT_ERROR(fwd(q, k, v, out_bcast), "out has stride 0 in dimension 0");
}

TEST_F(Dense, GradientsAliasingAreRejected) {
  o.bias_mode = BiasMode::per_head;
  o.bias = bias;
  EXPECT_ERROR(flashsigmoid::backward(q, k, v, dout, Gradients{dq, dk, dk, dbias}, o), "dv and dk overlap in memory");
  EXPECT_ERROR(flashsigmoid::backward(q, k, v, dout, Gradients{dout, dk, dv, dbias}, o), "dq and dout overlap in memory");
  EXPECT_ERROR(flashsigmoid::backward(q, k, v, dout, Gradients{dq, k, dv, dbias}, o), "dk and k overlap in memory");
  EXPECT_ERROR(flashsigmoid::backward(q, k, v, dout, Gradients{dq, dk, dv, bias}, o), "dbias and bias overlap in memory");
  // dbias inside dq's storage.
  const TensorView db_in_dq = reshaped(dq, {4}, {1}, 100);
  EXPECT_ERROR(flashsigmoid::backward(q, k, v, dout, Gradients{dq, dk, dv, db_in_dq}, o), "dbias and dq overlap in memory");
  EXPECT_NO_THROW(flashsigmoid::backward(q, k, v, dout, Gradients{dq, dk, dv, dbias}, o));
}

TEST_F(Dense, EmptyTensorsNeverOverlap) {
  // An empty out whose pointer lies inside k's storage writes nothing.
  HostTensor q0(DType::float32, {2, 0, 4, 64});
  EXPECT_NO_THROW(fwd(q0, k, v, reshaped(k, {2, 0, 4, 64}, {256, 256, 64, 1})));
}

// ---- sizes that overflow 64-bit arithmetic -----------------------------------------------------

TEST_F(Dense, ElementCountOverflowIsRejected) {
  const std::int64_t big = std::int64_t(1) << 32;
  const TensorView q_big = reshaped(q, {big, big, 4, 64}, {0, 0, 64, 1});
  EXPECT_ERROR(fwd(q_big, k, v, out), "overflows a 64-bit integer");
  EXPECT_THROW(q_big.numel(), flashsigmoid::Error);
}

TEST_F(Dense, ByteExtentOverflowIsRejected) {
  const TensorView q_far = reshaped(q, {2, 8, 4, 64}, {std::int64_t(1) << 62, 256, 64, 1});
  EXPECT_ERROR(fwd(q_far, k, v, out), "overflows a 64-bit integer");
}

// A valid varlen problem: two sequences, q rows {0..8, 8..16}, k rows {0..10, 10..20}.
struct Varlen : ::testing::Test {
  HostTensor q = filled(DType::float32, {16, 4, 64});
  HostTensor k = filled(DType::float32, {20, 2, 64});
  HostTensor v = filled(DType::float32, {20, 2, 64});
  HostTensor out = HostTensor(DType::float32, {16, 4, 64});
  HostTensor cu_q = flashsigmoid::testing::make_cu_seqlens({8, 8});
  HostTensor cu_k = flashsigmoid::testing::make_cu_seqlens({10, 10});
  Options o;

  void SetUp() override {
    o.cu_seqlens_q = cu_q;
    o.cu_seqlens_k = cu_k;
    o.max_seqlen_q = 8;
    o.max_seqlen_k = 10;
  }
  void fwd() { flashsigmoid::forward(q, k, v, out, o); }
  static HostTensor cu(std::vector<double> values, DType t = DType::int32) {
    HostTensor c(t, {static_cast<std::int64_t>(values.size())});
    c.fill(values);
    return c;
  }
};

TEST_F(Varlen, ValidInputIsAccepted) { EXPECT_NO_THROW(fwd()); }

TEST_F(Varlen, WrongRank) {
  HostTensor q4 = filled(DType::float32, {1, 16, 4, 64});
  EXPECT_ERROR(flashsigmoid::forward(q4, k, v, out, o),
               "q must have rank 3 [total, heads, head_dim] (varlen), got rank 4");
}

TEST_F(Varlen, CuSeqlensNotStartingAtZero) {
  const HostTensor c = cu({1, 8, 16});
  o.cu_seqlens_q = c;
  EXPECT_ERROR(fwd(), "cu_seqlens_q[0] must be 0, got 1");
}

TEST_F(Varlen, CuSeqlensDecreasing) {
  const HostTensor c = cu({0, 6, 4});
  o.cu_seqlens_q = c;
  EXPECT_ERROR(fwd(), "cu_seqlens_q must be non-decreasing, but sequence 1 has length -2");
}

TEST_F(Varlen, CuSeqlensPastTheEnd) {
  const HostTensor c = cu({0, 10, 22});
  o.cu_seqlens_k = c;
  o.max_seqlen_k = 12;
  EXPECT_ERROR(fwd(), "cu_seqlens_k ends at 22 but the packed tensor has only 20 rows");
}

TEST_F(Varlen, CuSeqlensWrongDtype) {
  const HostTensor c = cu({0, 8, 16}, DType::float32);
  o.cu_seqlens_q = c;
  EXPECT_ERROR(fwd(), "cu_seqlens_q must be int32, got float32");
}

TEST_F(Varlen, CuSeqlensSizeMismatch) {
  const HostTensor c = cu({0, 5, 10, 20});
  o.cu_seqlens_k = c;
  EXPECT_ERROR(fwd(), "cu_seqlens_k has 4 entries but cu_seqlens_q has 3; both must be [batch + 1]");
}

TEST_F(Varlen, SequenceLongerThanMaxSeqlen) {
  o.max_seqlen_q = 7;
  EXPECT_ERROR(fwd(), "cu_seqlens_q: sequence 0 has length 8 > max_seqlen 7");
}

TEST_F(Varlen, CuSeqlensKMissing) {
  o.cu_seqlens_k = TensorView{};
  EXPECT_ERROR(fwd(), "cu_seqlens_k is required for varlen");
}

TEST_F(Varlen, AlibiBatchShapeUsesSequenceCount) {
  HostTensor a = filled(DType::float32, {3, 4});
  o.alibi_slopes = a;
  EXPECT_ERROR(fwd(), "alibi_slopes must have shape [4] or [2, 4], got [3, 4]");
}

}  // namespace
