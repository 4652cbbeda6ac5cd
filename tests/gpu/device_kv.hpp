// A KV-cache problem (tests/cpp/kvcache_problem.hpp) on the GPU, and the checks the CUDA KV-cache
// tests share: the output against the float64 reference and the caches byte for byte.
#pragma once

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "device_buffer.hpp"
#include "device_problem.hpp"  // kBuiltHeadDims, tolerance, expect_error, unbuilt_head_dim
#include "flashsigmoid/flashsigmoid.hpp"
#include "kvcache_problem.hpp"  // tests/cpp: KVCase, KVProblem, make_kv_problem

namespace fs_gpu_kv {

using flashsigmoid::DType;
using flashsigmoid::KVCache;
using flashsigmoid::Options;
using fs_gpu::DeviceTensor;
using fs_kv::KVCase;
using fs_kv::KVProblem;

// A KVProblem's tensors mirrored on the GPU (the host problem must outlive it).
struct DeviceKV {
  DeviceTensor q, out, k_cache, v_cache, seqlens, block_table, batch_idx, k_new, v_new, bias, alibi;
  Options o;
  const KVProblem& p;

  explicit DeviceKV(const KVProblem& problem)
      : q(problem.q), out(problem.out), k_cache(problem.k_cache), v_cache(problem.v_cache),
        seqlens(problem.seqlens), p(problem) {
    if (p.c.page_size > 0) block_table = DeviceTensor(p.block_table);
    if (p.c.batch_idx) batch_idx = DeviceTensor(p.batch_idx);
    if (p.c.append) {
      k_new = DeviceTensor(p.k_new);
      v_new = DeviceTensor(p.v_new);
    }
    o = p.o;
    fs_gpu::upload_head_params(p.bias, p.alibi, o, bias, alibi);
  }
  KVCache cache() const {
    KVCache c;
    c.k_cache = k_cache;
    c.v_cache = v_cache;
    c.cache_seqlens = seqlens;
    if (p.c.page_size > 0) c.block_table = block_table;
    if (p.c.batch_idx) c.cache_batch_idx = batch_idx;
    if (p.c.append) {
      c.k_new = k_new;
      c.v_new = v_new;
    }
    return c;
  }
  void run(int num_splits, void* stream = nullptr) {
    Options opt = o;
    opt.stream = stream;
    flashsigmoid::forward_with_kvcache(q, cache(), out, opt, num_splits);
  }
  std::vector<double> output() const {
    std::vector<unsigned char> bytes = out.download();
    return flashsigmoid::testing::to_vector(out.host_view(bytes));
  }
};

// The output rows (D values each) of the listed sequences, from a [B, Nq, Hq, D] vector.
inline std::vector<double> rows_of(const std::vector<double>& all, const KVCase& c, const std::vector<std::int64_t>& seqs) {
  std::vector<double> r;
  const std::int64_t per_seq = c.Nq * c.Hq * c.D;
  for (std::int64_t b : seqs) r.insert(r.end(), all.begin() + b * per_seq, all.begin() + (b + 1) * per_seq);
  return r;
}

// The output and both caches checked after a run (the caches byte for byte, guard bands included).
inline void expect_matches(const KVProblem& p, DeviceKV& d, const std::vector<double>& ref, const std::vector<double>& plain,
                    const std::string& what) {
  SCOPED_TRACE(what);
  std::vector<unsigned char> bytes = d.out.download();
  const double err = flashsigmoid::testing::rel_l2(ref, d.out.host_view(bytes));
  const double plain_err = flashsigmoid::testing::rel_l2(ref, plain);
  EXPECT_LE(err, fs_gpu::tolerance(p.c.dtype)) << "rel L2 vs float64 reference (plain: " << plain_err << ")";
  EXPECT_LE(err, std::max(2.0 * plain_err, 1e-6)) << "worse than 2x the plain implementation's " << plain_err;
  EXPECT_TRUE(d.out.guard_intact(bytes)) << "bytes outside the output view were written";
  EXPECT_TRUE(d.k_cache.download() == p.k_expected.bytes()) << "k_cache differs from the expected append";
  EXPECT_TRUE(d.v_cache.download() == p.v_expected.bytes()) << "v_cache differs from the expected append";
}

// Head dims of this build that the KV-cache kernels take.
inline std::vector<int> decode_head_dims() {
  std::vector<int> dims;
  for (int D : fs_gpu::kBuiltHeadDims) {
    if (D == 64 || D == 128 || D == 256) dims.push_back(D);
  }
  return dims;
}

inline KVCase misc_case(const std::string& name) {
  KVCase c;
  c.name = name;
  c.dtype = DType::bfloat16;
  c.D = decode_head_dims().empty() ? 0 : decode_head_dims().front();
  return c;
}

// A misc case with 8 query heads on 2 kv heads, paged by 16 keys.
inline KVCase paged_gqa_case(const std::string& name) {
  KVCase c = misc_case(name);
  c.Hq = 8;
  c.Hkv = 2;
  c.page_size = 16;
  return c;
}

#define FS_SKIP_WITHOUT_DECODE_DIM(c) \
  if ((c).D == 0) GTEST_SKIP() << "no KV-cache head dim (64, 128, 256) built"

}  // namespace fs_gpu_kv
