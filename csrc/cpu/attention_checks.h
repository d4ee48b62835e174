// Argument checks and conventions shared by the CPU LSH and local attention ops, so that both
// give the same error for the same mistake in a direct torch.ops call (the Python layer checks
// first).
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <cstdint>

namespace reformer_kernels::cpu {

inline void check_float_input(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK_TYPE(at::isFloatingType(t.scalar_type()), op, ": ", name, " must be a floating tensor, got ",
                   t.scalar_type(), "; convert it with .float()");
  TORCH_CHECK_VALUE(t.device().is_cpu(), op, ": ", name, " must be on the CPU, got ", t.device());
}

inline void check_chunking(const char* op, int64_t chunk_len, int64_t n_chunks_before, int64_t n_chunks_after) {
  TORCH_CHECK_VALUE(chunk_len >= 1, op, ": chunk_len must be >= 1, got ", chunk_len);
  TORCH_CHECK_VALUE(n_chunks_before >= 0 && n_chunks_after >= 0, op,
                    ": n_chunks_before and n_chunks_after must be >= 0, got ", n_chunks_before, " and ",
                    n_chunks_after);
}

// The log-sum-exp that the forward ops return and the backward ops take: double for double inputs,
// else float, the precision the kernels compute in.
inline at::ScalarType lse_dtype(const at::Tensor& t) {
  return t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

}  // namespace reformer_kernels::cpu
