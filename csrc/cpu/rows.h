// Row access to (B, H, L, d) tensors for every CPU kernel that takes or returns heads (hashing,
// the projections, both attentions): one rule for what must be contiguous (rows only) and how
// outputs are laid out, so that heads pass from one op to the next without copies.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

namespace reformer_kernels::cpu {

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

}  // namespace reformer_kernels::cpu
