// GPU tests of the CUDA KV-cache path (append + attention, src/cuda/decode) through the public
// forward_with_kvcache: against the float64 reference over each sequence's gathered keys (SPEC.md's
// bounds, 2x the plain implementation), dense / cache_batch_idx / paged caches (page sizes 1, 16,
// 64, 256) whose unused rows and pages hold NaN, the cache byte-exact after the append, split
// counts, repeated runs bitwise equal, NaN propagation, sequences whose device-side values are out
// of range (NaN rows, nothing written), CUDA-graph capture. Every test skips without a CUDA device.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "cuda/kernel_choice.hpp"
#include "device_kv.hpp"  // DeviceKV, expect_matches, misc_case, paged_gqa_case

namespace {

using flashsigmoid::BiasMode;
using flashsigmoid::DType;
using flashsigmoid::KVCache;
using flashsigmoid::Options;
using flashsigmoid::testing::HostTensor;
using flashsigmoid::testing::Layout;
using fs_gpu::DeviceTensor;
using fs_kv::Alibi;
using fs_kv::KVCase;
using fs_kv::KVProblem;
using fs_gpu_kv::decode_head_dims;
using fs_gpu_kv::DeviceKV;
using fs_gpu_kv::expect_matches;
using fs_gpu_kv::misc_case;
using fs_gpu_kv::paged_gqa_case;
using fs_gpu_kv::rows_of;

void check_kvcache(const KVCase& c) {
  if (c.D == 0) GTEST_SKIP() << "the KV-cache kernels take head dims 64, 128, 256; none is built";
  const std::uint64_t seed = fs_kv::test_seed();
  SCOPED_TRACE(fs_kv::describe(c) + ", seed " + std::to_string(seed));
  const KVProblem p = fs_kv::make_kv_problem(c, seed);
  const std::vector<double> ref = p.reference();
  const std::vector<double> plain = p.reference(true);
  DeviceKV d(p);
  d.run(c.num_splits);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess) << cudaGetErrorString(cudaGetLastError());
  expect_matches(p, d, ref, plain, "num_splits " + std::to_string(c.num_splits));
}

std::vector<KVCase> kvcache_cases() {
  std::vector<KVCase> base;
  auto add = [&](std::string name, auto&& edit) {
    KVCase c;
    c.name = std::move(name);
    edit(c);
    base.push_back(c);
  };
  add("dense_decode", [](KVCase& c) { c.Hq = c.Hkv = 4; c.cached = {37, 300, 1}; c.append = false; });
  add("dense_append", [](KVCase& c) { c.Hq = c.Hkv = 4; c.cached = {37, 300, 0}; });
  add("batch_idx", [](KVCase& c) { c.cached = {100, 257}; c.batch_idx = true; });
  add("paged_ps1", [](KVCase& c) { c.Hq = 8; c.Hkv = 2; c.page_size = 1; c.cached = {0, 70, 130}; });
  for (int ps : {16, 64, 256}) {
    add("paged_ps" + std::to_string(ps), [ps](KVCase& c) {
      c.Hq = 8; c.Hkv = 2; c.page_size = ps; c.cached = {5, 300, 700};
    });
  }
  add("gqa_32_8", [](KVCase& c) { c.Hq = 32; c.Hkv = 8; c.page_size = 16; c.cached = {1000, 3}; });
  add("gqa_8_1_nq8_causal", [](KVCase& c) {  // 64 rows per CTA: the warps split the rows
    c.Hq = 8; c.Hkv = 1; c.Nq = 8; c.causal = true; c.page_size = 64; c.cached = {200, 0, 65};
  });
  add("gqa_32_8_nq8_paged", [](KVCase& c) {  // 32 rows per CTA: two pairs of warps, one per key half
    c.Hq = 32; c.Hkv = 8; c.Nq = 8; c.causal = true; c.page_size = 16; c.cached = {700, 2, 129};
  });
  add("rows_24_window", [](KVCase& c) {  // 24 rows: a partly empty 32-row tile
    c.Hq = 6; c.Hkv = 2; c.Nq = 8; c.window_left = 40; c.page_size = 64; c.cached = {300, 7};
  });
  add("mqa", [](KVCase& c) { c.Hq = 4; c.Hkv = 1; c.cached = {500}; c.append = false; });
  add("causal_nq8", [](KVCase& c) { c.Hq = c.Hkv = 2; c.Nq = 8; c.causal = true; c.cached = {100, 3}; });
  add("causal_nq8_cached_only", [](KVCase& c) {  // sequence 1: 3 keys for 8 queries, rows with no key
    c.Hq = c.Hkv = 2; c.Nq = 8; c.causal = true; c.cached = {100, 3}; c.append = false;
  });
  add("odd_rows_causal", [](KVCase& c) { c.Hq = 6; c.Hkv = 3; c.Nq = 3; c.causal = true; c.cached = {50, 0}; });
  add("window_causal", [](KVCase& c) {
    c.Nq = 8; c.causal = true; c.window_left = 32; c.page_size = 16; c.cached = {600, 10};
  });
  add("window_right", [](KVCase& c) {
    c.Nq = 4; c.window_left = 16; c.window_right = 2; c.cached = {300}; c.append = false;
  });
  add("alibi_per_head_causal", [](KVCase& c) { c.Nq = 8; c.causal = true; c.alibi = Alibi::per_head; c.cached = {150, 40}; });
  add("alibi_per_batch", [](KVCase& c) { c.alibi = Alibi::per_batch; c.page_size = 16; c.cached = {300, 1200}; });
  add("bias_per_head", [](KVCase& c) { c.Hq = 8; c.Hkv = 2; c.bias_mode = BiasMode::per_head; c.cached = {400, 50}; });
  add("many_rows_causal", [](KVCase& c) {  // 128 rows: two row blocks per (sequence, kv head)
    c.Hq = 16; c.Hkv = 1; c.Nq = 8; c.causal = true; c.cached = {90};
  });
  add("long_auto_splits", [](KVCase& c) { c.Hq = 8; c.Hkv = 2; c.page_size = 256; c.cached = {5000}; });
  add("splits_3", [](KVCase& c) { c.num_splits = 3; c.cached = {700, 64}; c.page_size = 16; });
  add("heads_major", [](KVCase& c) { c.layout = Layout::heads_major; c.cached = {200, 33}; c.append = false; });

  std::vector<KVCase> cases;
  for (int D : decode_head_dims()) {
    for (DType t : {DType::bfloat16, DType::float16}) {
      for (KVCase c : base) {
        c.D = D;
        c.dtype = t;
        c.name += std::string(t == DType::bfloat16 ? "_bf16" : "_fp16") + "_d" + std::to_string(D);
        cases.push_back(c);
      }
    }
  }
  if (cases.empty()) {
    KVCase c;
    c.name = "no_head_dim_built";
    c.D = 0;
    cases.push_back(c);
  }
  return cases;
}

class GpuKVCache : public ::testing::TestWithParam<KVCase> {};

TEST_P(GpuKVCache, MatchesReference) {
  FS_SKIP_WITHOUT_GPU();
  check_kvcache(GetParam());
}

INSTANTIATE_TEST_SUITE_P(Cases, GpuKVCache, ::testing::ValuesIn(kvcache_cases()),
                         [](const ::testing::TestParamInfo<KVCase>& info) { return info.param.name; });

// Every split count matches the reference; a split count run twice gives the same bits.
TEST(GpuKVCacheMisc, SplitCountsAndRepeatability) {
  FS_SKIP_WITHOUT_GPU();
  KVCase c = paged_gqa_case("splits");
  FS_SKIP_WITHOUT_DECODE_DIM(c);
  c.cached = {1500, 77};
  const std::uint64_t seed = fs_kv::test_seed();
  SCOPED_TRACE(fs_kv::describe(c) + ", seed " + std::to_string(seed));
  const KVProblem p = fs_kv::make_kv_problem(c, seed);
  const std::vector<double> ref = p.reference();
  const std::vector<double> plain = p.reference(true);
  // The sum has 32 lanes, each adding every 32nd split, 4 loads at a time: up to 32 one split per
  // lane; 40 and 100 partial rounds; 250 a second round for some lanes; 256 (the most accepted) two
  // whole rounds. From 40 on there are more splits than key blocks (empty splits add zeros).
  for (int splits : {1, 2, 3, 5, 8, 13, 31, 32, 40, 100, 250, 256}) {
    DeviceKV d(p);
    d.run(splits);
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    expect_matches(p, d, ref, plain, "num_splits " + std::to_string(splits));
    const std::vector<unsigned char> first = d.out.download();
    d.run(splits);  // appends the same keys at the same positions again: same inputs
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    EXPECT_TRUE(d.out.download() == first) << "num_splits " << splits << ": a second run gave other bits";
  }
}

// Sequences whose device-side values are out of range: NaN rows, their cache untouched; the other
// sequences right. A bad page id that the window never reaches still counts (page 0 below).
void check_bad_sequences(int num_splits) {
  KVCase c = misc_case("bad_sequences");
  FS_SKIP_WITHOUT_DECODE_DIM(c);
  c.Hq = 4;
  c.Hkv = 2;
  c.Nq = 2;
  c.causal = true;
  c.window_left = 40;
  c.page_size = 16;
  c.cached = {100, 200, 50, 30};
  c.num_splits = num_splits;
  const std::uint64_t seed = fs_kv::test_seed();
  SCOPED_TRACE(fs_kv::describe(c) + ", seed " + std::to_string(seed));
  KVProblem p = fs_kv::make_kv_problem(c, seed);
  const std::vector<double> ref = p.reference();
  const std::int64_t max_pages = p.block_table.view().shape[1];
  const std::int64_t num_pages = p.k_cache.view().shape[0];
  p.block_table.set(1 * max_pages + 0, static_cast<double>(num_pages));   // sequence 1: page id out of range
  p.seqlens.set(2, static_cast<double>(max_pages * c.page_size));         // sequence 2: no room to append
  p.seqlens.set(3, -1.0);                                                  // sequence 3: negative length
  // The bad sequences' appends must not happen: their slots keep the original bytes.
  for (std::int64_t b : {1, 2, 3}) {
    for (std::int64_t i = 0; i < c.Nq; ++i)
      for (std::int64_t h = 0; h < c.Hkv; ++h)
        for (std::int64_t dd = 0; dd < c.D; ++dd) {
          const std::int64_t n = p.cache_index(b, c.cached[b] + i, h, dd);
          p.k_expected.set(n, p.k_cache.get(n));
          p.v_expected.set(n, p.v_cache.get(n));
        }
  }
  DeviceKV d(p);
  d.run(num_splits);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess) << cudaGetErrorString(cudaGetLastError());
  const std::vector<double> out = d.output();
  EXPECT_LE(flashsigmoid::testing::rel_l2(rows_of(ref, c, {0}), rows_of(out, c, {0})), fs_gpu::tolerance(c.dtype));
  for (std::int64_t b : {1, 2, 3}) {
    const std::vector<double> r = rows_of(out, c, {b});
    EXPECT_TRUE(std::all_of(r.begin(), r.end(), [](double x) { return std::isnan(x); }))
        << "sequence " << b << ": every output element must be NaN";
  }
  EXPECT_TRUE(d.k_cache.download() == p.k_expected.bytes()) << "k_cache: wrong append or a bad sequence written";
  EXPECT_TRUE(d.v_cache.download() == p.v_expected.bytes()) << "v_cache: wrong append or a bad sequence written";
}

TEST(GpuKVCacheMisc, BadSequencesOneSplit) {
  FS_SKIP_WITHOUT_GPU();
  check_bad_sequences(1);
}
TEST(GpuKVCacheMisc, BadSequencesThreeSplits) {
  FS_SKIP_WITHOUT_GPU();
  check_bad_sequences(3);
}

// A dense cache row index out of range: that sequence gives NaN and is not appended.
TEST(GpuKVCacheMisc, BadCacheBatchIdx) {
  FS_SKIP_WITHOUT_GPU();
  KVCase c = misc_case("bad_batch_idx");
  FS_SKIP_WITHOUT_DECODE_DIM(c);
  c.batch_idx = true;
  c.cached = {60, 90};
  const std::uint64_t seed = fs_kv::test_seed();
  SCOPED_TRACE(fs_kv::describe(c) + ", seed " + std::to_string(seed));
  KVProblem p = fs_kv::make_kv_problem(c, seed);
  const std::vector<double> ref = p.reference();
  for (std::int64_t i = 0; i < c.Nq; ++i)
    for (std::int64_t h = 0; h < c.Hkv; ++h)
      for (std::int64_t dd = 0; dd < c.D; ++dd) {
        const std::int64_t n = p.cache_index(1, c.cached[1] + i, h, dd);
        p.k_expected.set(n, p.k_cache.get(n));
        p.v_expected.set(n, p.v_cache.get(n));
      }
  p.batch_idx.set(1, static_cast<double>(p.k_cache.view().shape[0]));
  DeviceKV d(p);
  d.run(0);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  const std::vector<double> out = d.output();
  EXPECT_LE(flashsigmoid::testing::rel_l2(rows_of(ref, c, {0}), rows_of(out, c, {0})), fs_gpu::tolerance(c.dtype));
  const std::vector<double> r = rows_of(out, c, {1});
  EXPECT_TRUE(std::all_of(r.begin(), r.end(), [](double x) { return std::isnan(x); }));
  EXPECT_TRUE(d.k_cache.download() == p.k_expected.bytes());
  EXPECT_TRUE(d.v_cache.download() == p.v_expected.bytes());
}

// NaN in: a NaN query element gives a NaN row of that head only; a NaN cached key gives NaN rows
// for the query heads of its kv head in its sequence only; everything else stays right.
TEST(GpuKVCacheMisc, NaNPropagation) {
  FS_SKIP_WITHOUT_GPU();
  KVCase c = misc_case("nan");
  FS_SKIP_WITHOUT_DECODE_DIM(c);
  c.Hq = 4;
  c.Hkv = 2;
  c.cached = {50, 60, 70};
  c.num_splits = 2;
  const std::uint64_t seed = fs_kv::test_seed();
  SCOPED_TRACE(fs_kv::describe(c) + ", seed " + std::to_string(seed));
  KVProblem p = fs_kv::make_kv_problem(c, seed);
  const double nan = std::numeric_limits<double>::quiet_NaN();
  p.q.set(((0 * c.Nq + 0) * c.Hq + 1) * c.D + 3, nan);  // sequence 0, head 1
  const std::int64_t k_at = p.cache_index(1, 10, 0, 5);  // sequence 1, key 10, kv head 0: heads 0, 1
  p.k_cache.set(k_at, nan);
  p.k_expected.set(k_at, nan);
  const std::vector<double> ref = p.reference();
  DeviceKV d(p);
  d.run(c.num_splits);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  const std::vector<double> out = d.output();
  std::vector<double> ref_ok, out_ok;
  for (std::int64_t row = 0; row < c.B() * c.Nq * c.Hq; ++row) {
    const std::int64_t b = row / (c.Nq * c.Hq), h = row % c.Hq;
    const bool expect_nan = (b == 0 && h == 1) || (b == 1 && h < 2);
    for (std::int64_t dd = 0; dd < c.D; ++dd) {
      const std::size_t n = static_cast<std::size_t>(row * c.D + dd);
      if (expect_nan) {
        EXPECT_TRUE(std::isnan(out[n])) << "row " << row << " element " << dd << " should be NaN";
      } else {
        ref_ok.push_back(ref[n]);
        out_ok.push_back(out[n]);
      }
    }
  }
  EXPECT_LE(flashsigmoid::testing::rel_l2(ref_ok, out_ok), fs_gpu::tolerance(c.dtype));
}

// The same case with and without the attention launched as a programmatic dependent (sm_90), one
// split and four: the same bits. Skips (after the comparison) where the dependent launch does not
// exist (no sm_90 device or code), saying so.
TEST(GpuKVCacheMisc, DependentLaunchChangesNoBit) {
  FS_SKIP_WITHOUT_GPU();
  KVCase c = paged_gqa_case("dependent_launch");
  FS_SKIP_WITHOUT_DECODE_DIM(c);
  c.cached = {700, 64};
  const std::uint64_t seed = fs_kv::test_seed();
  SCOPED_TRACE(fs_kv::describe(c) + ", seed " + std::to_string(seed));
  const KVProblem p = fs_kv::make_kv_problem(c, seed);
  const std::vector<double> ref = p.reference();
  const std::vector<double> plain = p.reference(true);
  bool ran_dependent = true;
  for (int splits : {1, 4}) {
    std::vector<unsigned char> out[2];
    for (bool dependent : {false, true}) {
      flashsigmoid::cuda::KernelChoice choice = flashsigmoid::cuda::kernel_choice();
      choice.decode.dependent_launch = dependent;
      flashsigmoid::cuda::ScopedKernelChoice scope(choice);
      DeviceKV d(p);
      d.run(splits);
      ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess) << cudaGetErrorString(cudaGetLastError());
      expect_matches(p, d, ref, plain, "splits " + std::to_string(splits) + ", dependent " + std::to_string(dependent));
      out[dependent] = d.out.download();
      const bool ran = flashsigmoid::cuda::last_kvcache_launch().dependent;
      if (!dependent) EXPECT_FALSE(ran) << "splits " << splits << ": a dependent launch that was turned off";
      if (dependent) ran_dependent = ran_dependent && ran;
    }
    EXPECT_TRUE(out[0] == out[1]) << "splits " << splits << ": the dependent launch changed the output";
  }
  if (!ran_dependent) GTEST_SKIP() << "no dependent launch on this device or build (sm_90 code and device)";
}

// Append + attention with split partials captured in a CUDA graph (no host sync, no allocation
// that depends on data) and replayed.
TEST(GpuKVCacheMisc, CudaGraphCaptureReplay) {
  FS_SKIP_WITHOUT_GPU();
  KVCase c = paged_gqa_case("graph");
  FS_SKIP_WITHOUT_DECODE_DIM(c);
  c.cached = {300, 41};
  c.num_splits = 4;
  const std::uint64_t seed = fs_kv::test_seed();
  SCOPED_TRACE(fs_kv::describe(c) + ", seed " + std::to_string(seed));
  const KVProblem p = fs_kv::make_kv_problem(c, seed);
  const std::vector<double> ref = p.reference();
  const std::vector<double> plain = p.reference(true);
  DeviceKV d(p);
  cudaStream_t stream;
  ASSERT_EQ(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), cudaSuccess);
  cudaGraph_t graph;
  ASSERT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal), cudaSuccess);
  d.run(c.num_splits, stream);
  ASSERT_EQ(cudaStreamEndCapture(stream, &graph), cudaSuccess);
  cudaGraphExec_t exec;
  ASSERT_EQ(cudaGraphInstantiate(&exec, graph, 0), cudaSuccess);
  ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
  EXPECT_TRUE(d.k_cache.download() == p.k_cache.bytes()) << "the cache was written during capture";
  for (int replay = 0; replay < 2; ++replay) {
    ASSERT_EQ(cudaGraphLaunch(exec, stream), cudaSuccess);
    ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
    expect_matches(p, d, ref, plain, "replay " + std::to_string(replay));
  }
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  cudaStreamDestroy(stream);
}

TEST(GpuKVCacheErrors, HeadDimWithoutKernel) {
  FS_SKIP_WITHOUT_GPU();
  int missing = 0;
  for (int D : flashsigmoid::kSupportedHeadDims) {
    const auto dims = decode_head_dims();
    if (std::find(dims.begin(), dims.end(), D) == dims.end()) missing = D;
  }
  if (missing == 0) GTEST_SKIP() << "every supported head dim has a KV-cache kernel in this build";
  KVCase c = misc_case("no_kernel");
  c.D = missing;
  c.cached = {10};
  const KVProblem p = fs_kv::make_kv_problem(c, 1);
  DeviceKV d(p);
  fs_gpu::expect_error([&] { d.run(0); }, "no kernel for head_dim " + std::to_string(missing));
}

// More output rows than the attention's 32-bit element offsets cover ((2^31 - 1) / (D / 4) rows of
// D / 4 float4s): an Error before anything is launched. The tensors claim that size over a small
// allocation (nothing touches them when the guard holds): q [2^12 / D, 2^18, 8, D] (16 GiB), one kv
// head; out starts where q's claimed bytes end, as the overlap check wants.
TEST(GpuKVCacheErrors, TooManyOutputRows) {
  FS_SKIP_WITHOUT_GPU();
  const KVCase c = misc_case("too_many_rows");
  FS_SKIP_WITHOUT_DECODE_DIM(c);
  using flashsigmoid::TensorView;
  const std::int64_t D = c.D, B = 4096 / D, Nq = std::int64_t(1) << 18, Hq = 8, Nmax = 64;
  void* mem = nullptr;
  FS_CUDA_OK(cudaMalloc(&mem, 1 << 20));
  FS_CUDA_OK(cudaMemset(mem, 0, 1 << 20));
  const flashsigmoid::Device gpu{flashsigmoid::DeviceType::cuda, 0};
  flashsigmoid::KVCache cache;
  cache.k_cache = TensorView::contiguous(mem, DType::bfloat16, {B, Nmax, 1, D}, gpu);
  cache.v_cache = cache.k_cache;
  cache.cache_seqlens = TensorView::contiguous(mem, DType::int32, {B}, gpu);
  const TensorView q = TensorView::contiguous(mem, DType::bfloat16, {B, Nq, Hq, D}, gpu);
  flashsigmoid::Options o;
  o.bias_mode = flashsigmoid::BiasMode::scalar;
  o.bias_value = -4.0f;
  TensorView out = q;
  out.data = static_cast<unsigned char*>(mem) + q.numel() * 2;
  // Row blocks (2^21 rows / 64) and (sequence, kv head) pairs stay within their limits: rows alone trip.
  fs_gpu::expect_error([&] { flashsigmoid::forward_with_kvcache(q, cache, out, o, 1); },
                       std::to_string(B * Nq * Hq) + " output rows");
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  cudaFree(mem);
}

// A page stride the attention kernel cannot address (2^31 elements, over one page so nothing past the
// allocation is named): an Error before the append is enqueued, and both caches keep every byte.
TEST(GpuKVCacheErrors, PageStrideTooLargeWritesNothing) {
  FS_SKIP_WITHOUT_GPU();
  const KVCase c = misc_case("page_stride");
  FS_SKIP_WITHOUT_DECODE_DIM(c);
  using flashsigmoid::TensorView;
  const std::int64_t D = c.D, ps = 16, H = 2, B = 1;
  const flashsigmoid::Device gpu{flashsigmoid::DeviceType::cuda, 0};
  const std::size_t cache_bytes = std::size_t(ps * H * D) * 2;
  std::vector<unsigned char> pattern(cache_bytes);
  for (std::size_t i = 0; i < pattern.size(); ++i) pattern[i] = static_cast<unsigned char>(i * 7 + 3);
  void *kc = nullptr, *vc = nullptr, *small = nullptr;
  FS_CUDA_OK(cudaMalloc(&kc, cache_bytes));
  FS_CUDA_OK(cudaMalloc(&vc, cache_bytes));
  FS_CUDA_OK(cudaMalloc(&small, 1 << 16));
  FS_CUDA_OK(cudaMemcpy(kc, pattern.data(), cache_bytes, cudaMemcpyHostToDevice));
  FS_CUDA_OK(cudaMemcpy(vc, pattern.data(), cache_bytes, cudaMemcpyHostToDevice));
  FS_CUDA_OK(cudaMemset(small, 0, 1 << 16));  // seqlens 0, page ids 0, new keys 0
  auto* bytes = static_cast<unsigned char*>(small);
  flashsigmoid::KVCache cache;
  cache.k_cache = TensorView::contiguous(kc, DType::bfloat16, {1, ps, H, D}, gpu);
  cache.k_cache.stride[0] = std::int64_t(1) << 31;
  cache.v_cache = TensorView::contiguous(vc, DType::bfloat16, {1, ps, H, D}, gpu);
  cache.cache_seqlens = TensorView::contiguous(bytes, DType::int32, {B}, gpu);
  cache.block_table = TensorView::contiguous(bytes + 256, DType::int32, {B, 1}, gpu);
  cache.k_new = TensorView::contiguous(bytes + 512, DType::bfloat16, {B, 1, H, D}, gpu);
  cache.v_new = TensorView::contiguous(bytes + 4096, DType::bfloat16, {B, 1, H, D}, gpu);
  const TensorView q = TensorView::contiguous(bytes + 8192, DType::bfloat16, {B, 1, 2 * H, D}, gpu);
  const TensorView out = TensorView::contiguous(bytes + 16384, DType::bfloat16, {B, 1, 2 * H, D}, gpu);
  flashsigmoid::Options o;
  o.bias_mode = flashsigmoid::BiasMode::scalar;
  fs_gpu::expect_error([&] { flashsigmoid::forward_with_kvcache(q, cache, out, o, 0); },
                       "elements between pages");
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  for (void* mem : {kc, vc}) {
    std::vector<unsigned char> after(cache_bytes);
    FS_CUDA_OK(cudaMemcpy(after.data(), mem, cache_bytes, cudaMemcpyDeviceToHost));
    EXPECT_EQ(after, pattern) << (mem == kc ? "k_cache" : "v_cache") << " changed by a rejected call";
  }
  cudaFree(kc);
  cudaFree(vc);
  cudaFree(small);
}

}  // namespace
