// CUDA KV-cache (decode / append) benchmark of flashsigmoid::forward_with_kvcache on serving shapes:
// batch 1..128, cache 1k..128k keys per sequence, GQA 32:8 and 8:1, D 128, paged caches with
// page size 16 and 256 (pages shuffled, as a serving engine's allocator leaves them), Nq_new 1
// and 8, bf16 (--dtype fp16: fp16). Reports the achieved K/V read bandwidth, bytes(K/V read + q
// read + out written) / time, against the same run's device-to-device cudaMemcpy bandwidth (bytes
// read + written). CUDA events, median of many samples (each the mean of 10 back-to-back calls)
// after warm-up, rotating over enough cache copies that together exceed 3x the L2 so L2 is not what
// is timed; the same 10 calls again as one replayed CUDA graph (no host time between calls), and the
// host's time to enqueue one call. Every sequence holds the full cache length; --append also
// writes Nq_new new keys per sequence (append + attend). Each row names the split count that ran,
// how they were added and whether the attention was a dependent launch; --dependent-launch on|off forces the launch choice
// (src/cuda/decode/launch.hpp) for comparing both in one process.
//   usage: flashsigmoid_cuda_decode_bench [--reps N] [--quick] [--dtype bf16|fp16] [--append]
//                                         [--splits N] [--shape B:CACHE:HQ:HKV:NQ:PAGE]
//                                         [--dependent-launch on|off]
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "cuda/kernel_choice.hpp"  // launch choices and what a call ran (not public API)
#include "flashsigmoid/flashsigmoid.hpp"

namespace {

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) {
    std::fprintf(stderr, "%s: %s\n", what, cudaGetErrorString(e));
    std::exit(1);
  }
}

// Random 16-bit values of a finite, moderate float (bf16 or fp16 bit patterns), from a hash of the
// index: the sign, a small exponent range and random mantissa bits; never zero.
__global__ void fill_random(std::uint16_t* p, std::size_t n, std::uint32_t seed, bool fp16) {
  for (std::size_t i = blockIdx.x * std::size_t(blockDim.x) + threadIdx.x; i < n; i += std::size_t(gridDim.x) * blockDim.x) {
    std::uint32_t h = std::uint32_t(i) * 0x9E3779B1u ^ seed ^ std::uint32_t(i >> 32) * 0x85EBCA77u;
    h ^= h >> 15;
    h *= 0x2C1B3C6Du;
    h ^= h >> 12;
    const std::uint16_t sign = (h & 1u) << 15;
    // |x| in [0.25, 2): bf16 exponents 125..127, fp16 exponents 13..15.
    const std::uint16_t exp = std::uint16_t((fp16 ? 13 : 125) + (h >> 1) % 3);
    const std::uint16_t mant = std::uint16_t((h >> 8) & (fp16 ? 0x3FFu : 0x7Fu));
    p[i] = sign | std::uint16_t(exp << (fp16 ? 10 : 7)) | mant;
  }
}

struct Shape {
  int B, cache, Hq, Hkv, Nq, page;
};

}  // namespace

int main(int argc, char** argv) {
  int reps = 50;
  bool quick = false;
  bool append = false;
  int splits = 0;
  std::string dtype_arg = "bf16";
  std::string shape_arg;
  std::string dependent_arg;  // empty: the library's default
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--reps") && i + 1 < argc) reps = std::atoi(argv[++i]);
    else if (!std::strcmp(argv[i], "--dtype") && i + 1 < argc) dtype_arg = argv[++i];
    else if (!std::strcmp(argv[i], "--splits") && i + 1 < argc) splits = std::atoi(argv[++i]);
    else if (!std::strcmp(argv[i], "--shape") && i + 1 < argc) shape_arg = argv[++i];
    else if (!std::strcmp(argv[i], "--quick")) quick = true;
    else if (!std::strcmp(argv[i], "--append")) append = true;
    else if (!std::strcmp(argv[i], "--dependent-launch") && i + 1 < argc) dependent_arg = argv[++i];
    else {
      std::fprintf(stderr, "unknown argument %s; accepted: --reps N, --quick, --dtype bf16|fp16, --append, "
                   "--splits N, --shape B:CACHE:HQ:HKV:NQ:PAGE, --dependent-launch on|off\n", argv[i]);
      return 2;
    }
  }
  if (!dependent_arg.empty() && dependent_arg != "on" && dependent_arg != "off") {
    std::fprintf(stderr, "--dependent-launch takes on or off; got %s\n", dependent_arg.c_str());
    return 2;
  }
  if (!dependent_arg.empty()) flashsigmoid::cuda::kernel_choice().decode.dependent_launch = dependent_arg == "on";
  const bool dependent_launch = flashsigmoid::cuda::kernel_choice().decode.dependent_launch;
  if (dtype_arg != "bf16" && dtype_arg != "fp16") {
    std::fprintf(stderr, "--dtype takes bf16 or fp16; got %s\n", dtype_arg.c_str());
    return 2;
  }
  if (reps < 1 || splits < 0) {
    std::fprintf(stderr, "--reps takes N >= 1 and --splits N >= 0 (0 = the heuristic)\n");
    return 2;
  }
  const bool fp16 = dtype_arg == "fp16";
  const flashsigmoid::DType dtype = fp16 ? flashsigmoid::DType::float16 : flashsigmoid::DType::bfloat16;
  constexpr int D = 128;

  std::vector<Shape> shapes;
  if (!shape_arg.empty()) {
    Shape s{};
    if (std::sscanf(shape_arg.c_str(), "%d:%d:%d:%d:%d:%d", &s.B, &s.cache, &s.Hq, &s.Hkv, &s.Nq, &s.page) != 6 ||
        s.B < 1 || s.cache < 1 || s.Hq < 1 || s.Hkv < 1 || s.Hq % s.Hkv != 0 || s.Nq < 1 || s.page < 1) {
      std::fprintf(stderr, "--shape takes B:CACHE:HQ:HKV:NQ:PAGE (positive, HQ a multiple of HKV, e.g. "
                   "1:8192:32:8:1:16), got %s\n", shape_arg.c_str());
      return 2;
    }
    shapes.push_back(s);
  } else {
    // (B, cache) pairs up to 4.3 GB of K/V at GQA 32:8.
    const std::vector<std::pair<int, int>> sizes =
        quick ? std::vector<std::pair<int, int>>{{1, 8192}, {1, 131072}, {32, 8192}, {128, 1024}}
              : std::vector<std::pair<int, int>>{{1, 1024}, {1, 8192}, {1, 32768}, {1, 131072}, {8, 8192}, {8, 32768},
                                                 {32, 8192}, {32, 32768}, {128, 1024}, {128, 8192}};
    for (auto [hq, hkv] : {std::pair{32, 8}, std::pair{8, 1}}) {
      for (int nq : {1, 8}) {
        for (int page : {16, 256}) {
          if (quick && (nq == 8 || page == 256) && hq == 8) continue;
          for (auto [b, cache] : sizes) shapes.push_back({b, cache, hq, hkv, nq, page});
        }
      }
    }
  }

  int dev = 0;
  check(cudaSetDevice(dev), "cudaSetDevice");
  cudaDeviceProp prop{};
  check(cudaGetDeviceProperties(&prop, dev), "cudaGetDeviceProperties");
  cudaStream_t stream;
  check(cudaStreamCreate(&stream), "cudaStreamCreate");
  cudaEvent_t start, stop;
  check(cudaEventCreate(&start), "cudaEventCreate");
  check(cudaEventCreate(&stop), "cudaEventCreate");
  // Median over n samples of the mean time of `inner` back-to-back calls: a decode step takes a few
  // microseconds, about what the host needs to enqueue it, so single timed calls would time the host.
  // host_us: the median host time to enqueue one call (the floor of a stream-launched step).
  auto median_ms = [&](auto&& body, int n, int inner, double* host_us = nullptr) {
    std::vector<float> ms(n);
    std::vector<double> host(n);
    for (int r = 0; r < n; ++r) {
      check(cudaEventRecord(start, stream), "cudaEventRecord");
      const auto t0 = std::chrono::steady_clock::now();
      for (int i = 0; i < inner; ++i) body(r * inner + i);
      host[r] = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count() / inner;
      check(cudaEventRecord(stop, stream), "cudaEventRecord");
      check(cudaEventSynchronize(stop), "cudaEventSynchronize");
      cudaEventElapsedTime(&ms[r], start, stop);
      ms[r] /= float(inner);
    }
    std::sort(ms.begin(), ms.end());
    std::sort(host.begin(), host.end());
    if (host_us != nullptr) *host_us = host[n / 2];
    return double(ms[n / 2]);
  };
  // The same calls captured once in a CUDA graph (`inner` calls, one per cache set in turn) and
  // replayed: no host time between them, what a serving engine that replays graphs sees.
  auto graph_median_ms = [&](auto&& body, int n, int inner) {
    cudaGraph_t graph = nullptr;
    cudaGraphExec_t exec = nullptr;
    check(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal), "cudaStreamBeginCapture");
    for (int i = 0; i < inner; ++i) body(i);
    check(cudaStreamEndCapture(stream, &graph), "cudaStreamEndCapture");
    check(cudaGraphInstantiate(&exec, graph, 0), "cudaGraphInstantiate");
    for (int w = 0; w < 3; ++w) check(cudaGraphLaunch(exec, stream), "cudaGraphLaunch");
    const double ms = median_ms([&](int) { check(cudaGraphLaunch(exec, stream), "cudaGraphLaunch"); }, n, 1);
    cudaGraphExecDestroy(exec);
    cudaGraphDestroy(graph);
    return ms / inner;
  };
  // The split workspace comes from the device's default memory pool (cudaMallocAsync); keep what it
  // holds between calls, as a serving process would, instead of returning it at every synchronisation.
  {
    cudaMemPool_t pool;
    check(cudaDeviceGetDefaultMemPool(&pool, dev), "cudaDeviceGetDefaultMemPool");
    std::uint64_t keep = UINT64_MAX;
    check(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep), "cudaMemPoolSetAttribute");
  }

  // The same run's copy bandwidth: 1 GiB device to device, bytes read + written.
  double copy_gbs = 0.0;
  {
    const std::size_t bytes = std::size_t(1) << 30;
    void *a = nullptr, *b = nullptr;
    check(cudaMalloc(&a, bytes), "cudaMalloc");
    check(cudaMalloc(&b, bytes), "cudaMalloc");
    check(cudaMemsetAsync(a, 1, bytes, stream), "cudaMemset");
    for (int w = 0; w < 3; ++w) check(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice, stream), "cudaMemcpy");
    const double ms = median_ms([&](int) { cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice, stream); }, 20, 1);
    copy_gbs = 2.0 * double(bytes) / (ms * 1e-3) * 1e-9;
    cudaFree(a);
    cudaFree(b);
  }
  const std::string splits_str = splits == 0 ? "auto" : std::to_string(splits);
  std::printf("# flashsigmoid CUDA KV-cache %s, %s (%d SMs, %d MB L2), %s, D %d, median of %d reps, splits %s, "
              "dependent launch %s\n",
              append ? "append + attention" : "attention", prop.name, prop.multiProcessorCount,
              prop.l2CacheSize >> 20, dtype_arg.c_str(), D, reps, splits_str.c_str(),
              dependent_launch ? "on" : "off");
  std::printf("# device-to-device cudaMemcpy: %.0f GB/s (read + written)\n", copy_gbs);
  std::printf("%4s %7s %4s %4s %3s %5s %5s %10s %9s %7s %10s %7s %8s %6s %9s %4s\n", "B", "cache", "Hq", "Hkv",
              "Nq", "page", "sets", "us", "GB/s", "% copy", "graph us", "% copy", "host us", "splits", "sum", "dep");

  const flashsigmoid::Device device{flashsigmoid::DeviceType::cuda, dev};
  std::mt19937 gen(1234);
  for (const Shape& s : shapes) {
    const std::int64_t pages_per_seq = (std::int64_t(s.cache) + s.page - 1) / s.page;
    const std::int64_t num_pages = s.B * pages_per_seq;
    const std::size_t cache_elems = std::size_t(num_pages) * s.page * s.Hkv * D;
    const double kv_bytes = 2.0 * double(s.B) * s.cache * s.Hkv * D * 2;
    // Enough copies of the cache that L2 (and what it kept of the previous run) is not timed.
    const int sets = int(std::clamp<double>(std::ceil(3.0 * prop.l2CacheSize / kv_bytes), 1, 8));
    std::size_t free_bytes = 0, total_bytes = 0;
    check(cudaMemGetInfo(&free_bytes, &total_bytes), "cudaMemGetInfo");
    if (double(sets) * 2 * cache_elems * 2 > 0.8 * double(free_bytes)) {
      std::printf("%4d %7d %4d %4d %3d %5d: skipped (%.1f GB of caches; %.1f GB free)\n", s.B, s.cache, s.Hq, s.Hkv,
                  s.Nq, s.page, double(sets) * 2 * cache_elems * 2 * 1e-9, double(free_bytes) * 1e-9);
      continue;
    }
    std::vector<std::uint16_t*> k(sets), v(sets);
    std::vector<std::int32_t*> table(sets);
    std::uint16_t *q = nullptr, *out = nullptr, *k_new = nullptr, *v_new = nullptr;
    std::int32_t* seqlens = nullptr;
    const std::size_t q_elems = std::size_t(s.B) * s.Nq * s.Hq * D;
    const std::size_t new_elems = std::size_t(s.B) * s.Nq * s.Hkv * D;
    for (int i = 0; i < sets; ++i) {
      check(cudaMalloc(&k[i], cache_elems * 2), "cudaMalloc(k_cache)");
      check(cudaMalloc(&v[i], cache_elems * 2), "cudaMalloc(v_cache)");
      fill_random<<<1024, 256, 0, stream>>>(k[i], cache_elems, 2 * i + 1, fp16);
      fill_random<<<1024, 256, 0, stream>>>(v[i], cache_elems, 2 * i + 2, fp16);
      std::vector<std::int32_t> pages(num_pages);
      std::iota(pages.begin(), pages.end(), 0);
      std::shuffle(pages.begin(), pages.end(), gen);
      check(cudaMalloc(&table[i], pages.size() * 4), "cudaMalloc(block_table)");
      check(cudaMemcpy(table[i], pages.data(), pages.size() * 4, cudaMemcpyHostToDevice), "cudaMemcpy");
    }
    check(cudaMalloc(&q, q_elems * 2), "cudaMalloc(q)");
    check(cudaMalloc(&out, q_elems * 2), "cudaMalloc(out)");
    check(cudaMalloc(&k_new, new_elems * 2), "cudaMalloc(k_new)");
    check(cudaMalloc(&v_new, new_elems * 2), "cudaMalloc(v_new)");
    fill_random<<<1024, 256, 0, stream>>>(q, q_elems, 99, fp16);
    fill_random<<<1024, 256, 0, stream>>>(k_new, new_elems, 98, fp16);
    fill_random<<<1024, 256, 0, stream>>>(v_new, new_elems, 97, fp16);
    // Every sequence attends to the full cache length (with --append: cached + new = cache).
    const std::vector<std::int32_t> lens(s.B, append ? s.cache - s.Nq : s.cache);
    check(cudaMalloc(&seqlens, s.B * 4), "cudaMalloc(cache_seqlens)");
    check(cudaMemcpy(seqlens, lens.data(), s.B * 4, cudaMemcpyHostToDevice), "cudaMemcpy");
    check(cudaStreamSynchronize(stream), "fill");

    flashsigmoid::Options opt;
    opt.bias_mode = flashsigmoid::BiasMode::scalar;
    opt.bias_value = -10.0f;
    opt.causal = true;
    opt.stream = stream;
    auto run = [&](int r) {
      const int i = r % sets;
      flashsigmoid::KVCache c;
      c.k_cache = flashsigmoid::TensorView::contiguous(k[i], dtype, {num_pages, s.page, s.Hkv, D}, device);
      c.v_cache = flashsigmoid::TensorView::contiguous(v[i], dtype, {num_pages, s.page, s.Hkv, D}, device);
      c.cache_seqlens = flashsigmoid::TensorView::contiguous(seqlens, flashsigmoid::DType::int32, {s.B}, device);
      c.block_table =
          flashsigmoid::TensorView::contiguous(table[i], flashsigmoid::DType::int32, {s.B, pages_per_seq}, device);
      if (append) {
        c.k_new = flashsigmoid::TensorView::contiguous(k_new, dtype, {s.B, s.Nq, s.Hkv, D}, device);
        c.v_new = flashsigmoid::TensorView::contiguous(v_new, dtype, {s.B, s.Nq, s.Hkv, D}, device);
      }
      flashsigmoid::forward_with_kvcache(flashsigmoid::TensorView::contiguous(q, dtype, {s.B, s.Nq, s.Hq, D}, device), c,
                                         flashsigmoid::TensorView::contiguous(out, dtype, {s.B, s.Nq, s.Hq, D}, device),
                                         opt, splits);
    };
    bool ok = true;
    try {
      for (int w = 0; w < 5; ++w) run(w);
    } catch (const flashsigmoid::Error& e) {
      std::printf("%4d %7d %4d %4d %3d %5d: skipped (%s)\n", s.B, s.cache, s.Hq, s.Hkv, s.Nq, s.page, e.what());
      ok = false;
    }
    if (ok) {
      double host_us = 0.0;
      const double ms = median_ms(run, reps, 10, &host_us);
      const double graph_ms = graph_median_ms(run, reps, 10);
      const double bytes = kv_bytes + 2.0 * q_elems * 2 + (append ? 2.0 * 2 * new_elems * 2 : 0.0);
      const double gbs = bytes / (ms * 1e-3) * 1e-9;
      const double graph_gbs = bytes / (graph_ms * 1e-3) * 1e-9;
      const auto ran = flashsigmoid::cuda::last_kvcache_launch();
      std::printf("%4d %7d %4d %4d %3d %5d %5d %10.1f %9.0f %6.1f%% %10.1f %6.1f%% %8.1f %6d %9s %4s\n", s.B,
                  s.cache, s.Hq, s.Hkv, s.Nq, s.page, sets, ms * 1e3, gbs, 100.0 * gbs / copy_gbs, graph_ms * 1e3,
                  100.0 * graph_gbs / copy_gbs, host_us, ran.splits, ran.sum, ran.dependent ? "yes" : "no");
    }
    check(cudaDeviceSynchronize(), "benchmark run");
    for (int i = 0; i < sets; ++i) {
      cudaFree(k[i]);
      cudaFree(v[i]);
      cudaFree(table[i]);
    }
    for (void* ptr : {static_cast<void*>(q), static_cast<void*>(out), static_cast<void*>(k_new),
                      static_cast<void*>(v_new), static_cast<void*>(seqlens)}) {
      cudaFree(ptr);
    }
  }
  return 0;
}
