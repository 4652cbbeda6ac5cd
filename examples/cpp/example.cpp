// Sigmoid attention on the CPU: forward, then backward, through the flashsigmoid C++ API.
#include <flashsigmoid/flashsigmoid.hpp>

#include <cstdio>
#include <random>
#include <vector>

int main() {
  const std::int64_t B = 1, N = 256, H = 4, D = 64;
  const std::size_t n = B * N * H * D;

  // q, k, v: float32 [batch, seqlen, heads, head_dim], filled with random values.
  std::mt19937 gen(0);
  std::normal_distribution<float> normal;
  std::vector<float> q(n), k(n), v(n), out(n);
  for (std::size_t i = 0; i < n; ++i) {
    q[i] = normal(gen);
    k[i] = normal(gen);
    v[i] = normal(gen);
  }
  using flashsigmoid::DType;
  using flashsigmoid::TensorView;
  auto view = [&](std::vector<float>& x) { return TensorView::contiguous(x.data(), DType::float32, {B, N, H, D}); };

  flashsigmoid::Options options;  // scale 1/sqrt(D), bias -log(N)
  options.causal = true;

  try {
    // out = sigmoid(scale * q k^T + bias) v
    flashsigmoid::forward(view(q), view(k), view(v), view(out), options);
    std::printf("out[0, 0, 0, 0] = %f\n", out[0]);

    // Gradients of sum(dout * out) with respect to q, k and v.
    std::vector<float> dout(n, 1.0f), dq(n), dk(n), dv(n);
    flashsigmoid::backward(view(q), view(k), view(v), view(dout), {view(dq), view(dk), view(dv), {}}, options);
    std::printf("dq[0, 0, 0, 0] = %f\n", dq[0]);
  } catch (const flashsigmoid::Error& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
  return 0;
}
