// Local (chunked) attention on the CPU, forward and backward: the LSH kernels' chunk machinery
// on the sequence in its own order, with separate q, k, v and keys scaled by 1/sqrt(d).
//
// A length that is not a multiple of chunk_len is padded inside: the missing key positions exist
// as masked keys with zero values, exactly as if the caller had zero-padded and masked them, and
// the missing query rows are simply not computed. The forward runs one task per (row, chunk); the
// backward one task per (batch, head) row so that key gradients add up in a fixed order.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "attention_checks.h"
#include "chunk_attention.h"
#include "masks.h"
#include "rows.h"
#include "vec.h"

namespace reformer_kernels::cpu {
namespace {

struct LocalShape {
  int64_t batch, heads, seq_len, head_dim, chunk_len, n_chunks, before, after, n_keys;
};

LocalShape check_local_inputs(const char* op, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                              int64_t chunk_len, int64_t n_chunks_before, int64_t n_chunks_after) {
  check_float_input(q, op, "q");
  check_float_input(k, op, "k");
  check_float_input(v, op, "v");
  TORCH_CHECK_VALUE(q.dim() == 4, op, ": q must have shape (batch, heads, seq_len, head_dim), got ", q.sizes());
  TORCH_CHECK_VALUE(k.sizes() == q.sizes() && v.sizes() == q.sizes(), op, ": k and v must have the shape of q ",
                    q.sizes(), ", got ", k.sizes(), " and ", v.sizes());
  TORCH_CHECK_TYPE(k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(), op,
                   ": k and v must have the dtype of q (", q.scalar_type(), ")");
  check_chunking(op, chunk_len, n_chunks_before, n_chunks_after);
  LocalShape s{q.size(0), q.size(1), q.size(2), q.size(3), chunk_len, 0, n_chunks_before, n_chunks_after, 0};
  if (s.seq_len <= chunk_len) {
    // One chunk: plain full attention over the sequence.
    s.chunk_len = std::max<int64_t>(s.seq_len, 1);
    s.before = s.after = 0;
  }
  check_positions(op, s.seq_len);
  s.n_chunks = (s.seq_len + s.chunk_len - 1) / s.chunk_len;
  s.n_keys = window_keys(op, s.chunk_len, s.n_chunks, s.before, s.after);
  return s;
}

// The queries of `chunk` and its window of keys; positions past the sequence end are padding.
// Keys are kept in slots as in the LSH kernel (neighbour u = chunk + offset in slot u mod window):
// unless `refill`, only the newest neighbour, chunk + after, is gathered.
template <typename scalar_t, typename T>
int64_t gather_chunk(ChunkAttention<T>& attn, const LocalShape& s, int64_t row, int64_t chunk, bool refill,
                     const RowView<scalar_t>& q, const RowView<scalar_t>& k, const RowView<scalar_t>& v,
                     const uint8_t* valid, const scalar_t* zeros) {
  const int64_t L = s.seq_len;
  const T key_scale = T(1) / std::sqrt(static_cast<T>(s.head_dim));
  const scalar_t *q_row = q.rows(row), *k_row = k.rows(row), *v_row = v.rows(row);
  const int64_t first = chunk * s.chunk_len, n_queries = std::min(s.chunk_len, L - first);
  for (int64_t i = 0; i < n_queries; ++i) attn.set_query(i, first + i, q_row + (first + i) * q.row_stride);
  const int64_t window = 1 + s.before + s.after;
  for (int64_t offset = refill ? -s.before : s.after; offset <= s.after; ++offset) {
    const int64_t u = chunk + offset;
    const int64_t neighbour = wrap(u, s.n_chunks), slot = wrap(u, window);
    for (int64_t i = 0; i < s.chunk_len; ++i) {
      const int64_t pos = neighbour * s.chunk_len + i, j = slot * s.chunk_len + i;
      if (pos < L) {
        attn.set_key(j, pos, valid != nullptr && !valid[pos], k_row + pos * k.row_stride, key_scale,
                     v_row + pos * v.row_stride);
      } else {
        attn.set_key(j, pos, true, zeros, key_scale, zeros);
      }
    }
    attn.transpose_keys(slot * s.chunk_len, s.chunk_len);
  }
  return n_queries;
}

template <typename scalar_t>
void local_forward_kernel(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& valid,
                          const DropoutKeep& keep, const LocalShape& s, bool causal, at::Tensor& out, at::Tensor& lse) {
  using T = acc_type<scalar_t>;
  const MaskValues values = mask_values(q.scalar_type());
  const int64_t L = s.seq_len, d = s.head_dim;
  const RowView<scalar_t> q_rows = row_view<scalar_t>(q), k_rows = row_view<scalar_t>(k), v_rows = row_view<scalar_t>(v);
  const uint8_t* valid_ptr = valid.defined() ? valid.data_ptr<uint8_t>() : nullptr;
  const int64_t window = 1 + s.before + s.after;
  const RowView<scalar_t, scalar_t> out_rows = output_rows<scalar_t>(out);
  T* lse_ptr = lse.data_ptr<T>();

  at::parallel_for(0, s.batch * s.heads * s.n_chunks, 1, [&](int64_t begin, int64_t end) {
    ChunkAttention<T> attn(s.chunk_len, s.n_keys, d, false, keep.enabled);
    const std::vector<scalar_t> zeros(d, scalar_t(0));
    for (int64_t task = begin; task < end; ++task) {
      const int64_t row = task / s.n_chunks, chunk = task % s.n_chunks;
      const uint8_t* valid_row = valid_ptr == nullptr ? nullptr : valid_ptr + (row / s.heads) * L;
      // A task range holds consecutive chunks: the key window slides unless the row changed.
      const bool refill = task == begin || chunk == 0;
      const int64_t n_queries =
          gather_chunk(attn, s, row, chunk, refill, q_rows, k_rows, v_rows, valid_row, zeros.data());
      set_chunk_keep(attn, keep, row, chunk, n_queries, s.n_chunks, s.chunk_len, s.before, window);
      attn.forward(n_queries, s.n_keys, causal, false, values);
      for (int64_t i = 0; i < n_queries; ++i) {
        const int64_t pos = attn.query_pos[i];
        const T* o = attn.out.data() + i * attn.dim_stride;
        scalar_t* dst = out_rows.rows(row) + pos * out_rows.row_stride;
        for (int64_t t = 0; t < d; ++t) dst[t] = static_cast<scalar_t>(o[t]);
        lse_ptr[row * L + pos] = attn.lse[i];
      }
    }
  });
}

template <typename scalar_t>
void local_backward_kernel(const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                           const at::Tensor& out, const at::Tensor& lse, const at::Tensor& valid, const DropoutKeep& keep,
                           const LocalShape& s, bool causal, at::Tensor& grad_q, at::Tensor& grad_k,
                           at::Tensor& grad_v) {
  using T = acc_type<scalar_t>;
  constexpr bool direct = std::is_same_v<scalar_t, T>;
  const MaskValues values = mask_values(q.scalar_type());
  const int64_t L = s.seq_len, d = s.head_dim;
  const T key_scale = T(1) / std::sqrt(static_cast<T>(d));
  const RowView<scalar_t> g_rows = row_view<scalar_t>(grad_out), out_rows = row_view<scalar_t>(out);
  const RowView<scalar_t> q_rows = row_view<scalar_t>(q), k_rows = row_view<scalar_t>(k), v_rows = row_view<scalar_t>(v);
  const T* lse_ptr = lse.data_ptr<T>();
  const uint8_t* valid_ptr = valid.defined() ? valid.data_ptr<uint8_t>() : nullptr;
  const int64_t window = 1 + s.before + s.after;
  const RowView<scalar_t, scalar_t> gq_rows = output_rows<scalar_t>(grad_q), gk_rows = output_rows<scalar_t>(grad_k),
                                    gv_rows = output_rows<scalar_t>(grad_v);

  at::parallel_for(0, s.batch * s.heads, 1, [&](int64_t begin, int64_t end) {
    ChunkAttention<T> attn(s.chunk_len, s.n_keys, d, true, keep.enabled);
    const std::vector<scalar_t> zeros(d, scalar_t(0));
    std::vector<T> staged(direct ? 0 : 3 * L * d);
    for (int64_t row = begin; row < end; ++row) {
      const uint8_t* valid_row = valid_ptr == nullptr ? nullptr : valid_ptr + (row / s.heads) * L;
      // The gradients add up in place, at each output's own row stride, or staged in T (rows of d).
      T *gq, *gk, *gv;
      int64_t q_stride = d, k_stride = d, v_stride = d;
      if constexpr (direct) {
        gq = gq_rows.rows(row);
        gk = gk_rows.rows(row);
        gv = gv_rows.rows(row);
        q_stride = gq_rows.row_stride;
        k_stride = gk_rows.row_stride;
        v_stride = gv_rows.row_stride;
      } else {
        gq = staged.data();
        gk = gq + L * d;
        gv = gk + L * d;
      }
      for (int64_t pos = 0; pos < L; ++pos) {
        std::fill_n(gq + pos * q_stride, d, T(0));
        std::fill_n(gk + pos * k_stride, d, T(0));
        std::fill_n(gv + pos * v_stride, d, T(0));
      }
      for (int64_t chunk = 0; chunk < s.n_chunks; ++chunk) {
        const int64_t n_queries =
            gather_chunk(attn, s, row, chunk, chunk == 0, q_rows, k_rows, v_rows, valid_row, zeros.data());
        for (int64_t i = 0; i < n_queries; ++i) {
          const int64_t pos = attn.query_pos[i];
          const scalar_t* g = g_rows.rows(row) + pos * g_rows.row_stride;
          const scalar_t* o = out_rows.rows(row) + pos * out_rows.row_stride;
          T* dst = attn.grad_out.data() + i * attn.dim_stride;
          for (int64_t t = 0; t < d; ++t) dst[t] = static_cast<T>(g[t]);
          attn.delta[i] = dot<T>(dst, o, d);
          attn.lse[i] = lse_ptr[row * L + pos];
        }
        set_chunk_keep(attn, keep, row, chunk, n_queries, s.n_chunks, s.chunk_len, s.before, window);
        attn.backward(n_queries, s.n_keys, causal, false, values);
        for (int64_t i = 0; i < n_queries; ++i) {
          const T* src = attn.grad_q.data() + i * attn.dim_stride;
          T* dst = gq + attn.query_pos[i] * q_stride;
          for (int64_t t = 0; t < d; ++t) dst[t] += src[t];
        }
        for (int64_t j = 0; j < s.n_keys; ++j) {
          const int64_t pos = attn.key_pos[j];
          if (pos >= L) continue;
          const T* dk = attn.grad_k.data() + j * attn.dim_stride;
          const T* dv = attn.grad_v.data() + j * attn.dim_stride;
          for (int64_t t = 0; t < d; ++t) {
            gk[pos * k_stride + t] += dk[t] * key_scale;
            gv[pos * v_stride + t] += dv[t];
          }
        }
      }
      if constexpr (!direct) {
        for (int64_t pos = 0; pos < L; ++pos) {
          scalar_t* q_dst = gq_rows.rows(row) + pos * gq_rows.row_stride;
          scalar_t* k_dst = gk_rows.rows(row) + pos * gk_rows.row_stride;
          scalar_t* v_dst = gv_rows.rows(row) + pos * gv_rows.row_stride;
          for (int64_t t = 0; t < d; ++t) {
            q_dst[t] = static_cast<scalar_t>(gq[pos * d + t]);
            k_dst[t] = static_cast<scalar_t>(gk[pos * d + t]);
            v_dst[t] = static_cast<scalar_t>(gv[pos * d + t]);
          }
        }
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> local_attention_fwd_cpu(const at::Tensor& q_in, const at::Tensor& k_in,
                                                           const at::Tensor& v_in, int64_t chunk_len,
                                                           int64_t n_chunks_before, int64_t n_chunks_after,
                                                           bool causal,
                                                           const std::optional<at::Tensor>& attention_mask, double dropout_p,
    int64_t dropout_seed, int64_t dropout_offset) {
  const char* op = "local_attention_fwd";
  const LocalShape s = check_local_inputs(op, q_in, k_in, v_in, chunk_len, n_chunks_before, n_chunks_after);
  // Inputs are read in place (head-split views included); only rows must be contiguous.
  const at::Tensor q = with_contiguous_rows(q_in), k = with_contiguous_rows(k_in), v = with_contiguous_rows(v_in);
  const at::Tensor valid = key_padding(attention_mask, s.batch, s.seq_len, op);
  const DropoutKeep keep = dropout_keep(dropout_p, dropout_seed, dropout_offset, op);
  // laid out like q (rows.h): a head-split projection's output merges back into (B, L, H * d) as a view
  at::Tensor out = empty_like_rows(q);
  at::Tensor lse = at::empty({s.batch, s.heads, s.seq_len}, q.options().dtype(lse_dtype(q)));
  if (q.numel() == 0) return {out.zero_(), lse.zero_()};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "local_attention",
                                  [&] { local_forward_kernel<scalar_t>(q, k, v, valid, keep, s, causal, out, lse); });
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> local_attention_bwd_cpu(
    const at::Tensor& grad_out_in, const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
    const at::Tensor& out_in, const at::Tensor& lse_in, int64_t chunk_len, int64_t n_chunks_before,
    int64_t n_chunks_after, bool causal, const std::optional<at::Tensor>& attention_mask,
    double dropout_p, int64_t dropout_seed, int64_t dropout_offset) {
  const char* op = "local_attention_bwd";
  const LocalShape s = check_local_inputs(op, q_in, k_in, v_in, chunk_len, n_chunks_before, n_chunks_after);
  TORCH_CHECK_VALUE(grad_out_in.sizes() == q_in.sizes() && out_in.sizes() == q_in.sizes(), op,
                    ": grad_out and out must have the shape of q ", q_in.sizes());
  TORCH_CHECK_TYPE(grad_out_in.scalar_type() == q_in.scalar_type() && out_in.scalar_type() == q_in.scalar_type(), op,
                   ": grad_out and out must have the dtype of q (", q_in.scalar_type(), ")");
  const std::vector<int64_t> lse_shape{s.batch, s.heads, s.seq_len};
  TORCH_CHECK_VALUE(lse_in.sizes() == lse_shape, op, ": lse must have shape ", lse_shape, ", got ", lse_in.sizes());
  TORCH_CHECK_TYPE(lse_in.scalar_type() == lse_dtype(q_in), op, ": lse must be ", lse_dtype(q_in),
                   " (as local_attention_fwd returns it), got ", lse_in.scalar_type());
  const at::Tensor q = with_contiguous_rows(q_in), k = with_contiguous_rows(k_in), v = with_contiguous_rows(v_in);
  const at::Tensor grad_out = with_contiguous_rows(grad_out_in), out = with_contiguous_rows(out_in);
  const at::Tensor lse = lse_in.contiguous();
  const at::Tensor valid = key_padding(attention_mask, s.batch, s.seq_len, op);
  const DropoutKeep keep = dropout_keep(dropout_p, dropout_seed, dropout_offset, op);
  at::Tensor grad_q = empty_like_rows(q), grad_k = empty_like_rows(k), grad_v = empty_like_rows(v);
  if (q.numel() == 0) return {grad_q, grad_k, grad_v};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "local_attention", [&] {
    local_backward_kernel<scalar_t>(grad_out, q, k, v, out, lse, valid, keep, s, causal, grad_q, grad_k, grad_v);
  });
  return {grad_q, grad_k, grad_v};
}

}  // namespace
}  // namespace reformer_kernels::cpu

TORCH_LIBRARY_IMPL(reformer_kernels, CPU, m) {
  m.impl("local_attention_fwd", &reformer_kernels::cpu::local_attention_fwd_cpu);
  m.impl("local_attention_bwd", &reformer_kernels::cpu::local_attention_bwd_cpu);
}
