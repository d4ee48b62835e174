// Argument checks and conventions shared by the CPU LSH and local attention ops, so that both
// give the same error for the same mistake in a direct torch.ops call (the Python layer checks
// first).
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <limits>

namespace reformer_kernels::cpu {

inline void check_float_input(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK_TYPE(at::isFloatingType(t.scalar_type()), op, ": ", name, " must be a floating tensor, got ",
                   t.scalar_type(), "; convert it with .float()");
  TORCH_CHECK_VALUE(t.device().is_cpu(), op, ": ", name, " must be on the CPU, got ", t.device());
}

// The shared query/key projections and the values of an LSH op: float tensors (batch, heads, `rows`,
// head_dim) of one shape and one dtype.
inline void check_qk_and_values(const char* op, const at::Tensor& qk, const at::Tensor& v, const char* rows) {
  check_float_input(qk, op, "qk");
  check_float_input(v, op, "v");
  TORCH_CHECK_VALUE(qk.dim() == 4, op, ": qk must have shape (batch, heads, ", rows, ", head_dim), got ", qk.sizes());
  TORCH_CHECK_VALUE(v.sizes() == qk.sizes(), op, ": v must have the shape of qk ", qk.sizes(), ", got ", v.sizes());
  TORCH_CHECK_TYPE(v.scalar_type() == qk.scalar_type(), op, ": v must have the dtype of qk (", qk.scalar_type(),
                   "), got ", v.scalar_type());
}

// The longest sequence the kernels take: positions are compared in 32-bit vector lanes.
inline constexpr int64_t kMaxPositions = std::numeric_limits<int32_t>::max();

inline void check_positions(const char* op, int64_t seq_len) {
  TORCH_CHECK_VALUE(seq_len <= kMaxPositions, op, ": seq_len = ", seq_len,
                    " is more than the kernels' 2^31 - 1 positions; split the sequence");
}

inline void check_chunking(const char* op, int64_t chunk_len, int64_t n_chunks_before, int64_t n_chunks_after) {
  TORCH_CHECK_VALUE(chunk_len >= 1, op, ": chunk_len must be >= 1, got ", chunk_len);
  TORCH_CHECK_VALUE(n_chunks_before >= 0 && n_chunks_after >= 0, op,
                    ": n_chunks_before and n_chunks_after must be >= 0, got ", n_chunks_before, " and ",
                    n_chunks_after);
}

// The keys in each query's window, (n_chunks_before + 1 + n_chunks_after) * chunk_len, after
// checking, before any sum or product is formed, that they are at most kMaxPositions: every
// thread's scratch is sized by them, and a hostile neighbour count would otherwise overflow the
// product or allocate without bound. A window may wrap past the sequence's n_chunks chunks (its
// keys then repeat, as in the reference), so the bound is the longest sequence, not this one.
inline int64_t window_keys(const char* op, int64_t chunk_len, int64_t n_chunks, int64_t n_chunks_before,
                           int64_t n_chunks_after) {
  TORCH_CHECK_VALUE(n_chunks_before <= kMaxPositions && n_chunks_after <= kMaxPositions &&
                        1 + n_chunks_before + n_chunks_after <= kMaxPositions / chunk_len,
                    op, ": n_chunks_before = ", n_chunks_before, " and n_chunks_after = ", n_chunks_after,
                    " with chunk_len = ", chunk_len,
                    " give each query a window of (n_chunks_before + 1 + n_chunks_after) * chunk_len keys, more "
                    "than the kernels' limit of 2^31 - 1 (their longest sequence); use fewer neighbour chunks "
                    "(this sequence has ", n_chunks, " chunks: a wider window only repeats keys)");
  return (1 + n_chunks_before + n_chunks_after) * chunk_len;
}

// The log-sum-exp that the forward ops return and the backward ops take: double for double inputs,
// else float, the precision the kernels compute in.
inline at::ScalarType lse_dtype(const at::Tensor& t) {
  return t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

}  // namespace reformer_kernels::cpu
