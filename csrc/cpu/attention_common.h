// Building blocks shared by the CPU hashing, LSH attention and local attention kernels: a small
// register-blocked GEMM, a vectorized exp, and the per-chunk attention forward/backward that both
// attention kernels run on rows they gathered themselves.
//
// Everything is written with GCC/Clang vector extensions so that it compiles to AVX2/AVX-512/NEON
// from the -march the extension is built with, and every reduction runs in a fixed order, so the
// same inputs give the same bits whatever the thread count.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

namespace reformer_kernels::cpu {

// Low-precision inputs are converted to float while gathering, so every kernel computes in float
// (or double for double inputs).
template <typename scalar_t>
using acc_type = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

template <typename T>
struct Vec {
  static constexpr int64_t width = 32 / sizeof(T);
  typedef T type __attribute__((vector_size(32)));
  // Integers as wide as T, so that comparisons of them select between vectors of T.
  using lane_int = std::conditional_t<sizeof(T) == 4, int32_t, int64_t>;
  typedef lane_int int_type __attribute__((vector_size(32)));
};

template <typename T>
using vec_t = typename Vec<T>::type;
template <typename T>
using ivec_t = typename Vec<T>::int_type;
template <typename T>
using lane_int_t = typename Vec<T>::lane_int;

template <typename T>
inline vec_t<T> vload(const T* p) {
  vec_t<T> v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

template <typename T>
inline void vstore(T* p, vec_t<T> v) {
  std::memcpy(p, &v, sizeof(v));
}

template <typename T>
inline vec_t<T> vsplat(T x) {
  return x - vec_t<T>{};
}

template <typename T>
inline ivec_t<T> vload_int(const lane_int_t<T>* p) {
  ivec_t<T> v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

// Asks the L2 cache for the n elements at row (a hint: no effect on results), to read them or,
// with kForWrite, to update them. Not L1: rows asked for one chunk ahead would be evicted again by
// the chunk's own ~100-200 KB of scratch before use.
template <bool kForWrite = false, typename T>
inline void prefetch_row(const T* row, int64_t n) {
  const char* bytes = reinterpret_cast<const char*>(row);
  for (int64_t offset = 0; offset < n * static_cast<int64_t>(sizeof(T)); offset += 64) {
    __builtin_prefetch(bytes + offset, kForWrite ? 1 : 0, 2);
  }
}

inline int64_t round_up(int64_t n, int64_t multiple) { return (n + multiple - 1) / multiple * multiple; }

// a mod m in [0, m), for negative a too: wraps neighbour chunks around the sequence and places
// neighbour u of a key window in slot u mod window.
inline int64_t wrap(int64_t a, int64_t m) { return (a % m + m) % m; }

// C (M x N, row stride ldc) = or += A (M x K) * B (K x N, row stride ldb), where A's element (m, k)
// sits at a[m * a_rs + k * a_cs], so A can be read transposed in place. N must be a multiple of
// Vec<T>::width (callers pad their scratch rows); M and K are arbitrary.
template <typename T, int MR, int NV>
inline void gemm_tile(int64_t K, const T* a, int64_t a_rs, int64_t a_cs, const T* b, int64_t ldb, T* c, int64_t ldc,
                      bool accumulate) {
  constexpr int64_t W = Vec<T>::width;
  vec_t<T> sum[MR][NV] = {};
  for (int64_t k = 0; k < K; ++k) {
    vec_t<T> row[NV];
    for (int n = 0; n < NV; ++n) row[n] = vload(b + k * ldb + n * W);
    for (int m = 0; m < MR; ++m) {
      const vec_t<T> scale = vsplat(a[m * a_rs + k * a_cs]);
      for (int n = 0; n < NV; ++n) sum[m][n] += scale * row[n];
    }
  }
  for (int m = 0; m < MR; ++m) {
    for (int n = 0; n < NV; ++n) {
      T* dst = c + m * ldc + n * W;
      vstore(dst, accumulate ? vload(dst) + sum[m][n] : sum[m][n]);
    }
  }
}

// The last M % MR rows, with a tile of exactly that height (a one-row tile reuses each loaded B
// vector only once, which would make the tail several times slower per row).
template <typename T, int MR, int NV>
inline void gemm_tail(int64_t rows, int64_t K, const T* a, int64_t a_rs, int64_t a_cs, const T* b, int64_t ldb, T* c,
                      int64_t ldc, bool accumulate) {
  if constexpr (MR > 0) {
    if (rows == MR) return gemm_tile<T, MR, NV>(K, a, a_rs, a_cs, b, ldb, c, ldc, accumulate);
    gemm_tail<T, MR - 1, NV>(rows, K, a, a_rs, a_cs, b, ldb, c, ldc, accumulate);
  }
}

template <typename T, int NV>
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
  for (; m + MR <= M; m += MR) gemm_tile<T, MR, NV>(K, a + m * a_rs, a_rs, a_cs, b, ldb, c + m * ldc, ldc, accumulate);
  gemm_tail<T, MR - 1, NV>(M - m, K, a + m * a_rs, a_rs, a_cs, b, ldb, c + m * ldc, ldc, accumulate);
}

template <typename T>
inline void gemm(int64_t M, int64_t N, int64_t K, const T* a, int64_t a_rs, int64_t a_cs, const T* b, int64_t ldb,
                 T* c, int64_t ldc, bool accumulate) {
  constexpr int64_t W = Vec<T>::width;
  int64_t n = 0;
  for (; n + 2 * W <= N; n += 2 * W) gemm_rows<T, 2>(M, K, a, a_rs, a_cs, b + n, ldb, c + n, ldc, accumulate);
  for (; n < N; n += W) gemm_rows<T, 1>(M, K, a, a_rs, a_cs, b + n, ldb, c + n, ldc, accumulate);
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

// exp for float vectors: 2^n * exp(r) with |r| <= ln2/2 and a degree-7 Taylor polynomial (error
// below half an ulp before rounding); inputs under the float range give exactly 0, as std::exp.
inline vec_t<float> vexp(vec_t<float> x) {
  typedef int32_t ivec __attribute__((vector_size(32)));
  const vec_t<float> lo = vsplat(-87.0f);
  const auto underflow = x < lo;
  x = underflow ? lo : x;
  x = x > vsplat(88.0f) ? vsplat(88.0f) : x;
  // Adding 1.5 * 2^23 rounds to the nearest integer in the float adder itself.
  const vec_t<float> magic = vsplat(12582912.0f);
  const vec_t<float> n = (x * vsplat(1.44269504088896341f) + magic) - magic;
  const vec_t<float> r = (x - n * vsplat(0.693145751953125f)) - n * vsplat(1.428606765330187e-06f);
  vec_t<float> p = vsplat(1.0f / 5040.0f);
  p = p * r + vsplat(1.0f / 720.0f);
  p = p * r + vsplat(1.0f / 120.0f);
  p = p * r + vsplat(1.0f / 24.0f);
  p = p * r + vsplat(1.0f / 6.0f);
  p = p * r + vsplat(0.5f);
  p = p * r + vsplat(1.0f);
  p = p * r + vsplat(1.0f);
  const ivec bits = (__builtin_convertvector(n, ivec) + 127) << 23;
  vec_t<float> scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  const vec_t<float> result = p * scale;
  return underflow ? vsplat(0.0f) : result;
}

// row[j] = exp(row[j] - shift) for the vector-wide column blocks starting at columns[0..n_blocks);
// returns their sum, added up in a fixed order.
inline float exp_shifted(float* row, const int64_t* columns, int64_t n_blocks, float shift) {
  constexpr int64_t W = Vec<float>::width;
  vec_t<float> total = {};
  for (int64_t b = 0; b < n_blocks; ++b) {
    float* x = row + columns[b];
    const vec_t<float> e = vexp(vload(x) - vsplat(shift));
    vstore(x, e);
    total += e;
  }
  float sum = 0;
  for (int64_t w = 0; w < W; ++w) sum += total[w];
  return sum;
}

// Double is the precision of the gradient checks, so it keeps the correctly rounded libm exp.
inline double exp_shifted(double* row, const int64_t* columns, int64_t n_blocks, double shift) {
  double sum = 0;
  for (int64_t b = 0; b < n_blocks; ++b) {
    for (int64_t j = columns[b]; j < columns[b] + Vec<double>::width; ++j) {
      row[j] = std::exp(row[j] - shift);
      sum += row[j];
    }
  }
  return sum;
}

// x . y over n elements in the accumulation type T, summed in a fixed order (vector lanes, then the
// lanes in order, then the tail): it vectorizes without -ffast-math and gives the same bits on
// every thread count. Low-precision operands take the scalar loop (they are converted one by one).
template <typename T, typename X, typename Y>
inline T dot(const X* x, const Y* y, int64_t n) {
  T sum = 0;
  int64_t t = 0;
  if constexpr (std::is_same_v<X, T> && std::is_same_v<Y, T>) {
    constexpr int64_t W = Vec<T>::width;
    vec_t<T> acc = {};
    for (; t + W <= n; t += W) acc += vload(x + t) * vload(y + t);
    for (int64_t w = 0; w < W; ++w) sum += acc[w];
  }
  for (; t < n; ++t) sum += static_cast<T>(x[t]) * static_cast<T>(y[t]);
  return sum;
}

template <typename T>
inline T row_max(const T* row, const int64_t* columns, int64_t n_blocks) {
  constexpr int64_t W = Vec<T>::width;
  vec_t<T> best = vsplat(-std::numeric_limits<T>::infinity());
  for (int64_t b = 0; b < n_blocks; ++b) {
    const vec_t<T> x = vload(row + columns[b]);
    best = x > best ? x : best;
  }
  T result = best[0];
  for (int64_t w = 1; w < W; ++w) result = std::max(result, best[w]);
  return result;
}

// A (B, H, L, d) tensor read (or, with element_t = scalar_t, written) in place, row by row: rows
// must be contiguous but the other strides are followed, so the head-split views of (B, L, H * d)
// projections need no copy, and outputs laid out like them merge back into (B, L, H * d) without one.
template <typename scalar_t, typename element_t = const scalar_t>
struct RowView {
  element_t* data;
  int64_t heads, batch_stride, head_stride, row_stride;

  // The first row of (batch, head) row `bh` = batch * heads + head.
  element_t* rows(int64_t bh) const { return data + (bh / heads) * batch_stride + (bh % heads) * head_stride; }
};

inline at::Tensor with_contiguous_rows(const at::Tensor& t) {
  return t.size(-1) <= 1 || t.stride(-1) == 1 ? t : t.contiguous();
}

template <typename scalar_t>
RowView<scalar_t> row_view(const at::Tensor& t) {
  return {t.data_ptr<scalar_t>(), t.size(1), t.stride(0), t.stride(1), t.stride(2)};
}

template <typename scalar_t>
RowView<scalar_t, scalar_t> output_rows(at::Tensor& t) {
  return {t.data_ptr<scalar_t>(), t.size(1), t.stride(0), t.stride(1), t.stride(2)};
}

// An output shaped and strided like `like` where that is dense (the head-split view of a
// (B, L, H * d) projection: the output then merges back into (B, L, H * d) as a view), else
// contiguous. The kernels write it through output_rows.
inline at::Tensor empty_like_rows(const at::Tensor& like) {
  return at::empty_like(like, at::MemoryFormat::Preserve);
}

// The scores that the masks write (transformers' values; fp16 cannot hold -1e9).
struct MaskValues {
  double forbidden;
  double self;
};

inline MaskValues mask_values(at::ScalarType dtype) {
  if (dtype == at::kHalf) return {-1e4, -1e3};
  return {-1e9, -1e5};
}

inline void check_float_input(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK_TYPE(at::isFloatingType(t.scalar_type()), op, ": ", name, " must be a floating tensor, got ",
                   t.scalar_type(), "; convert it with .float()");
  TORCH_CHECK_VALUE(t.device().is_cpu(), op, ": ", name, " must be on the CPU, got ", t.device());
}

// attention_mask (B, L) of any dtype (0 = padding) as contiguous bytes, or an undefined tensor.
inline at::Tensor key_padding(const std::optional<at::Tensor>& attention_mask, int64_t batch, int64_t seq_len,
                              const char* op) {
  if (!attention_mask.has_value() || !attention_mask->defined()) return {};
  const at::Tensor& mask = *attention_mask;
  TORCH_CHECK_VALUE(mask.dim() == 2 && mask.size(0) == batch && mask.size(1) == seq_len, op,
                    ": attention_mask must have shape (batch, seq_len) = (", batch, ", ", seq_len, "), got ",
                    mask.sizes());
  TORCH_CHECK_VALUE(mask.device().is_cpu(), op, ": attention_mask must be on the CPU, got ", mask.device());
  return mask.ne(0).to(at::kByte).contiguous();
}

// Attention dropout: the mask as a contiguous bool (B, H, n_chunks, chunk_len, n_keys) tensor, True
// where a probability is kept (the chunked score layout of the reference's dropout_mask_shape),
// and the kept probabilities' scale 1 / (1 - dropout_p); an undefined mask without dropout.
struct DropoutKeep {
  at::Tensor mask;
  double scale = 1.0;
  const bool* data() const { return mask.defined() ? mask.data_ptr<bool>() : nullptr; }
};

inline DropoutKeep dropout_keep(const std::optional<at::Tensor>& dropout_mask, double dropout_p,
                                std::vector<int64_t> shape, const char* op) {
  if (!dropout_mask.has_value() || !dropout_mask->defined()) return {};
  const at::Tensor& mask = *dropout_mask;
  TORCH_CHECK_VALUE(mask.sizes() == shape, op, ": dropout_mask must have the chunked score shape ", at::IntArrayRef(shape),
                    " (reference.dropout_mask_shape), got ", mask.sizes());
  TORCH_CHECK_TYPE(mask.scalar_type() == at::kBool, op,
                   ": dropout_mask must be bool (True where a probability is kept), got ", mask.scalar_type());
  TORCH_CHECK_VALUE(mask.device().is_cpu(), op, ": dropout_mask must be on the CPU, got ", mask.device());
  TORCH_CHECK_VALUE(dropout_p >= 0.0 && dropout_p < 1.0, op, ": dropout_p must lie in [0, 1), got ", dropout_p);
  return {mask.contiguous(), 1.0 / (1.0 - dropout_p)};
}

// Scratch for attending one chunk of queries to its window of keys, all rows gathered by the
// caller. Row strides are padded to the vector width with zeros (vectors) or -inf (scores), so
// the inner loops never need a scalar tail.
template <typename T>
struct ChunkAttention {
  int64_t head_dim, dim_stride, key_stride;
  std::vector<T> q, k, kt, v, vt, scores, out, grad_out, grad_scores, grad_q, grad_k, grad_v;
  std::vector<T> lse, delta;
  // The forward's lse in double: near the -1e5 self-mask score a float lse is rounded to steps of
  // 2^-7, too coarse for weighing hash rounds against each other (see the LSH kernel).
  std::vector<double> lse_wide;
  // With attention dropout: each probability's factor (0, or 1 / (1 - p) where kept), in the
  // scores' layout; the padding columns stay 0.
  std::vector<T> keep;
  // Positions and padding flags (-1 = forbidden key) as lane-wide integers for vector compares.
  std::vector<lane_int_t<T>> query_pos, key_pos, key_forbidden;

  // Row stride of the key-indexed buffers: the key count rounded up to whole vectors, plus one
  // vector when that is a multiple of 256 bytes, so that the columns of kt and vt (written one
  // vector of keys at a time, a store per row) do not all fall into the same few cache sets.
  static int64_t padded_key_stride(int64_t max_keys) {
    const int64_t stride = round_up(max_keys, Vec<T>::width);
    return (stride * static_cast<int64_t>(sizeof(T))) % 256 == 0 ? stride + Vec<T>::width : stride;
  }

  ChunkAttention(int64_t max_queries, int64_t max_keys, int64_t head_dim, bool backward, bool dropout)
      : head_dim(head_dim),
        dim_stride(round_up(head_dim, Vec<T>::width)),
        key_stride(padded_key_stride(max_keys)),
        q(max_queries * dim_stride, 0),
        k(key_stride * dim_stride, 0),
        kt(head_dim * key_stride, 0),
        v(key_stride * dim_stride, 0),
        vt(backward ? head_dim * key_stride : 0, 0),
        scores(max_queries * key_stride),
        out(backward ? 0 : max_queries * dim_stride),
        grad_out(backward ? max_queries * dim_stride : 0, 0),
        grad_scores(backward ? max_queries * key_stride : 0),
        grad_q(backward ? max_queries * dim_stride : 0),
        grad_k(backward ? key_stride * dim_stride : 0),
        grad_v(backward ? key_stride * dim_stride : 0),
        lse(max_queries),
        delta(backward ? max_queries : 0),
        lse_wide(backward ? 0 : max_queries),
        keep(dropout ? max_queries * key_stride : 0, 0),
        query_pos(max_queries),
        key_pos(key_stride, -1),
        key_forbidden(key_stride, -1) {}

  // Key j's row (already scaled) into k, and its value row into v; `forbidden` marks padding keys.
  // The transposed copies that the score products read are made by transpose_keys, once a run
  // of keys is set.
  template <typename S>
  void set_key(int64_t j, int64_t position, bool forbidden, const S* key, T key_scale, const S* value) {
    key_pos[j] = static_cast<lane_int_t<T>>(position);
    key_forbidden[j] = forbidden ? -1 : 0;
    T* k_row = k.data() + j * dim_stride;
    for (int64_t t = 0; t < head_dim; ++t) k_row[t] = static_cast<T>(key[t]) * key_scale;
    T* v_row = v.data() + j * dim_stride;
    for (int64_t t = 0; t < head_dim; ++t) v_row[t] = static_cast<T>(value[t]);
  }

  // kt (and, for the backward, vt) columns j0 .. j0 + n from the rows that set_key wrote.
  void transpose_keys(int64_t j0, int64_t n) {
    transpose_into(k.data() + j0 * dim_stride, dim_stride, n, head_dim, kt.data() + j0, key_stride);
    if (!vt.empty()) transpose_into(v.data() + j0 * dim_stride, dim_stride, n, head_dim, vt.data() + j0, key_stride);
  }

  // Query i's keep factors from its row of the caller's dropout mask, whose columns run over the
  // window in neighbour order (chunk - before first); here neighbour u sits in slot u mod window.
  void set_keep(int64_t i, const bool* mask_row, T scale, int64_t chunk, int64_t before, int64_t window,
                int64_t chunk_len) {
    T* dst = keep.data() + i * key_stride;
    for (int64_t slot = 0; slot < window; ++slot) {
      const bool* src = mask_row + wrap(slot - chunk + before, window) * chunk_len;
      for (int64_t c = 0; c < chunk_len; ++c) dst[slot * chunk_len + c] = src[c] ? scale : T(0);
    }
  }

  template <typename S>
  void set_query(int64_t i, int64_t position, const S* query) {
    query_pos[i] = static_cast<lane_int_t<T>>(position);
    T* row = q.data() + i * dim_stride;
    for (int64_t t = 0; t < head_dim; ++t) row[t] = static_cast<T>(query[t]);
  }

  // Lanes of keys j..j+W whose score against query i is forbidden (padding or, if causal, the
  // future); `self` receives the lanes where the key is the query's own position.
  ivec_t<T> forbidden_lanes(int64_t i, int64_t j, bool causal, ivec_t<T>& self) const {
    const ivec_t<T> qp = query_pos[i] - ivec_t<T>{};
    const ivec_t<T> kp = vload_int<T>(key_pos.data() + j);
    self = qp == kp;
    const ivec_t<T> forbidden = vload_int<T>(key_forbidden.data() + j);
    return causal ? (forbidden | (qp < kp)) : forbidden;
  }

  // Causal skipping. Queries are processed in tiles of kQueryTile rows and keys in blocks of one
  // vector; block b is computed for tile t only if t >= first_tile[b], i.e. if some key of the
  // block is not later than the latest query of tiles 0..t. A skipped block holds only keys that
  // the causal mask forbids to every query of the tile, and with the self mask on, every query
  // also sees its own position at >= the self-mask score (-1e5, -1e3 in fp16) while a forbidden
  // score is -1e9 (-1e4): exp(forbidden - max) is exactly 0, so a skipped block would have added
  // exactly nothing (no probability, no gradient). Using the running maximum of the tiles makes
  // the computed tiles of every block a suffix, which the key-side products of the backward
  // need; callers that gather queries and keys in position order make the skipped share large
  // (about half of a window), any order is correct.
  static constexpr int64_t kQueryTile = 8;
  std::vector<int64_t> first_tile;
  // Per query tile, the first column of each block it computes, and how many there are.
  std::vector<int64_t> tile_columns, tile_blocks;

  void plan_blocks(int64_t n_queries, int64_t n_keys, bool skip) {
    constexpr int64_t W = Vec<T>::width;
    const int64_t n_tiles = (n_queries + kQueryTile - 1) / kQueryTile, n_blocks = round_up(n_keys, W) / W;
    first_tile.assign(n_blocks, 0);
    if (skip) {
      std::vector<lane_int_t<T>> latest(n_tiles);
      lane_int_t<T> running = std::numeric_limits<lane_int_t<T>>::min();
      for (int64_t t = 0; t < n_tiles; ++t) {
        for (int64_t i = t * kQueryTile; i < std::min(n_queries, (t + 1) * kQueryTile); ++i)
          running = std::max(running, query_pos[i]);
        latest[t] = running;
      }
      for (int64_t b = 0; b < n_blocks; ++b) {
        lane_int_t<T> earliest = std::numeric_limits<lane_int_t<T>>::max();
        for (int64_t j = b * W; j < std::min(n_keys, (b + 1) * W); ++j) earliest = std::min(earliest, key_pos[j]);
        int64_t t = 0;
        while (t < n_tiles && latest[t] < earliest) ++t;
        first_tile[b] = t;
      }
    }
    tile_columns.resize(n_tiles * n_blocks);
    tile_blocks.assign(n_tiles, 0);
    for (int64_t t = 0; t < n_tiles; ++t) {
      for (int64_t b = 0; b < n_blocks; ++b) {
        if (first_tile[b] <= t) tile_columns[t * n_blocks + tile_blocks[t]++] = b * W;
      }
    }
  }

  // f(first column, column count) for each run of adjacent blocks that tile t computes.
  template <typename F>
  void for_runs(int64_t t, F f) const {
    const int64_t n_blocks = static_cast<int64_t>(first_tile.size());
    const int64_t* columns = tile_columns.data() + t * n_blocks;
    for (int64_t b = 0; b < tile_blocks[t];) {
      int64_t e = b + 1;
      while (e < tile_blocks[t] && columns[e] == columns[e - 1] + Vec<T>::width) ++e;
      f(columns[b], columns[e - 1] + Vec<T>::width - columns[b]);
      b = e;
    }
  }

  // Scores of tile t's rows (q k^T) in the blocks it computes, with the masks written in; columns
  // past n_keys get -inf so they vanish in exp.
  void masked_scores(int64_t t, int64_t rows, int64_t n_keys, bool causal, bool self_mask, MaskValues values) {
    const int64_t i0 = t * kQueryTile;
    for_runs(t, [&](int64_t c0, int64_t width) {
      gemm<T>(rows, width, head_dim, q.data() + i0 * dim_stride, dim_stride, 1, kt.data() + c0, key_stride,
              scores.data() + i0 * key_stride + c0, key_stride, false);
    });
    const vec_t<T> forbidden = vsplat(static_cast<T>(values.forbidden)), self = vsplat(static_cast<T>(values.self));
    const int64_t n_blocks = static_cast<int64_t>(first_tile.size()), padded_keys = n_blocks * Vec<T>::width;
    const int64_t* columns = tile_columns.data() + t * n_blocks;
    for (int64_t i = i0; i < i0 + rows; ++i) {
      T* row = scores.data() + i * key_stride;
      for (int64_t b = 0; b < tile_blocks[t]; ++b) {
        const int64_t j = columns[b];
        ivec_t<T> is_self;
        const ivec_t<T> drop = forbidden_lanes(i, j, causal, is_self);
        vec_t<T> x = drop ? forbidden : vload(row + j);
        if (self_mask) x = is_self ? self : x;
        vstore(row + j, x);
      }
      if (first_tile.back() <= t) {
        for (int64_t j = n_keys; j < padded_keys; ++j) row[j] = -std::numeric_limits<T>::infinity();
      }
    }
  }

  // rows of tile t (rows x K, stride key_stride, the blocks it computes) times B's matching rows
  // (stride ldb) into c (rows x dim_stride).
  void tile_times(int64_t t, int64_t rows, const T* a, const T* b, T* c) const {
    bool accumulate = false;
    for_runs(t, [&](int64_t c0, int64_t width) {
      gemm<T>(rows, dim_stride, width, a + c0, key_stride, 1, b + c0 * dim_stride, dim_stride, c, dim_stride, accumulate);
      accumulate = true;
    });
  }

  // a^T b for the keys of every block: block b's rows sum over the queries of the tiles that
  // computed it, a suffix; a block no tile computed gets zero rows (or, when accumulating into c,
  // is left as it is).
  void keys_times(int64_t n_queries, int64_t n_keys, const T* a, const T* b, T* c, bool accumulate) const {
    constexpr int64_t W = Vec<T>::width;
    for (int64_t blk = 0; blk < static_cast<int64_t>(first_tile.size()); ++blk) {
      const int64_t j0 = blk * W, rows = std::min(W, n_keys - j0), i0 = first_tile[blk] * kQueryTile;
      if (i0 >= n_queries) {
        if (!accumulate) std::fill(c + j0 * dim_stride, c + (j0 + rows) * dim_stride, T(0));
        continue;
      }
      gemm<T>(rows, dim_stride, n_queries - i0, a + i0 * key_stride + j0, 1, key_stride, b + i0 * dim_stride, dim_stride,
              c + j0 * dim_stride, dim_stride, accumulate);
    }
  }

  // Whether key j's gradient rows (grad_k, grad_v) can be nonzero after backward.
  bool key_used(int64_t j, int64_t n_queries) const {
    return first_tile[j / Vec<T>::width] * kQueryTile < n_queries;
  }

  // Plans the blocks (causal skipping with the causal and the self mask on), then per query tile t
  // (rows i0 .. i0 + rows) writes its masked scores and calls body(t, i0, rows, its block columns).
  template <typename F>
  void for_tiles(int64_t n_queries, int64_t n_keys, bool causal, bool self_mask, MaskValues values, F body) {
    plan_blocks(n_queries, n_keys, causal && self_mask);
    const int64_t n_blocks = static_cast<int64_t>(first_tile.size());
    for (int64_t t = 0; t * kQueryTile < n_queries; ++t) {
      const int64_t i0 = t * kQueryTile, rows = std::min(kQueryTile, n_queries - i0);
      masked_scores(t, rows, n_keys, causal, self_mask, values);
      body(t, i0, rows, tile_columns.data() + t * n_blocks);
    }
  }

  // out (n_queries x head_dim, stride dim_stride) and lse of the chunk (lse before any dropout).
  void forward(int64_t n_queries, int64_t n_keys, bool causal, bool self_mask, MaskValues values) {
    for_tiles(n_queries, n_keys, causal, self_mask, values, [&](int64_t t, int64_t i0, int64_t rows, const int64_t* columns) {
      for (int64_t i = i0; i < i0 + rows; ++i) {
        T* row = scores.data() + i * key_stride;
        const T shift = row_max(row, columns, tile_blocks[t]);
        const T total = exp_shifted(row, columns, tile_blocks[t], shift);
        lse_wide[i] = static_cast<double>(shift) + std::log(static_cast<double>(total));
        lse[i] = static_cast<T>(lse_wide[i]);
        const vec_t<T> inverse = vsplat(T(1) / total);
        const T* k_row = keep.empty() ? nullptr : keep.data() + i * key_stride;
        for (int64_t b = 0; b < tile_blocks[t]; ++b) {
          const int64_t j = columns[b];
          const vec_t<T> p = vload(row + j) * inverse;
          vstore(row + j, k_row == nullptr ? p : p * vload(k_row + j));
        }
      }
      tile_times(t, rows, scores.data() + i0 * key_stride, v.data(), out.data() + i0 * dim_stride);
    });
  }

  // Given lse[i], grad_out (rows dO_i) and delta[i] = dO_i . o_i - dlse_i, fills grad_q (n_queries
  // rows), grad_k and grad_v (n_keys rows; with accumulate_keys, adds to what those rows hold, so
  // that a caller can sum a key's gradient over the windows it is part of before writing it out)
  // for this chunk: FlashAttention's backward, recomputing
  // the probabilities P from the scores and lse. With dropout factors K (0, or 1 / (1 - p) where
  // kept) the output used P * K: dS = P * (K * dO V^T - delta) and grad_v = (P * K)^T dO.
  void backward(int64_t n_queries, int64_t n_keys, bool causal, bool self_mask, MaskValues values,
                bool accumulate_keys = false) {
    for_tiles(n_queries, n_keys, causal, self_mask, values, [&](int64_t t, int64_t i0, int64_t rows, const int64_t* columns) {
      for (int64_t i = i0; i < i0 + rows; ++i) {
        T* row = scores.data() + i * key_stride;
        const T total = exp_shifted(row, columns, tile_blocks[t], lse[i]);
        // Without the self mask a query may see no key: then lse = -1e9 + log(n) is -1e9 in float,
        // each exp(s - lse) is 1, and grad_v would get the sum of dO where the forward took the mean,
        // so normalize by the row's sum as the forward's softmax does. With it (LSH) every query sees
        // itself, and the rounding of lse near -1e5 is left in P: it cancels against the same rounding
        // in the round weights exp(lse_r - lse_all). Without the self mask no block is skipped.
        if (!self_mask) {
          const vec_t<T> inverse = vsplat(T(1) / total);
          for (int64_t b = 0; b < tile_blocks[t]; ++b) vstore(row + columns[b], vload(row + columns[b]) * inverse);
        }
      }
      // dP = dO V^T, then dS = P * (K * dP - delta) where the score was not overwritten by a mask
      for_runs(t, [&](int64_t c0, int64_t width) {
        gemm<T>(rows, width, head_dim, grad_out.data() + i0 * dim_stride, dim_stride, 1, vt.data() + c0, key_stride,
                grad_scores.data() + i0 * key_stride + c0, key_stride, false);
      });
      for (int64_t i = i0; i < i0 + rows; ++i) {
        T* p = scores.data() + i * key_stride;
        T* ds = grad_scores.data() + i * key_stride;
        const T* k_row = keep.empty() ? nullptr : keep.data() + i * key_stride;
        const vec_t<T> d_i = vsplat(delta[i]);
        for (int64_t b = 0; b < tile_blocks[t]; ++b) {
          const int64_t j = columns[b];
          ivec_t<T> is_self;
          ivec_t<T> masked = forbidden_lanes(i, j, causal, is_self);
          if (self_mask) masked |= is_self;
          const vec_t<T> dp = k_row == nullptr ? vload(ds + j) : vload(ds + j) * vload(k_row + j);
          const vec_t<T> grad = vload(p + j) * (dp - d_i);
          vstore(ds + j, masked ? vsplat(T(0)) : grad);
          if (k_row != nullptr) vstore(p + j, vload(p + j) * vload(k_row + j));
        }
      }
      // grad_q = dS K
      tile_times(t, rows, grad_scores.data() + i0 * key_stride, k.data(), grad_q.data() + i0 * dim_stride);
    });
    // grad_v = (P * K)^T dO, grad_k = dS^T Q
    keys_times(n_queries, n_keys, scores.data(), grad_out.data(), grad_v.data(), accumulate_keys);
    keys_times(n_queries, n_keys, grad_scores.data(), q.data(), grad_k.data(), accumulate_keys);
  }
};

// Chunk `chunk`'s keep factors for its first n_queries queries, from a dropout mask laid out
// (rows, n_chunks, chunk_len, window * chunk_len) as the reference's dropout_mask_shape; nothing
// without a mask.
template <typename T>
void set_chunk_keep(ChunkAttention<T>& attn, const DropoutKeep& keep, int64_t row, int64_t chunk, int64_t n_queries,
                    int64_t n_chunks, int64_t chunk_len, int64_t before, int64_t window) {
  const bool* mask = keep.data();
  if (mask == nullptr) return;
  const int64_t n_keys = window * chunk_len;
  const bool* rows = mask + (row * n_chunks + chunk) * chunk_len * n_keys;
  const T scale = static_cast<T>(keep.scale);
  for (int64_t i = 0; i < n_queries; ++i) attn.set_keep(i, rows + i * n_keys, scale, chunk, before, window, chunk_len);
}

}  // namespace reformer_kernels::cpu
