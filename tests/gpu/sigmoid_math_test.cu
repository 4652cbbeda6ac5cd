// Accuracy of the kernels' two sigmoid forms (src/cuda/common/sigmoid.cuh) against double
// precision, per decade of P: with b = -log(N) most P are around 1/N, so the error relative to
// small P sets the output error, and it must stay below the input dtype's rounding (fp16: 2^-11).
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "cuda/common/sigmoid.cuh"

namespace {

template <bool kExpForm>
__global__ void sigmoid_kernel(const float* x, float* y, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) {
    const float h = 0.5f * x[i];
    y[i] = kExpForm ? flashsigmoid::cuda::sigmoid_exp_form(h) : flashsigmoid::cuda::sigmoid_tanh_form(h);
  }
}

struct FormError {
  double max_abs = 0.0;
  double max_rel[6] = {0, 0, 0, 0, 0, 0};  // P in [1e-6,1e-5), ..., [0.1, 1]
  float at_minus_inf = -1.0f;
};

template <bool kExpForm>
FormError measure() {
  const int n = 1 << 20;
  std::vector<float> x(n + 1), y(n + 1);
  for (int i = 0; i < n; ++i) x[i] = -20.0f + 40.0f * float(i) / float(n);
  x[n] = -INFINITY;  // a masked score
  float *dx = nullptr, *dy = nullptr;
  EXPECT_EQ(cudaMalloc(&dx, (n + 1) * sizeof(float)), cudaSuccess);
  EXPECT_EQ(cudaMalloc(&dy, (n + 1) * sizeof(float)), cudaSuccess);
  cudaMemcpy(dx, x.data(), (n + 1) * sizeof(float), cudaMemcpyHostToDevice);
  sigmoid_kernel<kExpForm><<<(n + 256) / 256, 256>>>(dx, dy, n + 1);
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  cudaMemcpy(y.data(), dy, (n + 1) * sizeof(float), cudaMemcpyDeviceToHost);
  cudaFree(dx);
  cudaFree(dy);
  FormError e;
  for (int i = 0; i < n; ++i) {
    const double ref = 1.0 / (1.0 + std::exp(-double(x[i])));
    const double err = std::fabs(double(y[i]) - ref);
    e.max_abs = std::max(e.max_abs, err);
    const int decade = int(std::floor(std::log10(ref))) + 6;
    if (decade >= 0 && decade < 6) e.max_rel[decade] = std::max(e.max_rel[decade], err / ref);
  }
  e.at_minus_inf = y[n];
  std::printf("sigmoid %s form: max abs error %.3g; max rel error for P in [1e-6,1e-5) %.3g, [1e-5,1e-4) %.3g, "
              "[1e-4,1e-3) %.3g, [1e-3,1e-2) %.3g, [1e-2,0.1) %.3g, [0.1,1] %.3g\n",
              kExpForm ? "exp" : "tanh", e.max_abs, e.max_rel[0], e.max_rel[1], e.max_rel[2], e.max_rel[3],
              e.max_rel[4], e.max_rel[5]);
  return e;
}

bool have_device() {
  int devices = 0;
  return cudaGetDeviceCount(&devices) == cudaSuccess && devices > 0;
}

TEST(SigmoidMath, TanhFormError) {
  if (!have_device()) GTEST_SKIP() << "no CUDA device";
  const FormError e = measure<false>();
  for (int d = 0; d < 6; ++d) RecordProperty("max_rel_decade_" + std::to_string(d), std::to_string(e.max_rel[d]));
  EXPECT_LE(e.max_abs, 1e-3);  // tanh.approx: documented relative error 2^-11 on tanh
  EXPECT_EQ(e.at_minus_inf, 0.0f);
}

// The fp16 form: relative error far below fp16's rounding (2^-11 ~ 4.9e-4) down to P ~ 1e-6.
TEST(SigmoidMath, ExpFormRelativeError) {
  if (!have_device()) GTEST_SKIP() << "no CUDA device";
  const FormError e = measure<true>();
  for (int d = 0; d < 6; ++d) EXPECT_LE(e.max_rel[d], 2e-5) << "decade " << d;
  EXPECT_EQ(e.at_minus_inf, 0.0f);
}

template <class Element>
__global__ void twice_kernel(const float* x, float* once, float* twice, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) {
    once[i] = flashsigmoid::cuda::sigmoid_of_half_logit<Element>(x[i]);
    twice[i] = flashsigmoid::cuda::twice_sigmoid_of_half_logit<Element>(x[i]);
  }
}

// The Hopper forward accumulates O from 2P and halves it at the end; that is the same O only if 2P
// is exactly twice P (a power-of-2 scaling), for both forms, masked scores (-inf) included.
template <class Element>
void expect_exactly_twice() {
  const int n = 1 << 16;
  std::vector<float> x(n), once(n), twice(n);
  for (int i = 0; i < n - 1; ++i) x[i] = -20.0f + 40.0f * float(i) / float(n);
  x[n - 1] = -INFINITY;
  float *dx = nullptr, *d1 = nullptr, *d2 = nullptr;
  ASSERT_EQ(cudaMalloc(&dx, n * sizeof(float)), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&d1, n * sizeof(float)), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&d2, n * sizeof(float)), cudaSuccess);
  cudaMemcpy(dx, x.data(), n * sizeof(float), cudaMemcpyHostToDevice);
  twice_kernel<Element><<<n / 256, 256>>>(dx, d1, d2, n);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  cudaMemcpy(once.data(), d1, n * sizeof(float), cudaMemcpyDeviceToHost);
  cudaMemcpy(twice.data(), d2, n * sizeof(float), cudaMemcpyDeviceToHost);
  cudaFree(dx);
  cudaFree(d1);
  cudaFree(d2);
  int mismatches = 0;
  for (int i = 0; i < n; ++i) {
    if (twice[i] != 2.0f * once[i] && ++mismatches <= 5) {
      ADD_FAILURE() << "half logit " << x[i] << ": twice form " << twice[i] << ", 2 x plain form " << 2.0f * once[i];
    }
  }
  EXPECT_EQ(mismatches, 0);
}

TEST(SigmoidMath, TwiceFormsAreExactlyTwice) {
  if (!have_device()) GTEST_SKIP() << "no CUDA device";
  expect_exactly_twice<cutlass::bfloat16_t>();  // tanh form: 1 + tanh(h) against 0.5 + 0.5 tanh(h)
  expect_exactly_twice<cutlass::half_t>();      // exp form
}

// Every form on NaN and the infinities: NaN in gives NaN out (a NaN q, bias or ALiBi slope must not
// become a plausible P), +inf gives 1 and -inf 0. tanh.approx, ex2.approx and the approximate
// reciprocal / division all return NaN for NaN (PTX ISA).
__global__ void special_values_kernel(const float* x, float* y, int n) {
  const int i = threadIdx.x;
  if (i >= n) return;
  using flashsigmoid::cuda::sigmoid_of_half_logit;
  using flashsigmoid::cuda::twice_sigmoid_of_half_logit;
  y[6 * i + 0] = flashsigmoid::cuda::sigmoid_tanh_form(x[i]);
  y[6 * i + 1] = flashsigmoid::cuda::sigmoid_exp_form(x[i]);
  y[6 * i + 2] = 0.5f * twice_sigmoid_of_half_logit<cutlass::bfloat16_t>(x[i]);
  y[6 * i + 3] = 0.5f * twice_sigmoid_of_half_logit<cutlass::half_t>(x[i]);
  y[6 * i + 4] = sigmoid_of_half_logit<cutlass::bfloat16_t>(x[i]);
  y[6 * i + 5] = sigmoid_of_half_logit<cutlass::half_t>(x[i]);
}

TEST(SigmoidMath, NanAndInfinities) {
  if (!have_device()) GTEST_SKIP() << "no CUDA device";
  const std::vector<float> x = {NAN, -NAN, INFINITY, -INFINITY};
  const int n = static_cast<int>(x.size());
  std::vector<float> y(6 * x.size());
  float *dx = nullptr, *dy = nullptr;
  ASSERT_EQ(cudaMalloc(&dx, x.size() * sizeof(float)), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&dy, y.size() * sizeof(float)), cudaSuccess);
  cudaMemcpy(dx, x.data(), x.size() * sizeof(float), cudaMemcpyHostToDevice);
  special_values_kernel<<<1, 32>>>(dx, dy, n);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  cudaMemcpy(y.data(), dy, y.size() * sizeof(float), cudaMemcpyDeviceToHost);
  cudaFree(dx);
  cudaFree(dy);
  const char* forms[6] = {"tanh", "exp", "twice tanh", "twice exp", "bf16 default", "fp16 default"};
  for (int f = 0; f < 6; ++f) {
    SCOPED_TRACE(forms[f]);
    EXPECT_TRUE(std::isnan(y[6 * 0 + f])) << "sigmoid(NaN) = " << y[6 * 0 + f];
    EXPECT_TRUE(std::isnan(y[6 * 1 + f])) << "sigmoid(-NaN) = " << y[6 * 1 + f];
    EXPECT_NEAR(y[6 * 2 + f], 1.0f, 3e-5f) << "sigmoid(+inf)";
    EXPECT_GE(y[6 * 3 + f], 0.0f) << "sigmoid(-inf)";
    EXPECT_LT(y[6 * 3 + f], 1e-18f) << "sigmoid(-inf)";
  }
}

static_assert(flashsigmoid::cuda::kSigmoidExpForm<cutlass::half_t>,
              "fp16 takes the exp form: its rounding is finer than tanh.approx's error on small P");

}  // namespace
