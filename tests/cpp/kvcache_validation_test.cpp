// Every bad forward_with_kvcache input throws flashsigmoid::Error with a message naming the
// problem, and the cache is byte-identical afterwards (nothing is appended before all checks pass).
// Each test starts from a valid paged or dense append (ValidCallIsAccepted proves it) and breaks one thing.
#include <gtest/gtest.h>

#include <functional>
#include <string>

#include "kvcache_problem.hpp"

namespace fs_kv {
namespace {

using flashsigmoid::Device;
using flashsigmoid::DeviceType;

std::string error_text(const std::function<void()>& f) {
  try {
    f();
  } catch (const flashsigmoid::Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "no flashsigmoid::Error thrown";
  return "";
}

struct BadInput : ::testing::Test {
  KVProblem paged = make_kv_problem({.name = "paged", .Nq = 3, .cached = {20, 7, 40}, .page_size = 16}, 7);
  KVProblem dense = make_kv_problem({.name = "dense", .Nq = 2, .cached = {20, 7}, .batch_idx = true}, 8);

  // Runs the call with `cache` / `q` / `o` as given; expects an Error containing `substring` and
  // both problems' caches unchanged.
  void expect_rejected(KVProblem& p, const KVCache& cache, const std::string& substring, int splits = 0,
                       const Options* o = nullptr, const TensorView* q = nullptr) {
    const auto k_before = p.k_cache.bytes(), v_before = p.v_cache.bytes(), out_before = p.out.bytes();
    const std::string text = error_text(
        [&] { flashsigmoid::forward_with_kvcache(q ? *q : p.q.view(), cache, p.out, o ? *o : p.o, splits); });
    EXPECT_NE(text.find(substring), std::string::npos) << "error text: \"" << text << "\"\nexpected: \"" << substring
                                                       << "\"";
    EXPECT_TRUE(p.k_cache.bytes() == k_before) << "k_cache was written by a rejected call";
    EXPECT_TRUE(p.v_cache.bytes() == v_before) << "v_cache was written by a rejected call";
    EXPECT_TRUE(p.out.bytes() == out_before) << "out was written by a rejected call";
  }
};

TEST_F(BadInput, ValidCallIsAccepted) {
  paged.run();
  EXPECT_TRUE(paged.k_cache.bytes() == paged.k_expected.bytes());
  dense.run();
  EXPECT_TRUE(dense.k_cache.bytes() == dense.k_expected.bytes());
}

TEST_F(BadInput, NegativeCacheSeqlens) {
  paged.seqlens.set(1, -1);
  expect_rejected(paged, paged.cache(), "cache_seqlens[1] is -1");
}

TEST_F(BadInput, BlockTableTooShort) {
  // 3 appended keys after 60 cached ones need 63 slots; the table holds 4 pages of 16 = 64, so 62 cached fail.
  paged.seqlens.set(2, 62);
  expect_rejected(paged, paged.cache(), "sequence 2 needs 65 keys");
}

TEST_F(BadInput, DenseCacheTooSmallToAppend) {
  dense.seqlens.set(0, static_cast<double>(dense.rows_per_seq - 1));
  expect_rejected(dense, dense.cache(), "but the cache holds");
}

TEST_F(BadInput, PageIdOutOfRange) {
  const std::int64_t pages = paged.k_cache.view().shape[0];
  const std::int64_t max_pages = paged.block_table.view().shape[1];
  paged.block_table.set(1 * max_pages + 0, static_cast<double>(pages));
  expect_rejected(paged, paged.cache(), "block_table[1][0] is page " + std::to_string(pages));
  paged.block_table.set(1 * max_pages + 0, -3);
  expect_rejected(paged, paged.cache(), "block_table[1][0] is page -3");
}

TEST_F(BadInput, AppendIntoSharedPage) {
  // Sequence 1 (7 cached) appends into its page 0; make sequence 0's page 1 (where it appends) the same page.
  const std::int64_t max_pages = paged.block_table.view().shape[1];
  paged.block_table.set(0 * max_pages + 1, paged.block_table.get(1 * max_pages + 0));
  expect_rejected(paged, paged.cache(), "pages that an append writes must not be shared");
}

TEST_F(BadInput, SharedReadOnlyPagesAreFine) {
  // Sequence 1 reads sequence 0's first page as its own (a shared prefix); no one appends.
  KVCache c = paged.cache();
  c.k_new = c.v_new = {};
  const std::int64_t max_pages = paged.block_table.view().shape[1];
  paged.block_table.set(1 * max_pages + 0, paged.block_table.get(0));
  EXPECT_NO_THROW(flashsigmoid::forward_with_kvcache(paged.q, c, paged.out, paged.o));
}

TEST_F(BadInput, CacheBatchIdx) {
  dense.batch_idx.set(1, 4);  // the cache has B + 2 = 4 rows
  expect_rejected(dense, dense.cache(), "cache_batch_idx[1] is 4");
  dense.batch_idx.set(1, dense.batch_idx.get(0));
  expect_rejected(dense, dense.cache(), "sequences that append need their own cache rows");
  KVCache c = paged.cache();
  c.cache_batch_idx = dense.batch_idx;
  expect_rejected(paged, c, "cache_batch_idx is for dense caches");
}

TEST_F(BadInput, KWithoutV) {
  KVCache c = paged.cache();
  c.v_new = {};
  expect_rejected(paged, c, "k (the new keys/values to append) was given without v");
  c = paged.cache();
  c.k_new = {};
  expect_rejected(paged, c, "v (the new keys/values to append) was given without k");
}

TEST_F(BadInput, NewKeysShape) {
  KVCache c = paged.cache();
  TensorView k = c.k_new;
  k.shape[1] = 2;  // q has Nq_new 3
  c.k_new = k;
  expect_rejected(paged, c, "k (new keys) must have shape [3, 3, 2, 64]");
}

TEST_F(BadInput, DtypeMismatch) {
  HostTensor k16(DType::bfloat16, {paged.k_cache.view().shape[0], 16, 2, 64});
  KVCache c = paged.cache();
  c.k_cache = k16;
  expect_rejected(paged, c, "k_cache has dtype bfloat16 but q has dtype float32");
  HostTensor knew(DType::float16, {3, 3, 2, 64});
  c = paged.cache();
  c.k_new = knew;
  expect_rejected(paged, c, "k (new keys) has dtype float16");
  HostTensor seq(DType::float32, {3});
  c = paged.cache();
  c.cache_seqlens = seq;
  expect_rejected(paged, c, "cache_seqlens must be int32");
  HostTensor table(DType::float32, {3, 4});
  c = paged.cache();
  c.block_table = table;
  expect_rejected(paged, c, "block_table must be int32");
}

TEST_F(BadInput, DeviceMismatch) {
  KVCache c = paged.cache();
  TensorView s = c.cache_seqlens;
  s.device = Device{DeviceType::cuda, 0};
  c.cache_seqlens = s;
  expect_rejected(paged, c, "cache_seqlens is on cuda:0 but q is on cpu");
  c = paged.cache();
  TensorView v = c.v_cache;
  v.device = Device{DeviceType::cuda, 0};
  c.v_cache = v;
  expect_rejected(paged, c, "v_cache is on cuda:0 but q is on cpu");
}

TEST_F(BadInput, Shapes) {
  KVCache c = paged.cache();
  HostTensor short_seqlens(DType::int32, {2});
  c.cache_seqlens = short_seqlens;
  expect_rejected(paged, c, "cache_seqlens has 2 rows but q has batch 3");
  c = paged.cache();
  c.cache_seqlens = {};
  expect_rejected(paged, c, "cache_seqlens (int32 [batch]) is required");
  c = paged.cache();
  HostTensor table1(DType::int32, {3});
  c.block_table = table1;
  expect_rejected(paged, c, "block_table must have rank 2");
  c = paged.cache();
  HostTensor v_other(DType::float32, {paged.k_cache.view().shape[0], 8, 2, 64});
  c.v_cache = v_other;
  expect_rejected(paged, c, "v_cache must have the shape of k_cache");
  c = paged.cache();
  HostTensor k_heads(DType::float32, {paged.k_cache.view().shape[0], 16, 3, 64});
  HostTensor v_heads(DType::float32, {paged.k_cache.view().shape[0], 16, 3, 64});
  c.k_cache = k_heads;
  c.v_cache = v_heads;
  expect_rejected(paged, c, "must be a positive multiple of the number of key/value heads (3)");
  c = paged.cache();
  HostTensor k_dim(DType::float32, {paged.k_cache.view().shape[0], 16, 2, 32});
  c.k_cache = k_dim;
  c.v_cache = k_dim;
  expect_rejected(paged, c, "k_cache has head_dim 32 but q has head_dim 64");
  c = paged.cache();
  HostTensor k_empty(DType::float32, {4, 0, 2, 64});
  c.k_cache = k_empty;
  c.v_cache = k_empty;
  expect_rejected(paged, c, "needs page_size >= 1");
  HostTensor dense_small(DType::float32, {1, 40, 2, 64});
  c = dense.cache();
  c.cache_batch_idx = {};
  c.k_cache = c.v_cache = dense_small;
  expect_rejected(dense, c, "k_cache has 1 rows (dimension 0) but q has batch 2");
}

TEST_F(BadInput, BiasMustBeExplicit) {
  Options o = paged.o;
  o.bias_mode = BiasMode::neg_log_seqlen_k;
  expect_rejected(paged, paged.cache(), "decodes with that same b", 0, &o);
}

TEST_F(BadInput, NumSplits) {
  expect_rejected(paged, paged.cache(), "num_splits is -1", -1);
  expect_rejected(paged, paged.cache(), "num_splits is 100000", 100000);
}

TEST_F(BadInput, OptionsSharedWithForward) {
  Options o = paged.o;
  o.window_left = -2;
  expect_rejected(paged, paged.cache(), "window (-2, -1) is invalid", 0, &o);
  o = paged.o;
  HostTensor slopes(DType::float32, {5});
  o.alibi_slopes = slopes;
  expect_rejected(paged, paged.cache(), "alibi_slopes must have shape [4] or [3, 4]", 0, &o);
  o = paged.o;
  o.cu_seqlens_q = paged.seqlens;
  expect_rejected(paged, paged.cache(), "takes no cu_seqlens", 0, &o);
}

TEST_F(BadInput, PositionsAreRejected) {
  Options o = paged.o;
  o.positions = Options::PositionOffsets{4, 0};
  expect_rejected(paged, paged.cache(), "takes no positions", 0, &o);
}

TEST_F(BadInput, OutSharingMemoryWithQ) {
  const auto k_before = paged.k_cache.bytes(), q_before = paged.q.bytes();
  const std::string text =
      error_text([&] { flashsigmoid::forward_with_kvcache(paged.q, paged.cache(), paged.q, paged.o); });
  EXPECT_NE(text.find("out and q overlap in memory"), std::string::npos) << text;
  EXPECT_TRUE(paged.k_cache.bytes() == k_before) << "k_cache was written by a rejected call";
  EXPECT_TRUE(paged.q.bytes() == q_before) << "q was written by a rejected call";
}

TEST_F(BadInput, OutShape) {
  HostTensor out(DType::float32, {3, 3, 4, 32});
  const std::string text =
      error_text([&] { flashsigmoid::forward_with_kvcache(paged.q, paged.cache(), out, paged.o); });
  EXPECT_NE(text.find("out must have the shape of q"), std::string::npos) << text;
}

}  // namespace
}  // namespace fs_kv
