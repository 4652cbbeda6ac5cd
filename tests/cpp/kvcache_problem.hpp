// A random KV-cache problem for the tests: a dense or paged cache whose unused rows and pages hold
// NaN (so a read outside a sequence's keys shows up in the output), optional new keys to append,
// the expected cache after the append, and the float64 reference over each sequence's gathered keys.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "flashsigmoid/flashsigmoid.hpp"
#include "reference/reference.hpp"
#include "reference/testing.hpp"

namespace fs_kv {

using flashsigmoid::BiasMode;
using flashsigmoid::DType;
using flashsigmoid::KVCache;
using flashsigmoid::Options;
using flashsigmoid::TensorView;
using flashsigmoid::testing::HostTensor;
using flashsigmoid::testing::Layout;

enum class Alibi { none, per_head, per_batch };

struct KVCase {
  std::string name;
  DType dtype = DType::float32;
  std::int64_t Nq = 1, Hq = 4, Hkv = 2, D = 64;
  std::vector<std::int64_t> cached{37, 5};  // keys already cached, per sequence (B = size)
  bool append = true;
  std::int64_t page_size = 0;  // 0 = dense
  bool batch_idx = false;      // dense: sequences live in permuted rows of a larger cache
  std::int64_t spare = 7;      // capacity beyond the longest sequence (rows or page slots)
  bool causal = false;
  std::int64_t window_left = -1, window_right = -1;
  BiasMode bias_mode = BiasMode::scalar;
  Alibi alibi = Alibi::none;
  int num_splits = 0;
  Layout layout = Layout::contiguous;

  std::int64_t B() const { return static_cast<std::int64_t>(cached.size()); }
  std::int64_t keys(std::int64_t b) const { return cached[b] + (append ? Nq : 0); }
};

inline void PrintTo(const KVCase& c, std::ostream* os) { *os << c.name; }

inline std::string describe(const KVCase& c) {
  std::ostringstream os;
  os << c.name << ": " << flashsigmoid::to_string(c.dtype) << " Nq " << c.Nq << " Hq " << c.Hq << " Hkv " << c.Hkv
     << " D " << c.D << " cached {";
  for (auto n : c.cached) os << n << ' ';
  os << "} append " << c.append << " page_size " << c.page_size << " batch_idx " << c.batch_idx << " causal "
     << c.causal << " window (" << c.window_left << ", " << c.window_right << ") bias " << int(c.bias_mode)
     << " alibi " << int(c.alibi) << " splits " << c.num_splits;
  return os.str();
}

inline std::uint64_t test_seed() {
  if (const char* s = std::getenv("FLASHSIGMOID_TEST_SEED")) return std::strtoull(s, nullptr, 0);
  std::random_device rd;
  return (std::uint64_t(rd()) << 32) ^ rd();
}

struct KVProblem {
  KVCase c;
  std::int64_t rows_per_seq = 0;  // dense: Nmax; paged: page_size
  HostTensor q, out, k_cache, v_cache, seqlens, block_table, batch_idx, k_new, v_new, bias, alibi;
  HostTensor k_expected, v_expected;  // the caches after a correct append
  std::vector<std::vector<std::int64_t>> pages;  // paged: the pages of each sequence
  Options o;
  int num_splits = 0;

  KVCache cache() const {
    KVCache k;
    k.k_cache = k_cache;
    k.v_cache = v_cache;
    k.cache_seqlens = seqlens;
    if (c.page_size > 0) k.block_table = block_table;
    if (c.batch_idx) k.cache_batch_idx = batch_idx;
    if (c.append) {
      k.k_new = k_new;
      k.v_new = v_new;
    }
    return k;
  }
  void run() { flashsigmoid::forward_with_kvcache(q, cache(), out, o, num_splits); }

  // Row index (page * page_size + slot, or cache_row * Nmax + t) of key t of sequence b.
  std::int64_t cache_row(std::int64_t b, std::int64_t t) const {
    if (c.page_size > 0) return pages[b][t / c.page_size] * c.page_size + t % c.page_size;
    const std::int64_t row = c.batch_idx ? static_cast<std::int64_t>(batch_idx.get(b)) : b;
    return row * rows_per_seq + t;
  }
  std::int64_t cache_index(std::int64_t b, std::int64_t t, std::int64_t h, std::int64_t d) const {
    return (cache_row(b, t) * c.Hkv + h) * c.D + d;
  }

  // Keys / values of sequence b as a dense [1, Nk_b, Hkv, D] tensor, from the expected cache.
  HostTensor gathered(const HostTensor& cache_after, std::int64_t b) const {
    HostTensor t(c.dtype, {1, c.keys(b), c.Hkv, c.D});
    for (std::int64_t j = 0; j < c.keys(b); ++j)
      for (std::int64_t h = 0; h < c.Hkv; ++h)
        for (std::int64_t d = 0; d < c.D; ++d) t.set((j * c.Hkv + h) * c.D + d, cache_after.get(cache_index(b, j, h, d)));
    return t;
  }

  // One sequence's slice of a [B, ...] tensor (q, out) or of [B, Hq] slopes.
  static TensorView row_of(const TensorView& t, std::int64_t b) {
    TensorView r = t;
    r.data = static_cast<unsigned char*>(t.data) + b * t.stride[0] * flashsigmoid::element_size(t.dtype);
    if (t.rank == 2) {  // [B, Hq] -> [Hq]
      r.rank = 1;
      r.shape[0] = t.shape[1];
      r.stride[0] = t.stride[1];
    } else {
      r.shape[0] = 1;
    }
    return r;
  }
  Options options_of(std::int64_t b) const {
    Options r = o;
    if (c.alibi == Alibi::per_batch) r.alibi_slopes = row_of(alibi, b);
    return r;
  }

  // Float64 reference of out (all sequences, in q's row-major order); with plain = true the
  // "plain" low-precision implementation of SPEC.md instead.
  std::vector<double> reference(bool plain = false) const {
    std::vector<double> all;
    for (std::int64_t b = 0; b < c.B(); ++b) {
      const HostTensor kb = gathered(k_expected, b), vb = gathered(v_expected, b);
      const TensorView qb = row_of(q, b);
      const auto r = plain ? flashsigmoid::reference::plain_forward(qb, kb, vb, options_of(b))
                           : flashsigmoid::reference::forward(qb, kb, vb, options_of(b));
      all.insert(all.end(), r.begin(), r.end());
    }
    return all;
  }
};

inline KVProblem make_kv_problem(const KVCase& c, std::uint64_t seed) {
  KVProblem p;
  p.c = c;
  std::mt19937_64 gen(seed);
  std::normal_distribution<double> normal(0.0, 1.0);
  auto draw = [&] {
    double x = 0.0;
    while (x == 0.0) x = flashsigmoid::testing::round_to_dtype(normal(gen), c.dtype);
    return x;
  };
  const std::int64_t B = c.B();
  std::int64_t longest = 0;
  for (std::int64_t b = 0; b < B; ++b) longest = std::max(longest, c.keys(b));
  const std::int64_t capacity = longest + c.spare;

  p.q = HostTensor(c.dtype, {B, c.Nq, c.Hq, c.D}, c.layout);
  p.q.fill_normal(seed + 1);
  p.out = HostTensor(c.dtype, {B, c.Nq, c.Hq, c.D}, c.layout);  // poisoned: NaN
  p.seqlens = HostTensor(DType::int32, {B});
  for (std::int64_t b = 0; b < B; ++b) p.seqlens.set(b, static_cast<double>(c.cached[b]));

  std::int64_t cache_rows = 0;  // dim 0 of the cache
  if (c.page_size > 0) {
    p.rows_per_seq = c.page_size;
    const std::int64_t max_pages = (capacity + c.page_size - 1) / c.page_size;
    std::int64_t used_total = 0;
    for (std::int64_t b = 0; b < B; ++b) used_total += (c.keys(b) + c.page_size - 1) / c.page_size;
    cache_rows = used_total + 3;  // spare pages stay NaN
    std::vector<std::int64_t> perm(cache_rows);
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), gen);
    p.block_table = HostTensor(DType::int32, {B, max_pages}, c.layout);
    std::int64_t next = 0;
    p.pages.resize(B);
    for (std::int64_t b = 0; b < B; ++b) {
      const std::int64_t used = (c.keys(b) + c.page_size - 1) / c.page_size;
      for (std::int64_t i = 0; i < max_pages; ++i) {
        // Entries past a sequence's pages are garbage a kernel must not follow.
        const std::int64_t page = i < used ? perm[next++] : (i % 2 ? -1 : 1 << 30);
        if (i < used) p.pages[b].push_back(page);
        p.block_table.set(b * max_pages + i, static_cast<double>(page));
      }
    }
  } else {
    p.rows_per_seq = capacity;
    cache_rows = c.batch_idx ? B + 2 : B;
    if (c.batch_idx) {
      std::vector<std::int64_t> perm(cache_rows);
      std::iota(perm.begin(), perm.end(), 0);
      std::shuffle(perm.begin(), perm.end(), gen);
      p.batch_idx = HostTensor(DType::int32, {B});
      for (std::int64_t b = 0; b < B; ++b) p.batch_idx.set(b, static_cast<double>(perm[b]));
    }
  }
  p.k_cache = HostTensor(c.dtype, {cache_rows, p.rows_per_seq, c.Hkv, c.D}, c.layout);  // NaN everywhere
  p.v_cache = HostTensor(c.dtype, {cache_rows, p.rows_per_seq, c.Hkv, c.D}, c.layout);
  for (std::int64_t b = 0; b < B; ++b)
    for (std::int64_t t = 0; t < c.cached[b]; ++t)
      for (std::int64_t h = 0; h < c.Hkv; ++h)
        for (std::int64_t d = 0; d < c.D; ++d) {
          p.k_cache.set(p.cache_index(b, t, h, d), draw());
          p.v_cache.set(p.cache_index(b, t, h, d), draw());
        }
  p.k_expected = p.k_cache;
  p.v_expected = p.v_cache;
  if (c.append) {
    p.k_new = HostTensor(c.dtype, {B, c.Nq, c.Hkv, c.D}, c.layout);
    p.v_new = HostTensor(c.dtype, {B, c.Nq, c.Hkv, c.D}, c.layout);
    p.k_new.fill_normal(seed + 2);
    p.v_new.fill_normal(seed + 3);
    for (std::int64_t b = 0; b < B; ++b)
      for (std::int64_t i = 0; i < c.Nq; ++i)
        for (std::int64_t h = 0; h < c.Hkv; ++h)
          for (std::int64_t d = 0; d < c.D; ++d) {
            const std::int64_t n = ((b * c.Nq + i) * c.Hkv + h) * c.D + d;
            p.k_expected.set(p.cache_index(b, c.cached[b] + i, h, d), p.k_new.get(n));
            p.v_expected.set(p.cache_index(b, c.cached[b] + i, h, d), p.v_new.get(n));
          }
  }

  Options& o = p.o;
  o.bias_mode = c.bias_mode;
  std::uniform_real_distribution<double> uni(0.0, 1.0);
  o.bias_value = static_cast<float>(-1.0 - 3.0 * uni(gen));
  if (c.bias_mode == BiasMode::per_head) {
    p.bias = HostTensor(DType::float32, {c.Hq});
    for (std::int64_t h = 0; h < c.Hq; ++h) p.bias.set(h, -1.0 - 4.0 * uni(gen));
    o.bias = p.bias;
  }
  if (c.alibi != Alibi::none) {
    p.alibi = c.alibi == Alibi::per_head ? HostTensor(DType::float32, {c.Hq}) : HostTensor(DType::float32, {B, c.Hq});
    for (std::int64_t n = 0; n < p.alibi.numel(); ++n) p.alibi.set(n, 0.01 + 0.3 * uni(gen));
    o.alibi_slopes = p.alibi;
  }
  o.causal = c.causal;
  o.window_left = c.window_left;
  o.window_right = c.window_right;
  p.num_splits = c.num_splits;
  return p;
}

}  // namespace fs_kv
