// Building blocks of the CPU backend: a work-stealing parallel loop, strided
// tile loads/stores between the storage dtype and the accumulation type, a small
// register-blocked GEMM that the compiler vectorises, and a vectorisable sigmoid.
#pragma once

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <thread>
#include <type_traits>
#include <vector>

#include "common/float_convert.hpp"
#include "common/params.hpp"
#include "cpu/isa.hpp"
#include "cpu/thread_pool.hpp"

namespace flashsigmoid::detail::cpu {
inline namespace FLASHSIGMOID_CPU_LEVEL {

// Query rows per task / key columns per step. Multiples of the GEMM micro-tile rows (gemm_acc).
constexpr int kBlockQ = 64;
constexpr int kBlockK = 64;

// Runs fn(task) for task in [0, num_tasks) on up to `threads` threads of the backend's pool; tasks
// are taken in order from a shared counter, so callers put the longest tasks first. fn must not
// throw (an exception terminates, as from any worker thread).
template <typename Fn>
void parallel_for(std::int64_t num_tasks, int threads, Fn&& fn) {
  auto call = [](void* ctx, std::int64_t task) noexcept { (*static_cast<std::remove_reference_t<Fn>*>(ctx))(task); };
  run_tasks(num_tasks, threads, call, const_cast<void*>(static_cast<const void*>(&fn)));
}

// Threads for `units` units of work, each worth a thread of its own: at most `requested` (0 = all
// hardware threads), at least 1. Starting a thread costs tens of microseconds, more than a small
// problem's whole work; the results never depend on the thread count.
inline int thread_count(int requested, double units) {
  const int all = requested > 0 ? requested : static_cast<int>(std::thread::hardware_concurrency());
  return static_cast<int>(std::clamp(units, 1.0, double(std::max(all, 1))));
}

// Threads for a pass over an attention problem: one per 2^20 multiply-adds of Q K^T and P V.
inline int attn_threads(const AttnParams& p) {
  const double macs = 2.0 * double(p.batch) * double(p.heads_q) * double(p.seqlen_q) * double(p.seqlen_k) *
                      double(p.head_dim);
  return thread_count(p.num_threads, macs / double(1 << 20));
}

// Task `task` of a pass over (sequence b, head h, block of `block_rows` rows starting at row0), with
// `heads` heads and `blocks` blocks per sequence. The heads of one block position are neighbouring
// tasks; `last_first` takes the last blocks first (causal query blocks: they see the most keys).
struct BlockTask {
  std::int64_t b = 0, h = 0, row0 = 0;
};
inline BlockTask block_task(std::int64_t task, std::int64_t heads, std::int64_t blocks, int block_rows,
                            bool last_first) {
  const std::int64_t in_seq = task % (heads * blocks);
  const std::int64_t block = in_seq / heads;
  return {task / (heads * blocks), in_seq % heads, (last_first ? blocks - 1 - block : block) * block_rows};
}

// Calls fn.template operator()<R>(m0) on rows [m0, rows) in groups of R = MR rows, the rest in one
// smaller group (register-blocked micro-kernels take their row count as a template argument).
template <int MR, typename Fn>
void for_row_groups(int rows, Fn&& fn, int m0 = 0) {
  for (; m0 + MR <= rows; m0 += MR) fn.template operator()<MR>(m0);
  if constexpr (MR > 1) for_row_groups<MR - 1>(rows, fn, m0);
}

// Rows [row0, row0 + rows) of one head of one operand, in storage type T.
template <typename T>
struct RowSlice {
  const T* base = nullptr;  // row 0 of this (sequence, head)
  std::int64_t row_stride = 0;
  std::int64_t rows = 0;  // valid rows (the sequence length)

  const T* row(std::int64_t r) const { return base + r * row_stride; }
};

template <typename T>
RowSlice<T> head_rows(const void* ptr, const OperandStrides& s, std::int64_t b, std::int64_t seq_begin,
                      std::int64_t h, std::int64_t rows) {
  return {static_cast<const T*>(ptr) + s.offset(b, seq_begin, h), s.row, rows};
}

// First row of head h of sequence b in an output operand.
template <typename T>
T* head_rows_out(void* ptr, const OperandStrides& s, std::int64_t b, std::int64_t seq_begin, std::int64_t h) {
  return static_cast<T*>(ptr) + s.offset(b, seq_begin, h);
}

// dst[r][d] = src row (r0 + r), zero past the valid rows.
template <typename T, typename Acc>
void load_tile(const RowSlice<T>& src, std::int64_t r0, int n_rows, int dim, Acc* dst) {
  for (int r = 0; r < n_rows; ++r) {
    Acc* out = dst + r * dim;
    if (r0 + r < src.rows) {
      const T* in = src.row(r0 + r);
      for (int d = 0; d < dim; ++d) out[d] = load_as<Acc>(in[d]);
    } else {
      std::fill(out, out + dim, Acc(0));
    }
  }
}

// Rows [r0, r0 + n_rows) of `src` as a GEMM operand with leading dimension *ld: read in place when
// the storage type is the accumulation type and all the rows exist, else loaded into `tile`.
template <typename T, typename Acc>
const Acc* tile_rows(const RowSlice<T>& src, std::int64_t r0, int n_rows, int dim, Acc* tile, int* ld) {
  if constexpr (std::is_same_v<T, Acc>) {
    if (r0 + n_rows <= src.rows && src.row_stride <= INT32_MAX) {
      *ld = static_cast<int>(src.row_stride);
      return src.row(r0);
    }
  }
  load_tile(src, r0, n_rows, dim, tile);
  *ld = dim;
  return tile;
}

// dst[d][r] = src row (r0 + r) (transposed), zero past the valid rows.
template <typename T, typename Acc>
void load_tile_transposed(const RowSlice<T>& src, std::int64_t r0, int n_rows, int dim, Acc* dst) {
  for (int r = 0; r < n_rows; ++r) {
    if (r0 + r < src.rows) {
      const T* in = src.row(r0 + r);
      for (int d = 0; d < dim; ++d) dst[d * n_rows + r] = load_as<Acc>(in[d]);
    } else {
      for (int d = 0; d < dim; ++d) dst[d * n_rows + r] = Acc(0);
    }
  }
}

// Stores the valid rows of a [n_rows][dim] tile, multiplied by `mul`.
template <typename T, typename Acc>
void store_tile(const Acc* src, int n_rows, int dim, Acc mul, T* base, std::int64_t row_stride,
                std::int64_t r0, std::int64_t valid_rows) {
  for (int r = 0; r < n_rows && r0 + r < valid_rows; ++r) {
    T* out = base + (r0 + r) * row_stride;
    for (int d = 0; d < dim; ++d) out[d] = store_as<T>(src[r * dim + d] * mul);
  }
}

// Zeros rows [row_begin, row_end) of every head of a packed [rows, H, D] output: the varlen rows
// past cu_seqlens[B], which belong to no sequence but are promised to be written.
template <typename T>
void zero_rows(void* ptr, const OperandStrides& s, std::int64_t row_begin, std::int64_t row_end, std::int64_t heads,
               int dim) {
  for (std::int64_t r = row_begin; r < row_end; ++r) {
    for (std::int64_t h = 0; h < heads; ++h) {
      T* out = static_cast<T*>(ptr) + s.offset(0, r, h);
      std::fill(out, out + dim, store_as<T>(0.0f));
    }
  }
}

// SIMD width in bytes for GCC/Clang vector extensions: the compiler lowers these to
// AVX-512, AVX2 or SSE as the target allows, so no intrinsics are needed.
// The per-level units of a portable build say their width (their `#pragma GCC target` defines
// no ISA macros); otherwise the compiler's target decides.
#if defined(FLASHSIGMOID_CPU_VECTOR_BYTES)
constexpr int kVectorBytes = FLASHSIGMOID_CPU_VECTOR_BYTES;
#elif defined(__AVX512F__)
constexpr int kVectorBytes = 64;
#elif defined(__AVX__)
constexpr int kVectorBytes = 32;
#else
constexpr int kVectorBytes = 16;  // SSE only: wider vector types would be split through memory
#endif
// Whether this unit may use AVX-512 intrinsics (the 64-byte levels are x86-64-v4 and up).
#if (defined(FLASHSIGMOID_CPU_VECTOR_BYTES) && FLASHSIGMOID_CPU_VECTOR_BYTES == 64) || \
    (!defined(FLASHSIGMOID_CPU_VECTOR_BYTES) && defined(__AVX512F__))
#define FLASHSIGMOID_CPU_AVX512 1
#endif
// 64-byte vectors: 16 accumulators of the 32 vector registers; else 8 of the 16.
constexpr int kGemmRows = kVectorBytes == 64 ? 8 : 4;

template <typename Acc>
struct Vec {
  using type [[gnu::vector_size(kVectorBytes)]] = Acc;
  static constexpr int width = kVectorBytes / static_cast<int>(sizeof(Acc));
  static type load(const Acc* p) {
    type v;
    __builtin_memcpy(&v, p, sizeof v);
    return v;
  }
  static void store(Acc* p, type v) { __builtin_memcpy(p, &v, sizeof v); }
};

// C[M][N] += op(A) * B[K][N], all row-major, op(A) = A[M][K] or, with kTransA, the
// transpose of A[K][M] (so P^T dO needs no explicit transpose); M % kGemmRows == 0 and N % (2 * SIMD width)
// == 0 (tile sizes and head dims are multiples of 32). A kGemmRows x (2 vectors) block of C
// stays in registers across the K loop: enough independent FMAs to hide their latency.
template <bool kTransA = false, typename Acc>
void gemm_acc(const Acc* __restrict A, int lda, const Acc* __restrict B, int ldb, Acc* __restrict C, int ldc,
              int M, int N, int K) {
  using V = Vec<Acc>;
  constexpr int MR = kGemmRows, W = V::width;
  for (int i0 = 0; i0 < M; i0 += MR) {
    for (int j0 = 0; j0 < N; j0 += 2 * W) {
      typename V::type c[MR][2];
      for (int r = 0; r < MR; ++r) {
        c[r][0] = V::load(C + (i0 + r) * ldc + j0);
        c[r][1] = V::load(C + (i0 + r) * ldc + j0 + W);
      }
      for (int k = 0; k < K; ++k) {
        const typename V::type b0 = V::load(B + k * ldb + j0), b1 = V::load(B + k * ldb + j0 + W);
        for (int r = 0; r < MR; ++r) {
          const Acc a = kTransA ? A[k * lda + i0 + r] : A[(i0 + r) * lda + k];
          c[r][0] += a * b0;
          c[r][1] += a * b1;
        }
      }
      for (int r = 0; r < MR; ++r) {
        V::store(C + (i0 + r) * ldc + j0, c[r][0]);
        V::store(C + (i0 + r) * ldc + j0 + W, c[r][1]);
      }
    }
  }
}

// gemm_acc restricted per row: row m of C takes only the terms k in [lo[m], hi[m]). The others
// are skipped, not multiplied by a zero, so a NaN or Inf in a row of B (or an element of A) that
// row m must not see contributes nothing (0 * NaN would be NaN). Used for partially masked tiles,
// whose visible keys (or queries) form one interval per row because every mask is a band.
template <bool kTransA = false, typename Acc>
void gemm_acc_rows(const Acc* __restrict A, int lda, const Acc* __restrict B, int ldb, Acc* __restrict C, int ldc,
                   int M, int N, const int* lo, const int* hi) {
  using V = Vec<Acc>;
  constexpr int MR = kGemmRows, W = V::width;
  for (int i0 = 0; i0 < M; i0 += MR) {
    int k_lo = lo[i0], k_hi = hi[i0];
    for (int r = 1; r < MR; ++r) {
      k_lo = std::min(k_lo, lo[i0 + r]);
      k_hi = std::max(k_hi, hi[i0 + r]);
    }
    if (k_lo >= k_hi) continue;
    for (int j0 = 0; j0 < N; j0 += 2 * W) {
      typename V::type c[MR][2];
      for (int r = 0; r < MR; ++r) {
        c[r][0] = V::load(C + (i0 + r) * ldc + j0);
        c[r][1] = V::load(C + (i0 + r) * ldc + j0 + W);
      }
      for (int k = k_lo; k < k_hi; ++k) {
        const typename V::type b0 = V::load(B + k * ldb + j0), b1 = V::load(B + k * ldb + j0 + W);
        for (int r = 0; r < MR; ++r) {
          if (k < lo[i0 + r] || k >= hi[i0 + r]) continue;
          const Acc a = kTransA ? A[k * lda + i0 + r] : A[(i0 + r) * lda + k];
          c[r][0] += a * b0;
          c[r][1] += a * b1;
        }
      }
      for (int r = 0; r < MR; ++r) {
        V::store(C + (i0 + r) * ldc + j0, c[r][0]);
        V::store(C + (i0 + r) * ldc + j0 + W, c[r][1]);
      }
    }
  }
}

// The bits of a float, or of each lane of a float vector, as unsigned integers (and back).
template <typename T>
struct FloatBits {  // GCC vector of floats
  using type [[gnu::vector_size(sizeof(T))]] = std::uint32_t;
  static type to(T x) { return reinterpret_cast<type>(x); }
  static T from(type u) { return reinterpret_cast<T>(u); }
};
template <>
struct FloatBits<float> {
  using type = std::uint32_t;
  static type to(float x) { return float_bits(x); }
  static float from(type u) { return bits_float(u); }
};

// exp(x) for a float or a vector of floats without libm calls, so loops over it vectorise: 2^n * p(r)
// with n = round(x / ln2), r = x - n ln2 (split in two for precision), p a degree-6
// Taylor/minimax-style polynomial; about 2 ulp on [-87, 88]. The clamp is written with
// comparisons that are false for NaN (std::min/max would return the bound), so NaN stays NaN;
// n is read from the bits of x / ln2 + 1.5 * 2^23 rather than converted, which is defined for NaN.
template <typename T>
inline T exp_fast(T x) {
  x = x < -87.0f ? T{} - 87.0f : x;
  x = x > 88.0f ? T{} + 88.0f : x;
  constexpr float kRound = 12582912.0f;  // 1.5 * 2^23: t's low mantissa bits hold round(x / ln2)
  const T t = x * 1.44269504088896341f + kRound;
  const T n = t - kRound;
  const T r = (x - n * 0.693359375f) + n * 2.12194440e-4f;
  T p = T{} + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const typename FloatBits<T>::type e = FloatBits<T>::to(t) - float_bits(kRound) + 127u;
  return p * FloatBits<T>::from(e << 23);
}

inline float sigmoid(float x) { return 1.0f / (1.0f + exp_fast(-x)); }
inline double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

// 1 / d for d >= 1 (d = 1 + exp(-x)), a vector of them. With 32-byte vectors (AVX2): the hardware's
// 12-bit reciprocal estimate and one Newton step (y + y (1 - d y), about 2^-23 relative) instead of a
// division, which costs more than the whole exponential. NaN stays NaN.
template <typename VT>
inline VT reciprocal_ge1(VT d) {
#if defined(__x86_64__) || defined(__i386__)
  if constexpr (sizeof(VT) == 32 && sizeof(d[0]) == 4) {
    const VT y = reinterpret_cast<VT>(_mm256_rcp_ps(reinterpret_cast<__m256>(d)));
    return y + y * (1.0f - d * y);
  }
#endif
  return 1.0f / d;
}

#if defined(FLASHSIGMOID_CPU_AVX512)
// AVX-512: sigmoid(x) = 1 / (1 + 2^y), y = -x log2(e) = a s + c from the raw dot product s in one FMA.
// 2^y = 2^n 2^f (n = round(y), f = y - n in [-1/2, 1/2]); 2^f by a degree-5 polynomial fitted for
// relative error (1.3e-7 over the interval, in fp32 coefficients); vscalefps applies 2^n with the
// exponent range handled in hardware (no exponent-bit arithmetic: about 14 operations per vector
// against 21). y is kept in [-127, 125]: 1 + 2^y and its reciprocal stay normal numbers
// (sigmoid below 2^-125 comes out as about 2^-125: an absolute error under 1e-37), and y = -inf
// (x = +inf) gives 1, not inf - inf. The bounds keep a NaN y (min / max return their second operand
// for NaN).
inline __m512 sigmoid_avx512(__m512 s, __m512 a, __m512 c) {
  __m512 y = _mm512_min_ps(_mm512_set1_ps(125.0f), _mm512_fmadd_ps(s, a, c));
  y = _mm512_max_ps(_mm512_set1_ps(-127.0f), y);
  const __m512 n = _mm512_roundscale_ps(y, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_sub_ps(y, n);
  __m512 p = _mm512_set1_ps(1.3281889e-3f);
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.6755978e-3f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.5506967e-2f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.4022119e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.9314700e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0000001f));
  const __m512 d = _mm512_add_ps(_mm512_set1_ps(1.0f), _mm512_scalef_ps(p, n));
  const __m512 r = _mm512_rcp14_ps(d);
  return _mm512_fmadd_ps(r, _mm512_fnmadd_ps(d, r, _mm512_set1_ps(1.0f)), r);
}
#endif

// s[e] = sigmoid(scale * s[e] + bias) for e < n, in place.
inline void sigmoid_affine(float* s, int n, float scale, float bias) {
  using V = Vec<float>;
  int e = 0;
#if defined(FLASHSIGMOID_CPU_AVX512)
  {
    constexpr float kLog2e = 1.44269504088896341f;
    const __m512 a = _mm512_set1_ps(-scale * kLog2e), c = _mm512_set1_ps(-bias * kLog2e);
    for (; e + 16 <= n; e += 16) _mm512_storeu_ps(s + e, sigmoid_avx512(_mm512_loadu_ps(s + e), a, c));
  }
#endif
  for (; e + V::width <= n; e += V::width) {
    const V::type x = V::load(s + e) * scale + bias;
    V::store(s + e, reciprocal_ge1(1.0f + exp_fast(-x)));
  }
  for (; e < n; ++e) s[e] = sigmoid(scale * s[e] + bias);
}
inline void sigmoid_affine(double* s, int n, double scale, double bias) {
  for (int e = 0; e < n; ++e) s[e] = sigmoid(scale * s[e] + bias);
}

// Calls fn.template operator()<StorageType, AccType>() for the problem's dtype.
template <typename Fn>
void dispatch_dtype(DType dtype, Fn&& fn) {
  switch (dtype) {
    case DType::float32: return fn.template operator()<float, float>();
    case DType::float16: return fn.template operator()<half_t, float>();
    case DType::bfloat16: return fn.template operator()<bfloat16_t, float>();
    case DType::float64: return fn.template operator()<double, double>();
    default: throw Error("flashsigmoid: internal error: CPU backend got an unsupported dtype");
  }
}

}  // namespace FLASHSIGMOID_CPU_LEVEL
}  // namespace flashsigmoid::detail::cpu
