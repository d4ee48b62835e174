// The masks of the attention ops as the CPU kernels take them: the padding mask (also the hash's
// padding bucket), the attention dropout's Philox key and rate, and the scores a masked
// entry gets. Checked here once so that every op gives the same error for the same bad mask.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <optional>

#include "philox.h"

namespace reformer_kernels::cpu {

// The scores that the masks write (transformers' values; fp16 cannot hold -1e9).
struct MaskValues {
  double forbidden;
  double self;
};

inline MaskValues mask_values(at::ScalarType dtype) {
  if (dtype == at::kHalf) return {-1e4, -1e3};
  return {-1e9, -1e5};
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

// Attention dropout: drawn inside the kernels from Philox (philox.h), keyed by (seed, offset), over
// the chunked scores (B, H, n_chunks, chunk_len, n_keys) of the reference's dropout_mask_shape
// numbered row-major; kept probabilities are scaled by 1 / (1 - dropout_p). Disabled when
// dropout_p = 0.
struct DropoutKeep {
  bool enabled = false;
  int64_t seed = 0, offset = 0;
  uint32_t threshold = 0;
  double scale = 1.0;
};

inline DropoutKeep dropout_keep(double dropout_p, int64_t seed, int64_t offset, const char* op) {
  TORCH_CHECK_VALUE(dropout_p >= 0.0 && dropout_p < 1.0, op, ": dropout_p must lie in [0, 1), got ", dropout_p);
  if (dropout_p == 0.0) return {};
  return {true, seed, offset, keep_threshold(dropout_p), 1.0 / (1.0 - dropout_p)};
}

}  // namespace reformer_kernels::cpu
