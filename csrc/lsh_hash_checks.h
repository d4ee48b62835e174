// Argument checks of the lsh_hash op, shared by its CPU and CUDA kernels so that a direct
// torch.ops call gets the same clear error on every device (the Python layer checks first).
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

namespace reformer_kernels {

// Returns the rotation half-width sum(n_buckets) / 2 after checking shapes, dtypes and factors.
inline int64_t check_lsh_hash_inputs(const at::Tensor& vectors, const at::Tensor& rotations, at::IntArrayRef n_buckets,
                                     const char* op) {
  TORCH_CHECK_TYPE(at::isFloatingType(vectors.scalar_type()), op, ": vectors must be a floating tensor, got ",
                   vectors.scalar_type(), "; convert it with .float()");
  TORCH_CHECK_VALUE(vectors.dim() == 4, op, ": vectors must have shape (batch, heads, seq_len, head_dim), got ",
                    vectors.sizes());
  TORCH_CHECK_VALUE(rotations.dim() == 4, op,
                    ": rotations must have shape (heads, head_dim, n_hashes, rotation_size / 2), got ",
                    rotations.sizes());
  TORCH_CHECK_TYPE(rotations.scalar_type() == vectors.scalar_type(), op,
                   ": rotations must have the dtype of vectors (", vectors.scalar_type(), "), got ",
                   rotations.scalar_type());
  TORCH_CHECK_VALUE(rotations.device() == vectors.device(), op, ": rotations are on ", rotations.device(),
                    " but vectors on ", vectors.device());
  TORCH_CHECK_VALUE(rotations.size(0) == vectors.size(1) && rotations.size(1) == vectors.size(3), op, ": rotations ",
                    rotations.sizes(), " must start with (heads, head_dim) = (", vectors.size(1), ", ",
                    vectors.size(3), ")");
  TORCH_CHECK_VALUE(!n_buckets.empty(), op, ": n_buckets must name at least one bucket factor");
  int64_t half_width = 0, product = 1;
  for (int64_t f : n_buckets) {
    TORCH_CHECK_VALUE(f >= 2 && f % 2 == 0, op, ": every bucket factor must be even and >= 2, got ", n_buckets);
    // Bucket ids are computed in 32-bit lanes.
    TORCH_CHECK_VALUE(product <= (int64_t{1} << 30) / f, op, ": n_buckets ", n_buckets,
                      " make more than 2^30 buckets; use fewer or smaller factors");
    product *= f;
    half_width += f / 2;
  }
  TORCH_CHECK_VALUE(rotations.size(3) == half_width, op, ": rotations.size(3) = ", rotations.size(3),
                    " must be sum(n_buckets) / 2 = ", half_width, " for n_buckets ", n_buckets);
  TORCH_CHECK_VALUE(rotations.size(2) >= 1, op, ": rotations must hold at least one hash round");
  return half_width;
}

// num_keys of the hash: n_hashes rounds of prod(n_buckets) ids, one more with a padding bucket.
inline int64_t lsh_num_keys(const at::Tensor& rotations, at::IntArrayRef n_buckets, bool padding) {
  int64_t per_round = 1;
  for (int64_t f : n_buckets) per_round *= f;
  return rotations.size(2) * (per_round + (padding ? 1 : 0));
}

}  // namespace reformer_kernels
