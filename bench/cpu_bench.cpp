// CPU benchmark (Google Benchmark): flashsigmoid::forward/backward (the tiled CPU backend, no
// N x N buffer) against reference::plain_forward/plain_backward (the plain materialising fp32
// implementation: S and P as [N, N] fp32 matrices), B=1, H=2, N=4096, D=128, fp32 and bf16.
//
// Counters: TFLOP/s (forward 4*B*H*N*N*D, backward 2.5x) and peak_heap_MiB, the peak of heap
// bytes live during the call above those live before it (tracked through operator new).
// Environment overrides for quick runs: FLASHSIGMOID_BENCH_N, FLASHSIGMOID_BENCH_D,
// FLASHSIGMOID_BENCH_H, FLASHSIGMOID_BENCH_ITERS.
#include <benchmark/benchmark.h>
#include <malloc.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <new>
#include <string>

#include "flashsigmoid/flashsigmoid.hpp"
#include "reference/reference.hpp"
#include "reference/testing.hpp"

// ---- heap tracking: every operator new / delete (glibc malloc_usable_size for the sizes) ----
namespace {
std::atomic<std::int64_t> g_live{0}, g_peak{0};

void* tracked_alloc(std::size_t n, std::size_t align) {
  void* p = align > alignof(std::max_align_t) ? std::aligned_alloc(align, (n + align - 1) / align * align)
                                              : std::malloc(n ? n : 1);
  if (p == nullptr) throw std::bad_alloc();
  const std::int64_t live = g_live.fetch_add(static_cast<std::int64_t>(malloc_usable_size(p))) +
                            static_cast<std::int64_t>(malloc_usable_size(p));
  std::int64_t peak = g_peak.load();
  while (live > peak && !g_peak.compare_exchange_weak(peak, live)) {
  }
  return p;
}
void tracked_free(void* p) {
  if (p == nullptr) return;
  g_live.fetch_sub(static_cast<std::int64_t>(malloc_usable_size(p)));
  std::free(p);
}
}  // namespace

void* operator new(std::size_t n) { return tracked_alloc(n, 0); }
void* operator new(std::size_t n, std::align_val_t a) { return tracked_alloc(n, static_cast<std::size_t>(a)); }
void operator delete(void* p) noexcept { tracked_free(p); }
void operator delete(void* p, std::size_t) noexcept { tracked_free(p); }
void operator delete(void* p, std::align_val_t) noexcept { tracked_free(p); }
void operator delete(void* p, std::size_t, std::align_val_t) noexcept { tracked_free(p); }

namespace {

using namespace flashsigmoid;

std::int64_t env_int(const char* name, std::int64_t fallback) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? std::atoll(v) : fallback;
}

const std::int64_t kBatch = 1;
const std::int64_t kHeads = env_int("FLASHSIGMOID_BENCH_H", 2);
const std::int64_t kSeqlen = env_int("FLASHSIGMOID_BENCH_N", 4096);
const std::int64_t kHeadDim = env_int("FLASHSIGMOID_BENCH_D", 128);
const std::int64_t kIters = env_int("FLASHSIGMOID_BENCH_ITERS", 3);

struct Inputs {
  testing::HostTensor q, k, v, dout, out, dq, dk, dv;
  explicit Inputs(DType dt) {
    const std::vector<std::int64_t> shape = {kBatch, kSeqlen, kHeads, kHeadDim};
    q = testing::HostTensor(dt, shape);
    k = testing::HostTensor(dt, shape);
    v = testing::HostTensor(dt, shape);
    dout = testing::HostTensor(dt, shape);
    out = testing::HostTensor(dt, shape);
    dq = testing::HostTensor(dt, shape);
    dk = testing::HostTensor(dt, shape);
    dv = testing::HostTensor(dt, shape);
    q.fill_normal(1);
    k.fill_normal(2);
    v.fill_normal(3);
    dout.fill_normal(4);
  }
};

enum class Impl { tiled, plain };
enum class Pass { forward, backward };

void run_bench(benchmark::State& state, Impl impl, Pass pass, DType dt) {
  Inputs in(dt);
  const Options opts;  // defaults: scale 1/sqrt(D), b = -log(N), no mask, all threads
  const double fwd_flops = 4.0 * kBatch * kHeads * double(kSeqlen) * double(kSeqlen) * kHeadDim;
  const double flops = pass == Pass::forward ? fwd_flops : 2.5 * fwd_flops;
  std::int64_t peak_extra = 0;
  for (auto _ : state) {
    const std::int64_t base = g_live.load();
    g_peak.store(base);
    if (impl == Impl::tiled && pass == Pass::forward) {
      flashsigmoid::forward(in.q, in.k, in.v, in.out, opts);
    } else if (impl == Impl::tiled) {
      flashsigmoid::backward(in.q, in.k, in.v, in.dout, Gradients{in.dq, in.dk, in.dv, {}}, opts);
    } else if (pass == Pass::forward) {
      benchmark::DoNotOptimize(reference::plain_forward(in.q, in.k, in.v, opts));
    } else {
      benchmark::DoNotOptimize(reference::plain_backward(in.q, in.k, in.v, in.dout, opts));
    }
    peak_extra = std::max(peak_extra, g_peak.load() - base);
  }
  state.counters["TFLOP/s"] = benchmark::Counter(flops / 1e12, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["peak_heap_MiB"] = double(peak_extra) / (1024.0 * 1024.0);
  state.SetLabel(std::string(impl == Impl::tiled ? "tiled CPU backend" : "plain materialising fp32") +
                 ", B=" + std::to_string(kBatch) + " H=" + std::to_string(kHeads) + " N=" +
                 std::to_string(kSeqlen) + " D=" + std::to_string(kHeadDim));
}

void register_all() {
  for (Pass pass : {Pass::forward, Pass::backward}) {
    for (DType dt : {DType::float32, DType::bfloat16}) {
      for (Impl impl : {Impl::tiled, Impl::plain}) {
        const std::string name = std::string(pass == Pass::forward ? "forward" : "backward") + "/" +
                                 (dt == DType::float32 ? "f32" : "bf16") + "/" +
                                 (impl == Impl::tiled ? "tiled" : "plain");
        benchmark::RegisterBenchmark(name.c_str(), [=](benchmark::State& s) { run_bench(s, impl, pass, dt); })
            ->Unit(benchmark::kMillisecond)
            ->UseRealTime()
            ->Iterations(kIters);
      }
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  register_all();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::AddCustomContext("shape", "B=" + std::to_string(kBatch) + " H=" + std::to_string(kHeads) +
                                           " N=" + std::to_string(kSeqlen) + " D=" + std::to_string(kHeadDim));
  benchmark::AddCustomContext("nxn_fp32_buffer_MiB",
                              std::to_string(double(kSeqlen) * double(kSeqlen) * 4.0 / (1024.0 * 1024.0)));
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
