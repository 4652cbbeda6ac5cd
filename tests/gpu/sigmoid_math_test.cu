// Accuracy of the kernels' sigmoid (src/cuda/common/sigmoid.cuh) against double precision,
// in the regime that matters: with b = -log(N), most P are around 1/N, so the absolute error
// near P ~ 1e-4 .. 1e-2 sets the output error.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <vector>

#include "cuda/common/sigmoid.cuh"

namespace {

__global__ void sigmoid_kernel(const float* x, float* y, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) y[i] = flashsigmoid::cuda::sigmoid_of_half_logit(0.5f * x[i]);
}

TEST(SigmoidMath, ErrorAgainstDouble) {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) GTEST_SKIP() << "no CUDA device";
  const int n = 1 << 20;
  std::vector<float> x(n), y(n);
  for (int i = 0; i < n; ++i) x[i] = -20.0f + 40.0f * float(i) / float(n);
  float *dx, *dy;
  ASSERT_EQ(cudaMalloc(&dx, n * sizeof(float)), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&dy, n * sizeof(float)), cudaSuccess);
  cudaMemcpy(dx, x.data(), n * sizeof(float), cudaMemcpyHostToDevice);
  sigmoid_kernel<<<(n + 255) / 256, 256>>>(dx, dy, n);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  cudaMemcpy(y.data(), dy, n * sizeof(float), cudaMemcpyDeviceToHost);
  cudaFree(dx);
  cudaFree(dy);

  // Max absolute error overall, and max relative error per decade of P.
  double max_abs = 0.0;
  double max_rel[6] = {0, 0, 0, 0, 0, 0};  // P in [1e-6,1e-5), ..., [0.1, 1]
  for (int i = 0; i < n; ++i) {
    const double ref = 1.0 / (1.0 + std::exp(-double(x[i])));
    const double err = std::fabs(double(y[i]) - ref);
    max_abs = std::max(max_abs, err);
    const int decade = int(std::floor(std::log10(ref))) + 6;
    if (decade >= 0 && decade < 6) max_rel[decade] = std::max(max_rel[decade], err / ref);
  }
  std::printf("sigmoid: max abs error %.3g; max rel error for P in [1e-6,1e-5) %.3g, [1e-5,1e-4) %.3g, "
              "[1e-4,1e-3) %.3g, [1e-3,1e-2) %.3g, [1e-2,0.1) %.3g, [0.1,1] %.3g\n",
              max_abs, max_rel[0], max_rel[1], max_rel[2], max_rel[3], max_rel[4], max_rel[5]);
  RecordProperty("max_abs_error", std::to_string(max_abs));
  EXPECT_LE(max_abs, 1e-3);  // tanh.approx: documented relative error 2^-11 on tanh
}

}  // namespace
