// The keys of shared-QK attention (the paper's section 2): a position's key is its query/key
// projection scaled to unit RMS, times 1 / sqrt(d) for the scores; one definition for the LSH
// attention kernels and the cached decoding step, as reference/lsh_attention.py computes it.
#pragma once

#include <cmath>
#include <cstdint>

#include "vec.h"

namespace reformer_kernels::cpu {

inline constexpr double kRmsEps = 1e-6;

// 1 / (RMS(qk) * sqrt(d)) of one row qk[0, d); inv_sqrt_dim = 1 / sqrt(d), computed once by the caller.
template <typename T, typename scalar_t>
T key_scale(const scalar_t* qk, int64_t d, T inv_sqrt_dim) {
  const T squares = dot<T>(qk, qk, d);
  return inv_sqrt_dim / std::sqrt(squares / static_cast<T>(d) + static_cast<T>(kRmsEps));
}

}  // namespace reformer_kernels::cpu
