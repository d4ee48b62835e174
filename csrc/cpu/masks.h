// The masks of the attention ops as the CPU kernels take them: the padding mask (also the hash's
// padding bucket), the attention-dropout mask drawn by the Python layer, and the scores a masked
// entry gets. Checked here once so that every op gives the same error for the same bad mask.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <optional>
#include <vector>

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

}  // namespace reformer_kernels::cpu
