// forward_with_kvcache on the CPU: against the float64 reference over each sequence's gathered keys
// (dense, dense with cache_batch_idx, paged with page sizes 1 to 256; appends; every option), the
// cache after the append, determinism across thread counts, and decoding token by token against
// one causal forward over the whole sequence.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

#include "kvcache_problem.hpp"

namespace fs_kv {
namespace {

using flashsigmoid::testing::rel_l2;

double dtype_bound(DType t) {
  switch (t) {
    case DType::bfloat16: return 1e-2;
    case DType::float16: return 2e-3;
    default: return 1e-5;
  }
}

// out within the dtype's bound of the reference (and, for 16-bit dtypes, within 2x the plain
// implementation's error); the cache holds exactly the expected bytes; nothing outside a view was written.
void check(KVProblem& p) {
  const auto expected = p.reference();
  const double err = rel_l2(expected, p.out.view());  // +inf on any NaN: an unwritten or poisoned element
  EXPECT_LE(err, dtype_bound(p.c.dtype)) << "out rel L2 error " << err;
  if (p.c.dtype == DType::float16 || p.c.dtype == DType::bfloat16) {
    const double plain = rel_l2(expected, p.reference(true));
    EXPECT_LE(err, 2.0 * plain) << "out rel L2 error " << err << " > 2x plain " << plain;
  }
  EXPECT_TRUE(p.out.guard_intact());
  EXPECT_TRUE(p.k_cache.bytes() == p.k_expected.bytes()) << "k_cache differs from the expected append";
  EXPECT_TRUE(p.v_cache.bytes() == p.v_expected.bytes()) << "v_cache differs from the expected append";
}

class KVCacheAccuracy : public ::testing::TestWithParam<KVCase> {};

TEST_P(KVCacheAccuracy, MatchesReference) {
  const KVCase& c = GetParam();
  const std::uint64_t seed = test_seed();
  SCOPED_TRACE(describe(c) + "; FLASHSIGMOID_TEST_SEED=" + std::to_string(seed));
  KVProblem p = make_kv_problem(c, seed);
  const auto q_bytes = p.q.bytes();
  p.run();
  check(p);
  EXPECT_EQ(p.q.bytes(), q_bytes);
}

std::vector<KVCase> accuracy_cases() {
  std::vector<KVCase> v;
  auto add = [&](KVCase c) { v.push_back(std::move(c)); };
  // Storage: dense, dense with cache_batch_idx, paged with every page size the issue names.
  add({.name = "dense_decode"});
  add({.name = "dense_no_append", .append = false});
  add({.name = "dense_batch_idx", .Nq = 3, .cached = {20, 0, 91}, .batch_idx = true});
  add({.name = "dense_batch_idx_no_append", .cached = {20, 7, 91}, .append = false, .batch_idx = true});
  for (std::int64_t ps : {1, 16, 64, 256}) {
    add({.name = "paged" + std::to_string(ps), .cached = {130, 3, 300}, .page_size = ps});
    add({.name = "paged" + std::to_string(ps) + "_append5_causal", .Nq = 5, .cached = {129, 0, 64},
         .page_size = ps, .causal = true});
  }
  add({.name = "paged16_no_append", .Nq = 2, .cached = {40, 17}, .append = false, .page_size = 16});
  // Options.
  add({.name = "gqa8_causal_window", .Nq = 6, .Hq = 8, .Hkv = 1, .cached = {200, 33}, .page_size = 16,
       .causal = true, .window_left = 50});
  add({.name = "mha_alibi_batch", .Nq = 4, .Hq = 3, .Hkv = 3, .cached = {70, 150}, .causal = true,
       .alibi = Alibi::per_batch});
  add({.name = "alibi_head_per_head_bias", .Nq = 2, .Hq = 4, .Hkv = 2, .cached = {65, 1}, .page_size = 64,
       .bias_mode = BiasMode::per_head, .alibi = Alibi::per_head});
  // Tasks over several kv heads each: 6 kv heads in 2 blocks of 3 (5 tokens x 4 query heads x 3),
  // and all 8 kv heads of a decode step in one block; per-head bias and ALiBi.
  add({.name = "kv_head_blocks", .Nq = 5, .Hq = 24, .Hkv = 6, .D = 32, .cached = {150, 61}, .page_size = 16,
       .causal = true, .bias_mode = BiasMode::per_head, .alibi = Alibi::per_head});
  add({.name = "decode_all_kv_heads", .Hq = 32, .Hkv = 8, .D = 32, .cached = {300, 77}, .page_size = 64,
       .window_left = 100, .alibi = Alibi::per_batch});
  add({.name = "window_both_sides", .Nq = 9, .cached = {100, 12}, .window_left = 20, .window_right = 3});
  add({.name = "nq_gt_keys_no_append_causal", .Nq = 7, .cached = {3, 0}, .append = false, .causal = true});
  add({.name = "padded_layout", .Nq = 3, .cached = {45, 80}, .page_size = 16, .layout = Layout::padded});
  add({.name = "heads_major_layout", .Nq = 2, .cached = {45, 80}, .layout = Layout::heads_major});
  add({.name = "chunked_prefill_rows_over_tile", .Nq = 40, .Hq = 4, .Hkv = 1, .cached = {30}, .page_size = 16,
       .causal = true});
  // Explicit splits, including more splits than key blocks.
  for (int s : {1, 2, 3, 7}) {
    add({.name = "splits" + std::to_string(s), .Nq = 2, .cached = {500, 90}, .page_size = 16, .causal = true,
         .alibi = Alibi::per_head, .num_splits = s});
  }
  // Dtypes and head dims.
  add({.name = "bf16_d128", .dtype = DType::bfloat16, .D = 128, .cached = {300, 20}, .page_size = 16});
  // bf16 decode shapes (the AVX512-BF16 paths where the CPU has them): 32 query heads of one kv head
  // (more rows than one block of P pairs), D 96 (odd 32-element chunks), a window, all kv heads.
  add({.name = "bf16_gqa32_d96", .dtype = DType::bfloat16, .Hq = 32, .Hkv = 1, .D = 96, .cached = {150, 33},
       .page_size = 16});
  add({.name = "bf16_d32_causal_window", .dtype = DType::bfloat16, .Nq = 3, .Hq = 8, .D = 32, .cached = {200, 5},
       .page_size = 64, .causal = true, .window_left = 40});
  add({.name = "bf16_decode_32_8", .dtype = DType::bfloat16, .Hq = 32, .Hkv = 8, .D = 128, .cached = {700},
       .append = false, .page_size = 256});
  // 64 query rows per kv head (8 new tokens, GQA 8:1): with AVX512-BF16 the scores run as a packed GEMM.
  add({.name = "bf16_append8_gqa8_causal", .dtype = DType::bfloat16, .Nq = 8, .Hq = 8, .Hkv = 1, .D = 128,
       .cached = {300, 70}, .page_size = 16, .causal = true});
  add({.name = "fp16_d32_gqa", .dtype = DType::float16, .Nq = 3, .Hq = 4, .Hkv = 1, .D = 32, .cached = {90, 9},
       .page_size = 1, .causal = true});
  add({.name = "fp64_d96", .dtype = DType::float64, .Nq = 2, .D = 96, .cached = {77, 31}, .page_size = 64});
  add({.name = "fp32_d256", .D = 256, .cached = {60, 61}, .num_splits = 2});
  return v;
}

INSTANTIATE_TEST_SUITE_P(Cases, KVCacheAccuracy, ::testing::ValuesIn(accuracy_cases()),
                         [](const auto& info) { return info.param.name; });

// A fixed num_splits gives the same bits whatever the thread count (partials add in split order).
// The caches are long enough for the backend to start every thread asked for.
TEST(KVCache, BitwiseIdenticalAcrossThreadCounts) {
  for (int splits : {1, 3, 8}) {
    KVCase c{.name = "threads", .Nq = 3, .Hq = 8, .Hkv = 2, .D = 32, .cached = {3000, 1100, 2100}, .page_size = 16,
             .causal = true, .num_splits = splits};
    const std::uint64_t seed = test_seed();
    SCOPED_TRACE("splits " + std::to_string(splits) + "; FLASHSIGMOID_TEST_SEED=" + std::to_string(seed));
    std::vector<unsigned char> first;
    for (int threads : {1, 2, 5}) {
      KVProblem p = make_kv_problem(c, seed);
      p.o.num_threads = threads;
      p.run();
      check(p);
      if (first.empty()) {
        first = p.out.bytes();
      } else {
        EXPECT_TRUE(p.out.bytes() == first) << "output bits differ with " << threads << " threads";
      }
    }
  }
}

// NaN in a key / value row reaches exactly the query rows that see that key: a masked NaN row
// adds nothing (it is skipped, not multiplied by 0), and other kv heads and sequences stay finite.
TEST(KVCache, NanReachesOnlyTheRowsThatSeeIt) {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  KVCase c{.name = "nan", .Nq = 2, .Hq = 4, .Hkv = 2, .cached = {30, 30}, .page_size = 16, .window_left = 4};
  const std::uint64_t seed = test_seed();
  SCOPED_TRACE("FLASHSIGMOID_TEST_SEED=" + std::to_string(seed));
  KVProblem p = make_kv_problem(c, seed);
  // 32 keys per sequence; row 0 (key position 30) sees keys 26..30, row 1 sees 27..31.
  for (std::int64_t d = 0; d < c.D; ++d) p.v_cache.set(p.cache_index(0, 26, 1, d), nan);  // seen by row 0 only
  p.v_cache.set(p.cache_index(1, 2, 0, 0), nan);  // sequence 1: a key no row sees
  p.k_cache.set(p.cache_index(1, 3, 1, 0), nan);
  p.run();
  for (std::int64_t b = 0; b < 2; ++b)
    for (std::int64_t i = 0; i < c.Nq; ++i)
      for (std::int64_t h = 0; h < c.Hq; ++h) {
        const bool nan_row = b == 0 && i == 0 && h / 2 == 1;
        for (std::int64_t d = 0; d < c.D; ++d) {
          const double x = p.out.get(((b * c.Nq + i) * c.Hq + h) * c.D + d);
          ASSERT_EQ(std::isnan(x), nan_row) << "b " << b << " i " << i << " h " << h << " d " << d;
        }
      }
}

// Decoding a sequence with the cache (a prompt appended at once, then one token per call) gives
// the rows of one causal forward over the whole sequence with the same scalar bias.
struct DecodeCase {
  const char* name;
  std::int64_t page_size;
  std::int64_t Hq, Hkv;
  std::int64_t window_left;
  bool alibi;
};

class DecodeMatchesForward : public ::testing::TestWithParam<DecodeCase> {};

TEST_P(DecodeMatchesForward, TokenByToken) {
  const DecodeCase dc = GetParam();
  const std::uint64_t seed = test_seed();
  SCOPED_TRACE(std::string(dc.name) + "; FLASHSIGMOID_TEST_SEED=" + std::to_string(seed));
  const std::int64_t B = 2, N = 45, prompt = 9, D = 64, Hq = dc.Hq, Hkv = dc.Hkv;
  HostTensor q(DType::float32, {B, N, Hq, D}), k(DType::float32, {B, N, Hkv, D}), v(DType::float32, {B, N, Hkv, D});
  q.fill_normal(seed + 1);
  k.fill_normal(seed + 2);
  v.fill_normal(seed + 3);
  HostTensor slopes(DType::float32, {Hq});
  for (std::int64_t h = 0; h < Hq; ++h) slopes.set(h, 0.05 * (h + 1));
  Options o;
  o.bias_mode = BiasMode::scalar;
  o.bias_value = -std::log(64.0f);  // a "training length" bias, the same at every step
  o.causal = true;
  o.window_left = dc.window_left;
  if (dc.alibi) o.alibi_slopes = slopes;

  HostTensor full(DType::float32, {B, N, Hq, D});
  flashsigmoid::forward(q, k, v, full, o);

  // The cache: dense [B, N + 3, Hkv, D], or paged with each sequence's pages interleaved.
  const std::int64_t ps = dc.page_size;
  const std::int64_t max_pages = ps > 0 ? (N + ps - 1) / ps : 0;
  HostTensor k_cache = ps > 0 ? HostTensor(DType::float32, {B * max_pages, ps, Hkv, D})
                              : HostTensor(DType::float32, {B, N + 3, Hkv, D});
  HostTensor v_cache = ps > 0 ? HostTensor(DType::float32, {B * max_pages, ps, Hkv, D})
                              : HostTensor(DType::float32, {B, N + 3, Hkv, D});
  HostTensor table(DType::int32, {B, std::max<std::int64_t>(max_pages, 1)});
  for (std::int64_t b = 0; b < B; ++b)
    for (std::int64_t i = 0; i < max_pages; ++i) table.set(b * max_pages + i, static_cast<double>(i * B + (B - 1 - b)));
  HostTensor seqlens(DType::int32, {B});

  std::vector<double> got(static_cast<std::size_t>(B * N * Hq * D));
  auto slice = [](const HostTensor& t, std::int64_t i0, std::int64_t n) {  // rows [i0, i0 + n) of [B, N, H, D]
    TensorView s = t.view();
    s.data = static_cast<float*>(s.data) + i0 * s.stride[1];
    s.shape[1] = n;
    return s;
  };
  for (std::int64_t i0 = 0; i0 < N;) {
    const std::int64_t n = i0 == 0 ? prompt : 1;
    for (std::int64_t b = 0; b < B; ++b) seqlens.set(b, static_cast<double>(i0));
    HostTensor out(DType::float32, {B, n, Hq, D});
    KVCache cache{k_cache, v_cache, seqlens, {}, {}, slice(k, i0, n), slice(v, i0, n)};
    if (ps > 0) cache.block_table = table;
    flashsigmoid::forward_with_kvcache(slice(q, i0, n), cache, out, o, i0 % 3);  // splits 0, 1, 2 in turn
    for (std::int64_t b = 0; b < B; ++b)
      for (std::int64_t r = 0; r < n; ++r)
        for (std::int64_t e = 0; e < Hq * D; ++e)
          got[((b * N + i0 + r) * Hq) * D + e] = out.get(((b * n + r) * Hq) * D + e);
    i0 += n;
  }
  const double err = rel_l2(full.to_vector(), got);
  EXPECT_LE(err, 1e-5) << "decode vs forward rel L2 error " << err;
}

INSTANTIATE_TEST_SUITE_P(Cases, DecodeMatchesForward,
                         ::testing::Values(DecodeCase{"dense_gqa", 0, 4, 2, -1, false},
                                           DecodeCase{"dense_window_alibi", 0, 4, 1, 11, true},
                                           DecodeCase{"paged1_mha", 1, 2, 2, -1, true},
                                           DecodeCase{"paged16_gqa_window", 16, 8, 2, 7, false},
                                           DecodeCase{"paged256_gqa_alibi_window", 256, 4, 2, 20, true}),
                         [](const auto& info) { return std::string(info.param.name); });

}  // namespace
}  // namespace fs_kv
