// CUDA forward (or, with --backward, backward) benchmark of flashsigmoid on SPEC.md's shapes:
// B*N = 16384, Hq*D = 2048, N in 1k..16k, D 64/128, causal or not, bf16 (--dtype fp16: fp16); plus GQA 32:8 at D 128.
// CUDA events, median of many repetitions after warm-up, rotating over several input sets so L2
// is not what is timed. TFLOP/s = 4*B*Hq*Nq*Nk*D / t, halved for causal; the backward counts 2.5x
// that (SPEC.md).
// The "kernel" column names the forward (with --backward: the backward) kernel that ran ("hopper" or
// "portable": the dispatch picks the Hopper kernels on sm_90 devices in builds with FLASHSIGMOID_HOPPER=ON;
// the Hopper backward at head dims 64 / 128). --kernel portable forces the portable forward (with
// --backward, the portable backward) through flashsigmoid::cuda::kernel_choice(); --kernel both times each shape
// with the automatic choice and then with the portable kernel, in the same process. --kernel also
// takes a comma-separated list of modes, timed back to back per shape: auto, portable, and two Hopper
// schedule variants for A/B runs, per-tile (one CTA per tile, not persistent) and no-l2-group (causal
// longest-first across every head). --shape D:N:causal times one shape (e.g. for ncu). --varlen passes
// the same B sequences of length N packed ([B*N, H, D] with cu_seqlens), to compare the varlen path
// with the dense one at equal work. --alibi adds per-head ALiBi slopes (2^(-8 (h + 1) / Hq), as the
// ALiBi paper) to every shape.
//   usage: flashsigmoid_cuda_fwd_bench [--reps N] [--quick] [--backward] [--deterministic] [--dtype bf16|fp16]
//                                      [--kernel auto|portable|both|MODE,MODE...] [--shape D:N:causal] [--varlen]
//                                      [--alibi]
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "cuda/kernel_choice.hpp"  // kernel_choice, last_forward_kernel, last_backward_kernel
#include "flashsigmoid/flashsigmoid.hpp"

namespace {

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) {
    std::fprintf(stderr, "%s: %s\n", what, cudaGetErrorString(e));
    std::exit(1);
  }
}

// Random bf16 or fp16 values, normal-ish (sum of uniforms), never zero.
std::vector<std::uint16_t> random_values(std::size_t n, std::uint64_t seed, bool fp16) {
  std::vector<std::uint16_t> out(n);
  std::uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;
  for (std::size_t i = 0; i < n; ++i) {
    float acc = 0.0f;
    for (int k = 0; k < 4; ++k) {
      s ^= s << 13;
      s ^= s >> 7;
      s ^= s << 17;
      acc += float(s >> 40) / float(1 << 24) - 0.5f;
    }
    float x = acc * 1.7f;
    if (x == 0.0f) x = 0.01f;
    if (fp16) {
      out[i] = __half_as_ushort(__float2half_rn(x));
      continue;
    }
    std::uint32_t bits;
    std::memcpy(&bits, &x, 4);
    out[i] = std::uint16_t((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  int reps = 30;
  bool quick = false;
  bool backward = false;
  bool deterministic = false;
  bool varlen = false;
  bool alibi = false;
  std::string kernel_arg = "auto";
  std::string shape_arg;
  std::string dtype_arg = "bf16";
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--kernel") && i + 1 < argc) kernel_arg = argv[++i];
    if (!std::strcmp(argv[i], "--shape") && i + 1 < argc) shape_arg = argv[++i];
    if (!std::strcmp(argv[i], "--dtype") && i + 1 < argc) dtype_arg = argv[++i];
    if (!std::strcmp(argv[i], "--reps") && i + 1 < argc) reps = std::atoi(argv[++i]);
    if (!std::strcmp(argv[i], "--quick")) quick = true;
    if (!std::strcmp(argv[i], "--backward")) backward = true;
    if (!std::strcmp(argv[i], "--deterministic")) deterministic = true;
    if (!std::strcmp(argv[i], "--varlen")) varlen = true;
    if (!std::strcmp(argv[i], "--alibi")) alibi = true;
  }
  const char* pass = backward ? "backward" : "forward";
  if (dtype_arg != "bf16" && dtype_arg != "fp16") {
    std::fprintf(stderr, "--dtype takes bf16 or fp16; got %s\n", dtype_arg.c_str());
    return 2;
  }
  const bool fp16 = dtype_arg == "fp16";
  const flashsigmoid::DType dtype = fp16 ? flashsigmoid::DType::float16 : flashsigmoid::DType::bfloat16;
  std::vector<std::string> kernel_modes;
  if (kernel_arg == "both") kernel_arg = "auto,portable";
  for (std::size_t pos = 0; pos <= kernel_arg.size();) {
    const std::size_t end = std::min(kernel_arg.find(',', pos), kernel_arg.size());
    const std::string mode = kernel_arg.substr(pos, end - pos);
    if (mode != "auto" && mode != "portable" && mode != "per-tile" && mode != "no-l2-group") {
      std::fprintf(stderr, "--kernel takes both or a comma-separated list of auto, portable, per-tile, no-l2-group; got %s\n",
                   kernel_arg.c_str());
      return 2;
    }
    kernel_modes.push_back(mode);
    pos = end + 1;
  }
  int only_d = 0, only_n = 0, only_causal = -1;
  if (!shape_arg.empty() && std::sscanf(shape_arg.c_str(), "%d:%d:%d", &only_d, &only_n, &only_causal) != 3) {
    std::fprintf(stderr, "--shape takes D:N:causal (e.g. 128:4096:0), got %s\n", shape_arg.c_str());
    return 2;
  }
  constexpr std::int64_t kTokens = 16384, kWidth = 2048;  // B*N and Hq*D
  struct Shape {
    int D, N, Hq, Hkv;
    bool causal;
  };
  std::vector<Shape> shapes;
  const std::vector<int> ns = quick ? std::vector<int>{1024, 8192} : std::vector<int>{1024, 2048, 4096, 8192, 16384};
  for (int D : {64, 128}) {
    for (bool causal : {false, true}) {
      for (int N : ns) shapes.push_back({D, N, int(kWidth / D), int(kWidth / D), causal});
    }
  }
  for (bool causal : {false, true}) {
    for (int N : {2048, 8192}) shapes.push_back({128, N, 32, 8, causal});
  }

  // Each shape once per kernel mode, the modes of one shape back to back.
  struct Run {
    Shape shape;
    std::string mode;
  };
  std::vector<Run> runs;
  for (const Shape& sh : shapes) {
    if (only_d && (sh.D != only_d || sh.N != only_n || int(sh.causal) != only_causal || sh.Hq != sh.Hkv)) continue;
    for (const std::string& mode : kernel_modes) runs.push_back({sh, mode});
  }
  if (runs.empty()) {
    std::fprintf(stderr, "--shape %s matches none of the benchmark's MHA shapes; accepted: D 64 or 128, N %s, causal 0 or 1\n",
                 shape_arg.c_str(), quick ? "1024 or 8192 (--quick)" : "1024, 2048, 4096, 8192 or 16384");
    return 2;
  }

  int dev = 0;
  cudaDeviceProp prop{};
  check(cudaGetDeviceProperties(&prop, dev), "cudaGetDeviceProperties");
  std::printf("# flashsigmoid CUDA %s, %s (%d SMs), %s%s, median of %d reps\n", pass, prop.name,
              prop.multiProcessorCount, dtype_arg.c_str(),
              (std::string(varlen ? ", varlen (B sequences of N packed)" : "") + (alibi ? ", ALiBi" : "")).c_str(), reps);

  constexpr int kSets = 3;
  // GQA 32:8 at D 128 has Hq*D = 4096: size buffers for the largest q.
  const std::size_t max_elems = std::size_t(kTokens) * 4096;
  std::vector<void*> q(kSets), k(kSets), v(kSets);
  void* o = nullptr;
  for (int s = 0; s < kSets; ++s) {
    for (auto* ptr : {&q[s], &k[s], &v[s]}) {
      check(cudaMalloc(ptr, max_elems * 2), "cudaMalloc");
      const auto host = random_values(max_elems, std::uint64_t(s) * 3 + (ptr == &q[s] ? 0 : ptr == &k[s] ? 1 : 2), fp16);
      check(cudaMemcpy(*ptr, host.data(), max_elems * 2, cudaMemcpyHostToDevice), "cudaMemcpy");
    }
  }
  check(cudaMalloc(&o, max_elems * 2), "cudaMalloc");
  // Backward: dO (random) and the three gradients.
  void *dout = nullptr, *dq = nullptr, *dk = nullptr, *dv = nullptr;
  if (backward) {
    for (void** ptr : {&dout, &dq, &dk, &dv}) check(cudaMalloc(ptr, max_elems * 2), "cudaMalloc");
    const auto host = random_values(max_elems, 99, fp16);
    check(cudaMemcpy(dout, host.data(), max_elems * 2, cudaMemcpyHostToDevice), "cudaMemcpy");
  }
  // --varlen: cu_seqlens 0, N, 2N, ... for the largest batch (N = 1k: 17 entries); each shape uses its
  // first B + 1.
  std::int32_t* cu_seqlens = nullptr;
  check(cudaMalloc(&cu_seqlens, (kTokens / 1024 + 1) * sizeof(std::int32_t)), "cudaMalloc");
  // --alibi: slopes for the most heads any shape has (GQA 32:8 at D 128: 32).
  float* slopes = nullptr;
  check(cudaMalloc(&slopes, 32 * sizeof(float)), "cudaMalloc");
  cudaStream_t stream;
  check(cudaStreamCreate(&stream), "cudaStreamCreate");
  cudaEvent_t start, stop;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);

  std::printf("%4s %6s %6s %4s %4s %4s %10s %10s  %s\n", "D", "causal", "N", "B", "Hq", "Hkv", "ms", "TFLOP/s",
              "kernel");
  for (const Run& job : runs) {
    const Shape& sh = job.shape;
    // With --backward the mode picks the backward kernel the same way.
    flashsigmoid::cuda::KernelChoice& choice = flashsigmoid::cuda::kernel_choice();
    choice = {};
    if (job.mode == "portable") {
      (backward ? choice.backward : choice.forward) = flashsigmoid::cuda::KernelFamily::portable;
    }
    if (job.mode == "per-tile") choice.hopper_schedule.persistent = false;
    if (job.mode == "no-l2-group") choice.hopper_schedule.l2_grouping = false;
    const std::int64_t B = kTokens / sh.N;
    const flashsigmoid::Device device{flashsigmoid::DeviceType::cuda, dev};
    auto view = [&](void* data, int H) {
      return varlen ? flashsigmoid::TensorView::contiguous(data, dtype, {B * sh.N, H, sh.D}, device)
                    : flashsigmoid::TensorView::contiguous(data, dtype, {B, sh.N, H, sh.D}, device);
    };
    flashsigmoid::Options opt;
    if (varlen) {
      std::vector<std::int32_t> cu(B + 1);
      for (std::int64_t b = 0; b <= B; ++b) cu[b] = std::int32_t(b * sh.N);
      check(cudaMemcpy(cu_seqlens, cu.data(), cu.size() * sizeof(std::int32_t), cudaMemcpyHostToDevice), "cudaMemcpy");
      opt.cu_seqlens_q = opt.cu_seqlens_k =
          flashsigmoid::TensorView::contiguous(cu_seqlens, flashsigmoid::DType::int32, {B + 1}, device);
      opt.max_seqlen_q = opt.max_seqlen_k = sh.N;
    }
    if (alibi) {
      std::vector<float> s(sh.Hq);
      for (int h = 0; h < sh.Hq; ++h) s[h] = std::pow(2.0f, -8.0f * float(h + 1) / float(sh.Hq));
      check(cudaMemcpy(slopes, s.data(), s.size() * sizeof(float), cudaMemcpyHostToDevice), "cudaMemcpy");
      opt.alibi_slopes = flashsigmoid::TensorView::contiguous(slopes, flashsigmoid::DType::float32, {sh.Hq}, device);
    }
    opt.causal = sh.causal;
    opt.stream = stream;
    opt.deterministic = deterministic;
    auto run = [&](int set) {
      if (backward) {
        const flashsigmoid::Gradients g{view(dq, sh.Hq), view(dk, sh.Hkv), view(dv, sh.Hkv), {}};
        flashsigmoid::backward(view(q[set], sh.Hq), view(k[set], sh.Hkv), view(v[set], sh.Hkv), view(dout, sh.Hq), g,
                               opt);
      } else {
        flashsigmoid::forward(view(q[set], sh.Hq), view(k[set], sh.Hkv), view(v[set], sh.Hkv), view(o, sh.Hq), opt);
      }
    };
    try {
      for (int w = 0; w < 5; ++w) run(w % kSets);
    } catch (const flashsigmoid::Error& e) {
      std::printf("%4d %6d %6d: skipped (%s)\n", sh.D, int(sh.causal), sh.N, e.what());
      continue;
    }
    std::string kernel = backward ? flashsigmoid::cuda::last_backward_kernel() : flashsigmoid::cuda::last_forward_kernel();
    if (kernel == "hopper" && job.mode != "auto") kernel += " " + job.mode;
    std::vector<float> ms(reps);
    for (int r = 0; r < reps; ++r) {
      cudaEventRecord(start, stream);
      run(r % kSets);
      cudaEventRecord(stop, stream);
      check(cudaEventSynchronize(stop), pass);
      cudaEventElapsedTime(&ms[r], start, stop);
    }
    std::sort(ms.begin(), ms.end());
    const double t = ms[reps / 2] * 1e-3;
    const double flops = 4.0 * double(B) * sh.Hq * double(sh.N) * sh.N * sh.D * (sh.causal ? 0.5 : 1.0) *
                         (backward ? 2.5 : 1.0);
    std::printf("%4d %6d %6d %4lld %4d %4d %10.3f %10.1f  %s\n", sh.D, int(sh.causal), sh.N, (long long)B, sh.Hq,
                sh.Hkv, ms[reps / 2], flops / t * 1e-12, kernel.c_str());
  }
  check(cudaGetLastError(), "run");
  return 0;
}
