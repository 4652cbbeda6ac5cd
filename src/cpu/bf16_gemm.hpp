// bf16 tile GEMMs with fp32 accumulation, for units built with AVX512-BF16 (vdpbf16ps) or
// AMX-BF16 tiles (tdpbf16ps), and the packed operand panels both read.
//
// Both instructions multiply pairs: C[m][n] += A[m][k] B[k][n] + A[m][k+1] B[k+1][n]. A is plain
// row-major bf16 (k contiguous); B is packed "VNNI" style, Bp[k/2][n][2], so that one 32-bit word
// holds the pair (B[k][n], B[k+1][n]). The same layout is AMX's B tile (16 pair-rows x 16 columns).
#pragma once

#include "cpu/isa.hpp"

#if defined(FLASHSIGMOID_CPU_AVX512BF16)

#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "common/float_convert.hpp"

namespace flashsigmoid::detail::cpu {
inline namespace FLASHSIGMOID_CPU_LEVEL {

using bf16_bits = std::uint16_t;

// Copies rows row(0..rows) into a contiguous [rows][dim] tile (zero rows where row(r) is null).
template <typename RowFn>
inline void pack_rows_bf16(RowFn row, int rows, int dim, bf16_bits* dst) {
  for (int r = 0; r < rows; ++r) {
    const bfloat16_t* in = row(r);
    if (in != nullptr) {
      std::memcpy(dst + r * dim, in, sizeof(bf16_bits) * dim);
    } else {
      std::memset(dst + r * dim, 0, sizeof(bf16_bits) * dim);
    }
  }
}

// Packs the K of one key block as the B operand of S = Q K^T: Kp[d/2][c][2] = K[c][d, d+1],
// c < cols (zero rows where row(c) is null).
template <typename RowFn>
inline void pack_kt_pairs(RowFn row, int cols, int dim, bf16_bits* dst) {
  auto* out = reinterpret_cast<std::uint32_t*>(dst);
  for (int c = 0; c < cols; ++c) {
    const bfloat16_t* in = row(c);
    std::uint32_t pairs[256 / 2];  // dim <= 256
    if (in != nullptr) {
      std::memcpy(pairs, in, sizeof(bf16_bits) * dim);
    } else {
      std::memset(pairs, 0, sizeof(bf16_bits) * dim);
    }
    for (int dp = 0; dp < dim / 2; ++dp) out[dp * cols + c] = pairs[dp];
  }
}

// Packs the V of one key block as the B operand of O += P V: Vp[r/2][d][2] = V[r, r+1][d]
// (rows must be even; zero rows where row(r) is null).
template <typename RowFn>
inline void pack_v_pairs(RowFn row, int rows, int dim, bf16_bits* dst) {
  for (int r = 0; r < rows; r += 2) {
    const bfloat16_t* a = row(r);
    const bfloat16_t* b = row(r + 1);
    bf16_bits* out = dst + r * dim;
    for (int d = 0; d < dim; ++d) {
      out[2 * d] = a ? a[d].bits : bf16_bits(0);
      out[2 * d + 1] = b ? b[d].bits : bf16_bits(0);
    }
  }
}

// dst[m][n] = bf16(src[m][n]), round to nearest even (NaN stays NaN); n % 32 == 0.
inline void to_bf16(const float* src, int rows, int cols, bf16_bits* dst) {
  for (int e = 0; e < rows * cols; e += 32) {
    const __m512bh v = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(src + e + 16), _mm512_loadu_ps(src + e));
    _mm512_storeu_si512(dst + e, (__m512i)v);
  }
}

// dst[c][r] = bf16(src[r][c]) for a [64][64] fp32 tile, rounded as to_bf16. 16 x 16 blocks are
// transposed in registers (two unpack steps within 128-bit lanes, two lane shuffles): a scalar
// transpose cost about a tenth of the bf16 backward's time.
inline void transposed_to_bf16_64(const float* src, bf16_bits* dst) {
  constexpr int n = 64;
  for (int r0 = 0; r0 < n; r0 += 16) {
    for (int c0 = 0; c0 < n; c0 += 16) {
      __m512 x[16], y[16];
      for (int i = 0; i < 16; ++i) x[i] = _mm512_loadu_ps(src + (r0 + i) * n + c0);
      for (int i = 0; i < 16; i += 2) {  // lane k of y[i]: x[i][4k], x[i+1][4k], x[i][4k+1], x[i+1][4k+1]
        y[i] = _mm512_unpacklo_ps(x[i], x[i + 1]);
        y[i + 1] = _mm512_unpackhi_ps(x[i], x[i + 1]);
      }
      for (int g = 0; g < 16; g += 4) {  // lane k of x[g + m]: column 4k + m of rows g..g+3
        x[g] = _mm512_shuffle_ps(y[g], y[g + 2], 0x44);
        x[g + 1] = _mm512_shuffle_ps(y[g], y[g + 2], 0xEE);
        x[g + 2] = _mm512_shuffle_ps(y[g + 1], y[g + 3], 0x44);
        x[g + 3] = _mm512_shuffle_ps(y[g + 1], y[g + 3], 0xEE);
      }
      for (int m = 0; m < 4; ++m) {  // y[c]: column c of the 16 rows
        const __m512 a = _mm512_shuffle_f32x4(x[m], x[4 + m], 0x88), b = _mm512_shuffle_f32x4(x[m], x[4 + m], 0xDD);
        const __m512 c = _mm512_shuffle_f32x4(x[8 + m], x[12 + m], 0x88);
        const __m512 d = _mm512_shuffle_f32x4(x[8 + m], x[12 + m], 0xDD);
        y[m] = _mm512_shuffle_f32x4(a, c, 0x88);
        y[8 + m] = _mm512_shuffle_f32x4(a, c, 0xDD);
        y[4 + m] = _mm512_shuffle_f32x4(b, d, 0x88);
        y[12 + m] = _mm512_shuffle_f32x4(b, d, 0xDD);
      }
      for (int c = 0; c < 16; ++c) {
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + (c0 + c) * n + r0), (__m256i)_mm512_cvtneps_pbh(y[c]));
      }
    }
  }
}

#if defined(FLASHSIGMOID_CPU_AMX)

// The tile shapes gemm_bf16 uses: every tile 16 rows x 64 bytes (C: 16 x 16 fp32; A: 16 x 32
// bf16; B: 16 pair-rows x 16 columns). Loaded once per task, on the thread that runs it.
struct AmxTiles {
  AmxTiles() {
    struct alignas(64) {
      std::uint8_t palette = 1, start_row = 0, reserved[14] = {};
      std::uint16_t colsb[16] = {};
      std::uint8_t rows[16] = {};
    } cfg;
    for (int t = 0; t < 8; ++t) {
      cfg.colsb[t] = 64;
      cfg.rows[t] = 16;
    }
    _tile_loadconfig(&cfg);
  }
  ~AmxTiles() { _tile_release(); }
  AmxTiles(const AmxTiles&) = delete;
  AmxTiles& operator=(const AmxTiles&) = delete;
};

// C[M][N] (+)= A[M][K] Bp (fp32 C, ldc floats; A bf16, lda elements; Bp packed with ldb columns);
// M, N, K multiples of 32. A 2 x 2 block of C tiles stays in tile registers across K. Needs an
// AmxTiles alive on this thread.
inline void gemm_bf16(const bf16_bits* A, int lda, const bf16_bits* Bp, int ldb, float* C, int ldc, int M, int N,
                      int K, bool accumulate) {
  for (int i0 = 0; i0 < M; i0 += 32) {
    for (int j0 = 0; j0 < N; j0 += 32) {
      float* c = C + i0 * ldc + j0;
      const int cs = ldc * 4;
      if (accumulate) {
        _tile_loadd(0, c, cs);
        _tile_loadd(1, c + 16, cs);
        _tile_loadd(2, c + 16 * ldc, cs);
        _tile_loadd(3, c + 16 * ldc + 16, cs);
      } else {
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
      }
      for (int k0 = 0; k0 < K; k0 += 32) {
        const bf16_bits* a = A + i0 * lda + k0;
        const bf16_bits* b = Bp + ((k0 / 2) * ldb + j0) * 2;
        _tile_loadd(4, a, lda * 2);
        _tile_loadd(5, a + 16 * lda, lda * 2);
        _tile_loadd(6, b, ldb * 4);
        _tile_loadd(7, b + 32, ldb * 4);
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(1, 4, 7);
        _tile_dpbf16ps(2, 5, 6);
        _tile_dpbf16ps(3, 5, 7);
      }
      _tile_stored(0, c, cs);
      _tile_stored(1, c + 16, cs);
      _tile_stored(2, c + 16 * ldc, cs);
      _tile_stored(3, c + 16 * ldc + 16, cs);
    }
  }
}

#else

// Nothing to set up without AMX.
struct AmxTiles {};

// C[M][N] (+)= A[M][K] Bp as above, with vdpbf16ps; M % 8 == 0, N % 32 == 0, K even. An 8 x 32
// block of C (16 zmm accumulators) stays in registers across K; A pairs are broadcast.
inline void gemm_bf16(const bf16_bits* A, int lda, const bf16_bits* Bp, int ldb, float* C, int ldc, int M, int N,
                      int K, bool accumulate) {
  constexpr int MR = 8;
  for (int i0 = 0; i0 < M; i0 += MR) {
    for (int j0 = 0; j0 < N; j0 += 32) {
      __m512 c[MR][2];
      for (int r = 0; r < MR; ++r) {
        c[r][0] = accumulate ? _mm512_loadu_ps(C + (i0 + r) * ldc + j0) : _mm512_setzero_ps();
        c[r][1] = accumulate ? _mm512_loadu_ps(C + (i0 + r) * ldc + j0 + 16) : _mm512_setzero_ps();
      }
      for (int kp = 0; kp < K / 2; ++kp) {
        const bf16_bits* b = Bp + (kp * ldb + j0) * 2;
        const __m512bh b0 = (__m512bh)_mm512_loadu_si512(b);
        const __m512bh b1 = (__m512bh)_mm512_loadu_si512(b + 32);
        for (int r = 0; r < MR; ++r) {
          std::int32_t pair;
          std::memcpy(&pair, A + (i0 + r) * lda + 2 * kp, sizeof pair);
          const __m512bh a = (__m512bh)_mm512_set1_epi32(pair);
          c[r][0] = _mm512_dpbf16_ps(c[r][0], a, b0);
          c[r][1] = _mm512_dpbf16_ps(c[r][1], a, b1);
        }
      }
      for (int r = 0; r < MR; ++r) {
        _mm512_storeu_ps(C + (i0 + r) * ldc + j0, c[r][0]);
        _mm512_storeu_ps(C + (i0 + r) * ldc + j0 + 16, c[r][1]);
      }
    }
  }
}

#endif  // FLASHSIGMOID_CPU_AMX

}  // namespace FLASHSIGMOID_CPU_LEVEL
}  // namespace flashsigmoid::detail::cpu

#endif  // FLASHSIGMOID_CPU_AVX512BF16
