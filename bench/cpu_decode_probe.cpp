// Two probes behind the CPU decode figures (bench/NOTES.md):
//   flashsigmoid_cpu_decode_probe decode B N HQ HKV PAGE THREADS [REPS]
//     flashsigmoid::forward_with_kvcache on the CPU, bf16, D 128, one new token, a paged cache with
//     shuffled pages, every sequence N keys; median time and K/V bytes / time. Small N keeps the
//     cache in L2 / L3: the compute ceiling per core.
//   flashsigmoid_cpu_decode_probe read CHUNK AHEAD THREADS
//     reads 512 MiB in chunks of CHUNK bytes taken in a random order (CHUNK 0: in order), with a
//     software prefetch of the chunk AHEAD positions later (0: none): what the memory system gives
//     to reads of scattered pages, against which a paged decode is measured.
//   flashsigmoid_cpu_decode_probe copy THREADS
//     a 512 MiB memcpy over THREADS threads, (bytes read + written) / time: the decode target's reference.
//   A trailing "huge" (decode, read) backs the cache / buffer by transparent huge pages.
#include <immintrin.h>
#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <numeric>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "flashsigmoid/flashsigmoid.hpp"

namespace {

// A host buffer, 2 MiB aligned; with `huge`, asked to be backed by transparent huge pages before it
// is first touched (Linux madvise: where THP is "madvise", plain allocations get 4 KiB pages, and a
// decode over scattered pages then pays a TLB miss per page).
struct HostBuffer {
  void* data = nullptr;
  HostBuffer(std::size_t bytes, bool huge) {
    const std::size_t align = std::size_t(2) << 20;
    data = std::aligned_alloc(align, (bytes + align - 1) / align * align);
    if (data == nullptr) throw std::bad_alloc();
    if (huge) madvise(data, (bytes + align - 1) / align * align, MADV_HUGEPAGE);
  }
  ~HostBuffer() { std::free(data); }
  HostBuffer(const HostBuffer&) = delete;
  HostBuffer& operator=(const HostBuffer&) = delete;
};

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

int decode(int B, int N, int Hq, int Hkv, int page, int threads, int reps, bool huge, bool fp32) {
  using namespace flashsigmoid;
  constexpr int D = 128;
  const std::int64_t pages_per_seq = (N + page - 1) / page, pages = B * pages_per_seq;
  const std::size_t cache_elems = std::size_t(pages) * page * Hkv * D, esize = fp32 ? 4 : 2;
  const DType dtype = fp32 ? DType::float32 : DType::bfloat16;
  HostBuffer kb(cache_elems * esize, huge), vb(cache_elems * esize, huge);
  std::vector<std::uint32_t> q(std::size_t(B) * Hq * D), o(q.size());  // room for either dtype
  std::mt19937 gen(1);
  // Values in [0.5, 1) and [1, 2) with random mantissas: finite, never zero (bf16: the top halves).
  auto fill = [&](void* dst, std::size_t n, std::uint32_t top) {
    for (std::size_t i = 0; i < n; ++i) {
      const std::uint32_t bits = (top | (gen() & 0xff)) << 16 | (fp32 ? gen() & 0xffff : 0);
      if (fp32) static_cast<std::uint32_t*>(dst)[i] = bits;
      else static_cast<std::uint16_t*>(dst)[i] = std::uint16_t(bits >> 16);
    }
  };
  fill(kb.data, cache_elems, 0x3f00);
  fill(vb.data, cache_elems, 0x3f00);
  fill(q.data(), q.size(), 0x3c00);
  void* k = kb.data;
  void* v = vb.data;
  std::vector<std::int32_t> table(pages), lens(B, N);
  std::iota(table.begin(), table.end(), 0);
  std::shuffle(table.begin(), table.end(), gen);
  const Device cpu{DeviceType::cpu, 0};
  KVCache c;
  c.k_cache = TensorView::contiguous(k, dtype, {pages, page, Hkv, D}, cpu);
  c.v_cache = TensorView::contiguous(v, dtype, {pages, page, Hkv, D}, cpu);
  c.cache_seqlens = TensorView::contiguous(lens.data(), DType::int32, {B}, cpu);
  c.block_table = TensorView::contiguous(table.data(), DType::int32, {B, pages_per_seq}, cpu);
  Options opt;
  opt.bias_mode = BiasMode::scalar;
  opt.bias_value = -5.0f;
  opt.num_threads = threads;
  const auto qv = TensorView::contiguous(q.data(), dtype, {B, 1, Hq, D}, cpu);
  const auto ov = TensorView::contiguous(o.data(), dtype, {B, 1, Hq, D}, cpu);
  std::vector<double> ms;
  for (int r = 0; r < reps + 2; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    forward_with_kvcache(qv, c, ov, opt, 0);
    if (r >= 2) ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  const double t = median(ms), bytes = 2.0 * B * N * Hkv * D * double(esize);
  // FNV-1a of the output bytes: two builds that claim the same bits can be compared.
  std::uint64_t hash = 1469598103934665603ull;
  const auto* ob = reinterpret_cast<const unsigned char*>(o.data());
  for (std::size_t i = 0; i < std::size_t(B) * Hq * D * esize; ++i) hash = (hash ^ ob[i]) * 1099511628211ull;
  std::printf("decode %s B %d N %d %d:%d page %d threads %d%s: %.3f ms, K/V %.1f GB/s (output hash %016llx)\n",
              fp32 ? "fp32" : "bf16", B, N, Hq, Hkv, page, threads, huge ? " huge pages" : "", t, bytes / t * 1e-6,
              static_cast<unsigned long long>(hash));
  return 0;
}

// Median over 5 runs of bytes / time, each run `threads` threads calling body(t) once.
template <class Body>
double median_gbs(int threads, double bytes, Body body) {
  std::vector<double> gbs;
  for (int rep = 0; rep < 5; ++rep) {
    const auto t0 = std::chrono::steady_clock::now();
    std::vector<std::thread> pool;
    for (int t = 0; t < threads; ++t) pool.emplace_back(body, t);
    for (auto& th : pool) th.join();
    gbs.push_back(bytes / std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() * 1e-9);
  }
  return median(gbs);
}

int read(std::size_t chunk, std::size_t ahead, int threads, bool huge) {
  const std::size_t n = std::size_t(512) << 20, step = chunk ? chunk : 4096;
  HostBuffer buf(n, huge);
  auto* a = static_cast<char*>(buf.data);
  std::memset(a, 1, n);
  const std::size_t chunks = n / step;
  std::vector<std::size_t> order(chunks);
  std::iota(order.begin(), order.end(), 0);
  if (chunk) std::shuffle(order.begin(), order.end(), std::mt19937(1));
  std::atomic<long long> sink{0};  // keeps the loads alive
  const double gbs = median_gbs(threads, double(n), [&](int t) {
    __m512i s = _mm512_setzero_si512();
    const std::size_t lo = chunks * t / threads, hi = chunks * (t + 1) / threads;
    for (std::size_t c = lo; c < hi; ++c) {
      const char* p = a + order[c] * step;
      const char* f = ahead && c + ahead < hi ? a + order[c + ahead] * step : nullptr;
      for (std::size_t i = 0; i < step; i += 64) {
        if (f) _mm_prefetch(f + i, _MM_HINT_T1);
        s = _mm512_xor_si512(s, _mm512_load_si512(p + i));
      }
    }
    sink += _mm512_reduce_add_epi64(s);
  });
  std::printf("read chunk %zu%s ahead %zu threads %d%s: %.1f GB/s (median of 5; checksum %lld)\n", chunk,
              chunk ? "" : " (in order)", ahead, threads, huge ? " huge pages" : "", gbs, sink.load() & 0xff);
  return 0;
}

// The same-run reference of the decode benchmark: a 512 MiB copy split over the threads, (bytes
// read + bytes written) / time, median of 5.
int copy(int threads) {
  const std::size_t n = std::size_t(512) << 20;
  HostBuffer src(n, false), dst(n, false);
  std::memset(src.data, 1, n);
  std::memset(dst.data, 0, n);
  const double gbs = median_gbs(threads, 2.0 * double(n), [&](int t) {
    const std::size_t lo = n * t / threads, hi = n * (t + 1) / threads;
    std::memcpy(static_cast<char*>(dst.data) + lo, static_cast<const char*>(src.data) + lo, hi - lo);
  });
  std::printf("copy threads %d: %.1f GB/s read + written (median of 5)\n", threads, gbs);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  // Trailing flags: "huge" asks for transparent huge pages behind the cache (decode) or the buffer
  // (read); "fp32" decodes an fp32 cache instead of bf16.
  bool huge = false, fp32 = false;
  for (; argc > 2; --argc) {
    const std::string flag = argv[argc - 1];
    if (flag == "huge") huge = true;
    else if (flag == "fp32") fp32 = true;
    else break;
  }
  const std::string mode = argc > 1 ? argv[1] : "";
  if (mode == "decode" && (argc == 8 || argc == 9)) {
    const int B = std::atoi(argv[2]), N = std::atoi(argv[3]), hq = std::atoi(argv[4]), hkv = std::atoi(argv[5]),
              page = std::atoi(argv[6]), threads = std::atoi(argv[7]), reps = argc == 9 ? std::atoi(argv[8]) : 20;
    if (B > 0 && N > 0 && hkv > 0 && hq % hkv == 0 && page > 0 && threads >= 0 && reps > 0) {
      return decode(B, N, hq, hkv, page, threads, reps, huge, fp32);
    }
  } else if (mode == "copy" && argc == 3 && std::atoi(argv[2]) > 0) {
    return copy(std::atoi(argv[2]));
  } else if (mode == "read" && argc == 5) {
    const long chunk = std::atol(argv[2]), ahead = std::atol(argv[3]);
    const int threads = std::atoi(argv[4]);
    if (chunk >= 0 && chunk % 64 == 0 && chunk <= (1 << 20) && ahead >= 0 && threads > 0) {
      return read(std::size_t(chunk), std::size_t(ahead), threads, huge);
    }
  }
  std::fprintf(stderr,
               "usage: %s decode B N HQ HKV PAGE THREADS [REPS] [huge] [fp32]   (HQ a multiple of HKV; THREADS 0 = all)\n"
               "       %s read CHUNK AHEAD THREADS [huge]                (CHUNK a multiple of 64 up to 1 MiB, 0 = "
               "in order; AHEAD chunks prefetched ahead, 0 = none)\n"
               "       %s copy THREADS                                    (the same-run copy bandwidth)\n"
               "  huge: the cache / buffer asked to be backed by transparent huge pages (madvise)\n"
               "  fp32: an fp32 cache and query (default bf16)\n",
               argv[0], argv[0], argv[0]);
  return 2;
}
