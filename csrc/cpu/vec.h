// The SIMD vector every CPU kernel computes with, and the per-vector math that must give the
// same bits everywhere: written with GCC/Clang vector extensions rather than intrinsics so that one
// source compiles to AVX2/AVX-512/NEON from the -march the extension is built with, and every
// reduction runs in a fixed order, so the same inputs give the same bits whatever the thread count.
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

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

// Scratch rows are padded to whole vectors so that inner loops need no scalar tail.
inline int64_t round_up(int64_t n, int64_t multiple) { return (n + multiple - 1) / multiple * multiple; }

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

// The W elements at p as a vector of T: loaded as they are when p holds T, else converted one by
// one (which the compiler vectorizes for bf16 and fp16).
template <typename T, typename X>
inline vec_t<T> vload_as(const X* p) {
  if constexpr (std::is_same_v<X, T>) {
    return vload(p);
  } else {
    vec_t<T> v;
    for (int64_t w = 0; w < Vec<T>::width; ++w) v[w] = static_cast<T>(p[w]);
    return v;
  }
}

// x . y over n elements in the accumulation type T, summed in a fixed order (vector lanes, then the
// lanes in order, then the tail): it vectorizes without -ffast-math and gives the same bits on
// every thread count. Low-precision operands are converted a vector at a time.
template <typename T, typename X, typename Y>
inline T dot(const X* x, const Y* y, int64_t n) {
  constexpr int64_t W = Vec<T>::width;
  T sum = 0;
  int64_t t = 0;
  vec_t<T> acc = {};
  for (; t + W <= n; t += W) acc += vload_as<T>(x + t) * vload_as<T>(y + t);
  for (int64_t w = 0; w < W; ++w) sum += acc[w];
  for (; t < n; ++t) sum += static_cast<T>(x[t]) * static_cast<T>(y[t]);
  return sum;
}

}  // namespace reformer_kernels::cpu
