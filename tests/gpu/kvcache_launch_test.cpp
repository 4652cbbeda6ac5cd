// GPU tests of the CUDA KV-cache path's launch choices (src/cuda/decode/launch.cuh), forced through
// cuda::KernelChoice: the splits added as a thread-block cluster through shared memory (sm_90) against
// the float64 reference for every split count it takes, row-block shape and mask, its bits repeatable,
// NaN rows of bad sequences, CUDA-graph capture; the programmatic dependent launch of the attention
// changing no bit. Every test skips without a CUDA device; the cluster tests also without sm_90 (code
// and device).
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "cuda/kernel_choice.hpp"
#include "device_kv.hpp"

namespace {

using flashsigmoid::cuda::KernelChoice;
using flashsigmoid::cuda::ScopedKernelChoice;
using flashsigmoid::cuda::decode::SplitSum;
using fs_gpu_kv::DeviceKV;
using fs_gpu_kv::expect_matches;
using fs_gpu_kv::paged_gqa_case;
using fs_kv::KVCase;
using fs_kv::KVProblem;

KernelChoice with_sum(SplitSum sum, bool dependent_launch = true) {
  KernelChoice choice = flashsigmoid::cuda::kernel_choice();
  choice.decode.sum = sum;
  choice.decode.dependent_launch = dependent_launch;
  return choice;
}

bool sm90_device() {
  int dev = 0, major = 0;
  return cudaGetDevice(&dev) == cudaSuccess &&
         cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) == cudaSuccess && major >= 9;
}

// Skips (saying why) unless a cluster-sum run of `c` on this device and build reports "cluster".
#define FS_SKIP_WITHOUT_CLUSTER_SUM(c)                                                                     \
  do {                                                                                                     \
    FS_SKIP_WITHOUT_DECODE_DIM(c);                                                                         \
    if (!sm90_device()) GTEST_SKIP() << "the cluster split sum needs an sm_90 device";                     \
    const KVProblem probe = fs_kv::make_kv_problem(c, 1);                                                  \
    DeviceKV d_probe(probe);                                                                               \
    ScopedKernelChoice scope(with_sum(SplitSum::cluster));                                                 \
    d_probe.run(2);                                                                                        \
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);                                                       \
    if (std::strcmp(flashsigmoid::cuda::last_kvcache_launch().sum, "cluster") != 0)                       \
      GTEST_SKIP() << "this build has no sm_90 code for the KV-cache kernels (FLASHSIGMOID_CUDA_ARCHS)"; \
  } while (0)

// Runs `splits` with the cluster sum: the reference, the reported launch, the same bits twice.
void check_cluster(const KVProblem& p, const std::vector<double>& ref, const std::vector<double>& plain, int splits,
                   int expect_splits, const char* expect_sum) {
  const std::string what = "num_splits " + std::to_string(splits);
  ScopedKernelChoice scope(with_sum(SplitSum::cluster));
  DeviceKV d(p);
  d.run(splits);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess) << what << ": " << cudaGetErrorString(cudaGetLastError());
  expect_matches(p, d, ref, plain, what);
  const auto info = flashsigmoid::cuda::last_kvcache_launch();
  if (expect_splits > 0) EXPECT_EQ(info.splits, expect_splits) << what;
  EXPECT_STREQ(info.sum, expect_sum) << what;
  const std::vector<unsigned char> first = d.out.download();
  d.run(splits);  // appends the same keys at the same positions again: same inputs
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  EXPECT_TRUE(d.out.download() == first) << what << ": a second run gave other bits";
}

// Every cluster size 2..16 on the three row-block shapes (4, 32 and 2 x 64 rows of a GQA group),
// the heuristic's count capped at 16, and a count above 16 falling back to the sum kernel.
TEST(GpuKVCacheLaunch, ClusterSumMatchesReference) {
  FS_SKIP_WITHOUT_GPU();
  KVCase base = paged_gqa_case("cluster");
  base.cached = {1500, 77};
  FS_SKIP_WITHOUT_CLUSTER_SUM(base);
  const std::uint64_t seed = fs_kv::test_seed();
  for (int nq : {1, 8, 20}) {
    KVCase c = base;
    c.Nq = nq;
    c.causal = nq > 1;
    SCOPED_TRACE(fs_kv::describe(c) + ", seed " + std::to_string(seed));
    const KVProblem p = fs_kv::make_kv_problem(c, seed);
    const std::vector<double> ref = p.reference();
    const std::vector<double> plain = p.reference(true);
    for (int splits : {2, 3, 5, 8, 9, 13, 16}) check_cluster(p, ref, plain, splits, splits, "cluster");
    check_cluster(p, ref, plain, 0, 0, "cluster");
    check_cluster(p, ref, plain, 17, 17, "kernel");
  }
}

// Windowed, ALiBi, dense-cache and fp16 cases through the cluster sum, with more splits than key
// blocks in the short sequence (empty splits add zeros).
TEST(GpuKVCacheLaunch, ClusterSumOptions) {
  FS_SKIP_WITHOUT_GPU();
  KVCase base = paged_gqa_case("cluster_options");
  FS_SKIP_WITHOUT_CLUSTER_SUM(base);
  const std::uint64_t seed = fs_kv::test_seed();
  std::vector<KVCase> cases;
  KVCase w = base;
  w.name = "window";
  w.Nq = 3;
  w.causal = true;
  w.window_left = 200;
  w.cached = {900, 5};
  cases.push_back(w);
  KVCase a = base;
  a.name = "alibi_dense_fp16";
  a.page_size = 0;
  a.alibi = fs_kv::Alibi::per_batch;
  a.dtype = flashsigmoid::DType::float16;
  a.cached = {640, 33, 1};
  cases.push_back(a);
  for (const KVCase& c : cases) {
    SCOPED_TRACE(fs_kv::describe(c) + ", seed " + std::to_string(seed));
    const KVProblem p = fs_kv::make_kv_problem(c, seed);
    const std::vector<double> ref = p.reference();
    const std::vector<double> plain = p.reference(true);
    for (int splits : {4, 16}) check_cluster(p, ref, plain, splits, splits, "cluster");
  }
}

// The same case with and without the programmatic dependent launch, one split, split partials
// added by the kernel and by a cluster: the same bits.
TEST(GpuKVCacheLaunch, DependentLaunchChangesNoBit) {
  FS_SKIP_WITHOUT_GPU();
  KVCase c = paged_gqa_case("dependent_launch");
  FS_SKIP_WITHOUT_DECODE_DIM(c);
  c.cached = {700, 64};
  const std::uint64_t seed = fs_kv::test_seed();
  SCOPED_TRACE(fs_kv::describe(c) + ", seed " + std::to_string(seed));
  const KVProblem p = fs_kv::make_kv_problem(c, seed);
  const std::vector<double> ref = p.reference();
  const std::vector<double> plain = p.reference(true);
  for (SplitSum sum : {SplitSum::kernel, SplitSum::cluster}) {
    for (int splits : {1, 4}) {
      std::vector<unsigned char> out[2];
      for (bool dependent : {false, true}) {
        ScopedKernelChoice scope(with_sum(sum, dependent));
        DeviceKV d(p);
        d.run(splits);
        ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess) << cudaGetErrorString(cudaGetLastError());
        expect_matches(p, d, ref, plain, "splits " + std::to_string(splits) + ", dependent " + std::to_string(dependent));
        out[dependent] = d.out.download();
      }
      EXPECT_TRUE(out[0] == out[1]) << "splits " << splits << ", sum " << int(sum)
                                    << ": the dependent launch changed the output";
    }
  }
}

// Append + attention with the cluster sum, launched as a programmatic dependent, captured in a CUDA
// graph and replayed twice.
TEST(GpuKVCacheLaunch, ClusterGraphCaptureReplay) {
  FS_SKIP_WITHOUT_GPU();
  KVCase c = paged_gqa_case("cluster_graph");
  c.cached = {300, 41};
  FS_SKIP_WITHOUT_CLUSTER_SUM(c);
  const std::uint64_t seed = fs_kv::test_seed();
  SCOPED_TRACE(fs_kv::describe(c) + ", seed " + std::to_string(seed));
  const KVProblem p = fs_kv::make_kv_problem(c, seed);
  const std::vector<double> ref = p.reference();
  const std::vector<double> plain = p.reference(true);
  ScopedKernelChoice scope(with_sum(SplitSum::cluster));
  DeviceKV d(p);
  cudaStream_t stream;
  ASSERT_EQ(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), cudaSuccess);
  cudaGraph_t graph;
  ASSERT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal), cudaSuccess);
  d.run(6, stream);
  ASSERT_EQ(cudaStreamEndCapture(stream, &graph), cudaSuccess);
  EXPECT_STREQ(flashsigmoid::cuda::last_kvcache_launch().sum, "cluster");
  cudaGraphExec_t exec;
  ASSERT_EQ(cudaGraphInstantiate(&exec, graph, 0), cudaSuccess);
  for (int replay = 0; replay < 2; ++replay) {
    ASSERT_EQ(cudaGraphLaunch(exec, stream), cudaSuccess);
    ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
    expect_matches(p, d, ref, plain, "replay " + std::to_string(replay));
  }
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  cudaStreamDestroy(stream);
}

}  // namespace
