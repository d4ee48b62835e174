// Dense products for the CPU kernels' small matrices (a block of rotations, a chunk's scores, a
// projection panel), which are too small and too many for a BLAS call per product: a
// register-blocked GEMM on the vectors of vec.h, and the in-register transposes that lay its B
// operand out row-major. Sums run over k in order, so results do not depend on the thread count.
#pragma once

#include <cstdint>
#include <cstring>

#include "vec.h"

namespace reformer_kernels::cpu {

// The tiles compute in vectors of kBytes: Vec's 32, or 64 where the target has AVX-512, whose
// server cores issue two 64-byte FMAs per cycle (twice the products of 32-byte ones, measured
// 2.0x on this GEMM on a Sapphire Rapids core); cores that split 64-byte vectors in two (Zen 4)
// run them at the 32-byte rate. Each output lane sums its products over k in the same order in
// either width, so the width changes no bits.
#ifdef __AVX512F__
constexpr int kWideBytes = 64;
#else
constexpr int kWideBytes = 32;
#endif

// C (M x N, row stride ldc) = or += A (M x K) * B (K x N, row stride ldb), where A's element (m, k)
// sits at a[m * a_rs + k * a_cs], so A can be read transposed in place. N must be a multiple of
// the vector width kBytes / sizeof(T) (callers pad their scratch rows); M and K are arbitrary.
template <typename T, int kBytes, int MR, int NV>
inline void gemm_tile(int64_t K, const T* a, int64_t a_rs, int64_t a_cs, const T* b, int64_t ldb, T* c, int64_t ldc,
                      bool accumulate) {
  typedef T vec __attribute__((vector_size(kBytes)));
  constexpr int64_t W = kBytes / sizeof(T);
  vec sum[MR][NV] = {};
  for (int64_t k = 0; k < K; ++k) {
    vec row[NV];
    for (int n = 0; n < NV; ++n) std::memcpy(&row[n], b + k * ldb + n * W, kBytes);
    for (int m = 0; m < MR; ++m) {
      const vec scale = a[m * a_rs + k * a_cs] - vec{};
      for (int n = 0; n < NV; ++n) sum[m][n] += scale * row[n];
    }
  }
  for (int m = 0; m < MR; ++m) {
    for (int n = 0; n < NV; ++n) {
      T* dst = c + m * ldc + n * W;
      vec result = sum[m][n];
      if (accumulate) {
        vec previous;
        std::memcpy(&previous, dst, kBytes);
        result += previous;
      }
      std::memcpy(dst, &result, kBytes);
    }
  }
}

// The last M % MR rows, with a tile of exactly that height (a one-row tile reuses each loaded B
// vector only once, which would make the tail several times slower per row).
template <typename T, int kBytes, int MR, int NV>
inline void gemm_tail(int64_t rows, int64_t K, const T* a, int64_t a_rs, int64_t a_cs, const T* b, int64_t ldb, T* c,
                      int64_t ldc, bool accumulate) {
  if constexpr (MR > 0) {
    if (rows == MR) return gemm_tile<T, kBytes, MR, NV>(K, a, a_rs, a_cs, b, ldb, c, ldc, accumulate);
    gemm_tail<T, kBytes, MR - 1, NV>(rows, K, a, a_rs, a_cs, b, ldb, c, ldc, accumulate);
  }
}

template <typename T, int kBytes, int NV>
inline void gemm_rows(int64_t M, int64_t K, const T* a, int64_t a_rs, int64_t a_cs, const T* b, int64_t ldb, T* c,
                      int64_t ldc, bool accumulate) {
#ifdef __AVX512VL__
  // AVX-512 has 32 vector registers: 8 x 2 accumulators plus the loaded row fit, and the 64-row
  // chunks need no tail tile.
  constexpr int MR = 8;
#else
  constexpr int MR = NV == 1 ? 8 : 6;  // as many accumulators as the 16 vector registers allow
#endif
  int64_t m = 0;
  for (; m + MR <= M; m += MR) {
    gemm_tile<T, kBytes, MR, NV>(K, a + m * a_rs, a_rs, a_cs, b, ldb, c + m * ldc, ldc, accumulate);
  }
  gemm_tail<T, kBytes, MR - 1, NV>(M - m, K, a + m * a_rs, a_rs, a_cs, b, ldb, c + m * ldc, ldc, accumulate);
}

// gemm_rows on a strip of 2 * Vec<T>::width columns, in the widest vectors.
template <typename T>
inline void gemm_strip(int64_t M, int64_t K, const T* a, int64_t a_rs, int64_t a_cs, const T* b, int64_t ldb, T* c,
                       int64_t ldc, bool accumulate) {
  gemm_rows<T, kWideBytes, 64 / kWideBytes>(M, K, a, a_rs, a_cs, b, ldb, c, ldc, accumulate);
}

template <typename T>
inline void gemm(int64_t M, int64_t N, int64_t K, const T* a, int64_t a_rs, int64_t a_cs, const T* b, int64_t ldb,
                 T* c, int64_t ldc, bool accumulate) {
  constexpr int64_t W = Vec<T>::width;
  int64_t n = 0;
  if constexpr (kWideBytes == 64) {
    for (; n + 4 * W <= N; n += 4 * W) gemm_rows<T, 64, 2>(M, K, a, a_rs, a_cs, b + n, ldb, c + n, ldc, accumulate);
  }
  for (; n + 2 * W <= N; n += 2 * W) gemm_strip<T>(M, K, a, a_rs, a_cs, b + n, ldb, c + n, ldc, accumulate);
  for (; n < N; n += W) gemm_rows<T, 32, 1>(M, K, a, a_rs, a_cs, b + n, ldb, c + n, ldc, accumulate);
}

// The W x W block held in rows r[0..W) (W = Vec<T>::width) transposed in registers: afterwards
// r[i] holds what was column i. Three rounds of two-input shuffles (two for double's 4 x 4).
inline void transpose_block(vec_t<float> (&r)[8]) {
  vec_t<float> pairs[8], quads[8];
  for (int i = 0; i < 4; ++i) {  // interleave rows 2i and 2i + 1
    pairs[2 * i] = __builtin_shufflevector(r[2 * i], r[2 * i + 1], 0, 8, 1, 9, 4, 12, 5, 13);
    pairs[2 * i + 1] = __builtin_shufflevector(r[2 * i], r[2 * i + 1], 2, 10, 3, 11, 6, 14, 7, 15);
  }
  for (int h = 0; h < 2; ++h) {  // rows 4h .. 4h + 3: quads[4h + c] holds columns c and c + 4 of them
    const vec_t<float>* p = pairs + 4 * h;
    quads[4 * h] = __builtin_shufflevector(p[0], p[2], 0, 1, 8, 9, 4, 5, 12, 13);
    quads[4 * h + 1] = __builtin_shufflevector(p[0], p[2], 2, 3, 10, 11, 6, 7, 14, 15);
    quads[4 * h + 2] = __builtin_shufflevector(p[1], p[3], 0, 1, 8, 9, 4, 5, 12, 13);
    quads[4 * h + 3] = __builtin_shufflevector(p[1], p[3], 2, 3, 10, 11, 6, 7, 14, 15);
  }
  for (int c = 0; c < 4; ++c) {
    r[c] = __builtin_shufflevector(quads[c], quads[c + 4], 0, 1, 2, 3, 8, 9, 10, 11);
    r[c + 4] = __builtin_shufflevector(quads[c], quads[c + 4], 4, 5, 6, 7, 12, 13, 14, 15);
  }
}

inline void transpose_block(vec_t<double> (&r)[4]) {
  const vec_t<double> even01 = __builtin_shufflevector(r[0], r[1], 0, 4, 2, 6);
  const vec_t<double> odd01 = __builtin_shufflevector(r[0], r[1], 1, 5, 3, 7);
  const vec_t<double> even23 = __builtin_shufflevector(r[2], r[3], 0, 4, 2, 6);
  const vec_t<double> odd23 = __builtin_shufflevector(r[2], r[3], 1, 5, 3, 7);
  r[0] = __builtin_shufflevector(even01, even23, 0, 1, 4, 5);
  r[1] = __builtin_shufflevector(odd01, odd23, 0, 1, 4, 5);
  r[2] = __builtin_shufflevector(even01, even23, 2, 3, 6, 7);
  r[3] = __builtin_shufflevector(odd01, odd23, 2, 3, 6, 7);
}

// dst[t * dst_stride + j] = src[j * src_stride + t] for rows j < n and columns t < cols: whole
// W x W blocks through registers (a vector store per column instead of one store per element),
// the edges element by element.
template <typename T>
inline void transpose_into(const T* src, int64_t src_stride, int64_t n, int64_t cols, T* dst, int64_t dst_stride) {
  constexpr int64_t W = Vec<T>::width;
  const int64_t full_rows = n / W * W, full_cols = cols / W * W;
  for (int64_t j = 0; j < full_rows; j += W) {
    for (int64_t t = 0; t < full_cols; t += W) {
      vec_t<T> block[W];
      for (int64_t i = 0; i < W; ++i) block[i] = vload(src + (j + i) * src_stride + t);
      transpose_block(block);
      for (int64_t i = 0; i < W; ++i) vstore(dst + (t + i) * dst_stride + j, block[i]);
    }
  }
  for (int64_t j = 0; j < n; ++j) {
    for (int64_t t = j < full_rows ? full_cols : 0; t < cols; ++t) dst[t * dst_stride + j] = src[j * src_stride + t];
  }
}

}  // namespace reformer_kernels::cpu
