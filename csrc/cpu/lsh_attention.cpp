// Shared-QK LSH attention on the CPU, forward and backward.
//
// One task per (batch, head) row owns every position of that row: it walks the bucket-sorted
// chunks in order, gathers each chunk's queries and its window of keys/values straight from qk and
// v (no sorted copies), and writes the output at the un-sorted positions, combining hash rounds as
// they arrive (a running log-sum-exp per position). Because a task owns its positions, gradients
// are accumulated in a fixed order and the result does not depend on the number of threads.
// Memory: the outputs plus, per thread, one chunk's scores and O(seq_len) scalars.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "attention_checks.h"
#include "chunk_attention.h"
#include "masks.h"
#include "rows.h"
#include "shared_qk.h"
#include "vec.h"

namespace reformer_kernels::cpu {
namespace {

struct LshShape {
  int64_t batch, heads, seq_len, head_dim, n_hashes, chunk_len, n_chunks, n_keys;
};

LshShape check_lsh_inputs(const char* op, const at::Tensor& qk, const at::Tensor& v, const at::Tensor& sorted_idx,
                          int64_t n_hashes, int64_t chunk_len, int64_t n_chunks_before, int64_t n_chunks_after) {
  check_qk_and_values(op, qk, v, "seq_len");
  TORCH_CHECK_TYPE(sorted_idx.scalar_type() == at::kInt || sorted_idx.scalar_type() == at::kLong, op,
                   ": sorted_idx must be int32 or int64, got ", sorted_idx.scalar_type());
  TORCH_CHECK_VALUE(sorted_idx.device().is_cpu(), op, ": sorted_idx must be on the CPU, got ", sorted_idx.device());
  TORCH_CHECK_VALUE(n_hashes >= 1, op, ": n_hashes must be >= 1, got ", n_hashes);
  check_chunking(op, chunk_len, n_chunks_before, n_chunks_after);
  LshShape s{qk.size(0), qk.size(1), qk.size(2), qk.size(3), n_hashes, chunk_len, 0, 0};
  // Positions are compared as 32-bit lanes (and sorted as the high half of 64-bit keys).
  check_positions(op, s.seq_len);
  int64_t total = 0;
  TORCH_CHECK_VALUE(!__builtin_mul_overflow(n_hashes, s.seq_len, &total), op, ": n_hashes = ", n_hashes,
                    " rounds of seq_len = ", s.seq_len, " positions are more entries than int64 counts; pass the ",
                    "n_hashes that sorted_idx was sorted with");
  TORCH_CHECK_VALUE(sorted_idx.dim() == 3 && sorted_idx.size(0) == s.batch && sorted_idx.size(1) == s.heads &&
                        sorted_idx.size(2) == total,
                    op, ": sorted_idx must have shape (batch, heads, n_hashes * seq_len) = (", s.batch, ", ", s.heads,
                    ", ", total, "), got ", sorted_idx.sizes());
  TORCH_CHECK_VALUE(total % chunk_len == 0, op, ": n_hashes * seq_len = ", total,
                    " must be a multiple of chunk_len = ", chunk_len,
                    "; pad the sequence (lsh_self_attention does) or pick another chunk_len");
  s.n_chunks = total / chunk_len;
  s.n_keys = window_keys(op, chunk_len, s.n_chunks, n_chunks_before, n_chunks_after);
  return s;
}

// Each sorted entry's position and hash round (entry = round * seq_len + position), after checking
// it: one division per entry here, where the chunk loops would need several.
struct SortedEntries {
  std::vector<int64_t> pos, round;
  explicit SortedEntries(int64_t total) : pos(total), round(total) {}

  // sorted_idx: int32 as bucket_sort returns it, or int64.
  void split(const at::Tensor& sorted_idx, int64_t total, int64_t seq_len, int64_t row) {
    AT_DISPATCH_INDEX_TYPES(sorted_idx.scalar_type(), "lsh_attention", [&] {
      const index_t* idx = sorted_idx.const_data_ptr<index_t>() + row * total;
      for (int64_t i = 0; i < total; ++i) {
        TORCH_CHECK_VALUE(idx[i] >= 0 && idx[i] < total, "lsh_attention: sorted_idx[", row, "] holds ", idx[i],
                          ", outside [0, n_hashes * seq_len = ", total, "); pass the sorted_idx of bucket_sort");
        round[i] = idx[i] / seq_len;
        pos[i] = idx[i] - round[i] * seq_len;
      }
    });
  }
};

template <typename scalar_t, typename T>
void key_scales(const scalar_t* qk, int64_t row_stride, int64_t seq_len, int64_t head_dim, T* scale) {
  const T inv_sqrt_dim = T(1) / std::sqrt(static_cast<T>(head_dim));
  for (int64_t p = 0; p < seq_len; ++p) scale[p] = key_scale(qk + p * row_stride, head_dim, inv_sqrt_dim);
}

// The entries of chunk `chunk` (offsets into it) in position order when `by_position`, else in
// bucket order; ties (one position from two rounds) keep the bucket order. keys: chunk_len scratch.
void chunk_order(const LshShape& s, const SortedEntries& entries, int64_t chunk, bool by_position,
                 std::vector<int64_t>& order, std::vector<uint64_t>& keys) {
  if (!by_position) {
    for (int64_t i = 0; i < s.chunk_len; ++i) order[i] = i;
    return;
  }
  // Position in the high half, offset in the low one: distinct keys, whose order is the stable one.
  const int64_t* pos = entries.pos.data() + chunk * s.chunk_len;
  for (int64_t i = 0; i < s.chunk_len; ++i) keys[i] = static_cast<uint64_t>(pos[i]) << 32 | static_cast<uint64_t>(i);
  std::sort(keys.begin(), keys.end());
  for (int64_t i = 0; i < s.chunk_len; ++i) order[i] = static_cast<int64_t>(keys[i] & 0xffffffffu);
}

// Gathers chunk `chunk` of the sorted sequence (queries) and its window of neighbour chunks,
// circular over the concatenated rounds (keys); rounds[i] receives query i's hash round.
// Neighbour u = chunk + offset (offset in [-n_chunks_before, n_chunks_after], not yet wrapped)
// lives in key slot u mod window, so the window of chunk + 1 shares all but one slot with this
// one: unless `refill`, only the slot of the newest neighbour, chunk + n_chunks_after, is gathered.
// The order of the slots does not matter, since every key carries its own position for the masks.
// With `by_position` (no dropout, whose elements are numbered in bucket order) queries and each
// slot's keys are gathered in position order, which lets a causal chunk skip most of the key
// blocks that its early queries cannot see (ChunkAttention::plan_blocks).
template <typename scalar_t, typename T>
void gather_chunk(ChunkAttention<T>& attn, const LshShape& s, int64_t chunk, int64_t n_chunks_before,
                  int64_t n_chunks_after, bool refill, bool by_position, const SortedEntries& entries,
                  const scalar_t* qk, int64_t qk_stride, const scalar_t* v, int64_t v_stride, const T* scale,
                  const uint8_t* valid, int64_t* rounds, std::vector<int64_t>& order, std::vector<uint64_t>& keys) {
  chunk_order(s, entries, chunk, by_position, order, keys);
  for (int64_t i = 0; i < s.chunk_len; ++i) {
    const int64_t entry = chunk * s.chunk_len + order[i], pos = entries.pos[entry];
    rounds[i] = entries.round[entry];
    attn.set_query(i, pos, qk + pos * qk_stride);
  }
  const int64_t window = 1 + n_chunks_before + n_chunks_after;
  int64_t ordered = chunk;
  for (int64_t offset = refill ? -n_chunks_before : n_chunks_after; offset <= n_chunks_after; ++offset) {
    const int64_t u = chunk + offset;
    const int64_t neighbour = wrap(u, s.n_chunks), slot = wrap(u, window);
    if (neighbour != ordered) chunk_order(s, entries, neighbour, by_position, order, keys);
    ordered = neighbour;
    for (int64_t i = 0; i < s.chunk_len; ++i) {
      const int64_t pos = entries.pos[neighbour * s.chunk_len + order[i]];
      attn.set_key(slot * s.chunk_len + i, pos, valid != nullptr && !valid[pos], qk + pos * qk_stride, scale[pos],
                   v + pos * v_stride);
    }
    attn.transpose_keys(slot * s.chunk_len, s.chunk_len);
  }
  // The rows the next call gathers sit at random positions: ask for them now, so that they arrive
  // while this chunk's attention runs instead of stalling the next gather.
  const int64_t next = (chunk + 1 + n_chunks_after) % s.n_chunks;
  for (int64_t i = 0; i < s.chunk_len; ++i) {
    const int64_t pos = entries.pos[next * s.chunk_len + i];
    prefetch_row(qk + pos * qk_stride, s.head_dim);
    prefetch_row(v + pos * v_stride, s.head_dim);
  }
}

// x[i] = exp(x[i]) for the n doubles at x, in the precision of T: float's vector exp where the
// results weigh float outputs, the correctly rounded libm exp for double ones.
template <typename T>
void exp_in_place(double* x, int64_t n) {
  if constexpr (std::is_same_v<T, float>) {
    constexpr int64_t W = Vec<float>::width;
    float lanes[W];
    for (int64_t i = 0; i < n; i += W) {
      for (int64_t w = 0; w < W; ++w) lanes[w] = i + w < n ? static_cast<float>(x[i + w]) : 0.0f;
      vstore(lanes, vexp(vload(lanes)));
      for (int64_t w = 0; w < W && i + w < n; ++w) x[i + w] = lanes[w];
    }
  } else {
    for (int64_t i = 0; i < n; ++i) x[i] = std::exp(x[i]);
  }
}

template <typename scalar_t>
void lsh_forward_kernel(const at::Tensor& qk, const at::Tensor& v, const at::Tensor& sorted_idx,
                        const at::Tensor& valid, const DropoutKeep& keep, const LshShape& s, int64_t n_chunks_before,
                        int64_t n_chunks_after, bool causal, at::Tensor& out, at::Tensor& lse) {
  using T = acc_type<scalar_t>;
  constexpr bool direct = std::is_same_v<scalar_t, T>;
  const MaskValues values = mask_values(qk.scalar_type());
  const int64_t L = s.seq_len, d = s.head_dim, total = s.n_hashes * L;
  const RowView<scalar_t> qk_rows = row_view<scalar_t>(qk), v_rows = row_view<scalar_t>(v);
  const uint8_t* valid_ptr = valid.defined() ? valid.data_ptr<uint8_t>() : nullptr;
  const RowView<scalar_t, scalar_t> out_rows = output_rows<scalar_t>(out);
  T* lse_ptr = lse.data_ptr<T>();

  at::parallel_for(0, s.batch * s.heads, 1, [&](int64_t begin, int64_t end) {
    ChunkAttention<T> attn(s.chunk_len, s.n_keys, d, false, keep.enabled);
    std::vector<T> scale(L);
    std::vector<double> running_top(L), running_sum(L), gap(s.chunk_len), other(s.chunk_len);
    std::vector<T> staged(direct ? 0 : L * d);
    std::vector<int64_t> rounds(s.chunk_len), order(s.chunk_len);
    std::vector<uint64_t> keys(s.chunk_len);
    SortedEntries entries(total);
    for (int64_t row = begin; row < end; ++row) {
      entries.split(sorted_idx, total, L, row);
      const scalar_t* qk_row = qk_rows.rows(row);
      const scalar_t* v_row = v_rows.rows(row);
      const uint8_t* valid_row = valid_ptr == nullptr ? nullptr : valid_ptr + (row / s.heads) * L;
      // acc: the output rows (row stride acc_stride), or float rows staged for a low-precision output
      T* acc;
      int64_t acc_stride;
      if constexpr (direct) {
        acc = out_rows.rows(row);
        acc_stride = out_rows.row_stride;
      } else {
        acc = staged.data();
        acc_stride = d;
      }
      T* lse_row = lse_ptr + row * total;
      key_scales(qk_row, qk_rows.row_stride, L, d, scale.data());
      for (int64_t p = 0; p < L; ++p) std::fill(acc + p * acc_stride, acc + p * acc_stride + d, T(0));
      std::fill(running_top.begin(), running_top.end(), -std::numeric_limits<double>::infinity());
      std::fill(running_sum.begin(), running_sum.end(), 0.0);
      std::fill(lse_row, lse_row + total, -std::numeric_limits<T>::infinity());
      for (int64_t chunk = 0; chunk < s.n_chunks; ++chunk) {
        gather_chunk(attn, s, chunk, n_chunks_before, n_chunks_after, chunk == 0, !keep.enabled, entries,
                     qk_row, qk_rows.row_stride, v_row, v_rows.row_stride, scale.data(), valid_row, rounds.data(), order,
                     keys);
        set_chunk_keep(attn, keep, row, chunk, s.chunk_len, s.n_chunks, s.chunk_len, n_chunks_before,
                       1 + n_chunks_before + n_chunks_after);
        attn.forward(s.chunk_len, s.n_keys, causal, true, values);
        // The output rows that chunk + kCombineAhead combines into sit at random positions too: one
        // is asked for per row combined here, so that the requests are spread over the loop (a
        // burst of a chunk's requests stalls on the cache's miss queue) and have two chunks' time.
        constexpr int64_t kCombineAhead = 2;
        const int64_t* ahead =
            chunk + kCombineAhead < s.n_chunks ? entries.pos.data() + (chunk + kCombineAhead) * s.chunk_len : nullptr;
        // Combine rounds as they arrive: out_pos holds the softmax(lse)-weighted mean of the rounds
        // seen so far, whose log-sum-exp is running_top + log(running_sum). The weights are
        // normalized by that sum rather than taken as exp(lse - log-sum-exp), and the lse are the
        // double ones: near the -1e5 self-mask value a float32 log-sum-exp is rounded to steps of
        // 2^-7, and weights computed from it would sum to 1 +- 0.4% and be off by as much (a token
        // that only sees itself, whose rounds differ under dropout). Relative to the larger of the
        // two log-sum-exps one weight is exp(0) = 1, the other exp(-|gap|): one exp per query, for
        // all of the chunk's queries at once (a first round has gap +inf: weight 0 for the zeros).
        for (int64_t i = 0; i < s.chunk_len; ++i) {
          const int64_t pos = attn.query_pos[i];
          gap[i] = attn.lse_wide[i] - running_top[pos];
          other[i] = -std::abs(gap[i]);
        }
        exp_in_place<T>(other.data(), s.chunk_len);
        for (int64_t i = 0; i < s.chunk_len; ++i) {
          const int64_t pos = attn.query_pos[i];
          lse_row[rounds[i] * L + pos] = attn.lse[i];
          const bool larger = gap[i] > 0;
          const double previous = larger ? running_sum[pos] * other[i] : running_sum[pos];
          const double added = larger ? 1.0 : other[i];
          const double sum = previous + added;
          const T stay = static_cast<T>(previous / sum), add = static_cast<T>(added / sum);
          const T* o = attn.out.data() + i * attn.dim_stride;
          T* target = acc + pos * acc_stride;
          if (ahead != nullptr) prefetch_row<true>(acc + ahead[i] * acc_stride, d);
          for (int64_t t = 0; t < d; ++t) target[t] = target[t] * stay + o[t] * add;
          if (larger) running_top[pos] = attn.lse_wide[i];
          running_sum[pos] = sum;
        }
      }
      if constexpr (!direct) {
        scalar_t* dst = out_rows.rows(row);
        for (int64_t p = 0; p < L; ++p) {
          for (int64_t t = 0; t < d; ++t) dst[p * out_rows.row_stride + t] = static_cast<scalar_t>(acc[p * d + t]);
        }
      }
    }
  });
}

template <typename scalar_t>
void lsh_backward_kernel(const at::Tensor& grad_out, const at::Tensor& grad_lse, const at::Tensor& qk,
                         const at::Tensor& v, const at::Tensor& sorted_idx, const at::Tensor& out, const at::Tensor& lse,
                         const at::Tensor& valid, const DropoutKeep& keep, const LshShape& s, int64_t n_chunks_before,
                         int64_t n_chunks_after, bool causal, at::Tensor& grad_qk, at::Tensor& grad_v) {
  using T = acc_type<scalar_t>;
  constexpr bool direct = std::is_same_v<scalar_t, T>;
  const MaskValues values = mask_values(qk.scalar_type());
  const int64_t L = s.seq_len, d = s.head_dim, total = s.n_hashes * L;
  const RowView<scalar_t> g_rows = row_view<scalar_t>(grad_out), qk_rows = row_view<scalar_t>(qk),
                          v_rows = row_view<scalar_t>(v), out_rows = row_view<scalar_t>(out);
  const T* glse_ptr = grad_lse.defined() ? grad_lse.data_ptr<T>() : nullptr;
  const T* lse_ptr = lse.data_ptr<T>();
  const uint8_t* valid_ptr = valid.defined() ? valid.data_ptr<uint8_t>() : nullptr;
  const RowView<scalar_t, scalar_t> gqk_rows = output_rows<scalar_t>(grad_qk), gv_rows = output_rows<scalar_t>(grad_v);

  at::parallel_for(0, s.batch * s.heads, 1, [&](int64_t begin, int64_t end) {
    ChunkAttention<T> attn(s.chunk_len, s.n_keys, d, true, keep.enabled);
    std::vector<T> scale(L), lse_all(L), grad_dot_out(L);
    std::vector<T> staged_qk(direct ? 0 : L * d), staged_v(direct ? 0 : L * d);
    std::vector<int64_t> rounds(s.chunk_len), order(s.chunk_len);
    std::vector<uint64_t> keys(s.chunk_len);
    SortedEntries entries(total);
    // Key slot j's gradients are summed in attn.grad_k / attn.grad_v (and, for the slot of the
    // chunk's own queries, which are the same entries in the same order, the query gradient in
    // slot_grad_q) over every window that the slot is part of, and written out once, when the slot
    // is refilled: one update of each gradient row per entry instead of one per window and role.
    const int64_t window = 1 + n_chunks_before + n_chunks_after;
    std::vector<T> slot_grad_q(s.n_keys * attn.dim_stride, T(0));
    std::vector<uint8_t> slot_has_grad(s.n_keys, 0);
    for (int64_t row = begin; row < end; ++row) {
      entries.split(sorted_idx, total, L, row);
      const scalar_t* qk_row = qk_rows.rows(row);
      const scalar_t* v_row = v_rows.rows(row);
      const scalar_t* g_row = g_rows.rows(row);
      const scalar_t* out_row = out_rows.rows(row);
      const T* lse_row = lse_ptr + row * total;
      const T* glse_row = glse_ptr == nullptr ? nullptr : glse_ptr + row * total;
      const uint8_t* valid_row = valid_ptr == nullptr ? nullptr : valid_ptr + (row / s.heads) * L;
      // The gradient rows (row strides gqk_stride, gv_stride), or float rows staged for low precision.
      T *gqk, *gv;
      int64_t gqk_stride, gv_stride;
      if constexpr (direct) {
        gqk = gqk_rows.rows(row);
        gv = gv_rows.rows(row);
        gqk_stride = gqk_rows.row_stride;
        gv_stride = gv_rows.row_stride;
      } else {
        gqk = staged_qk.data();
        gv = staged_v.data();
        gqk_stride = gv_stride = d;
      }
      for (int64_t p = 0; p < L; ++p) {
        std::fill(gqk + p * gqk_stride, gqk + p * gqk_stride + d, T(0));
        std::fill(gv + p * gv_stride, gv + p * gv_stride + d, T(0));
      }
      key_scales(qk_row, qk_rows.row_stride, L, d, scale.data());
      // Keys are qk * scale(qk) with scale = (mean(qk^2) + eps)^(-1/2) / sqrt(d); through the
      // normalization, d(qk) = scale * dk - scale^3 * (qk . dk) * qk = scale * (dk - (k . dk) * k),
      // which is linear in dk, so a slot's summed key gradient goes through it once; the slot's
      // scaled key rows are still in attn.k, so qk is not read again. Leaves the slot's sums at zero.
      auto write_out_slot = [&](int64_t slot) {
        for (int64_t j = slot * s.chunk_len; j < (slot + 1) * s.chunk_len; ++j) {
          if (!slot_has_grad[j]) continue;
          slot_has_grad[j] = 0;
          const int64_t pos = attn.key_pos[j];
          T* dq = slot_grad_q.data() + j * attn.dim_stride;
          T* dk = attn.grad_k.data() + j * attn.dim_stride;
          T* dv = attn.grad_v.data() + j * attn.dim_stride;
          const T sc = scale[pos];
          T* dst_qk = gqk + pos * gqk_stride;
          const T* key = attn.k.data() + j * attn.dim_stride;
          const T radial = sc * dot<T>(key, dk, d);
          for (int64_t t = 0; t < d; ++t) dst_qk[t] += dq[t] + sc * dk[t] - radial * key[t];
          T* dst_v = gv + pos * gv_stride;
          for (int64_t t = 0; t < d; ++t) dst_v[t] += dv[t];
          std::fill(dq, dq + attn.dim_stride, T(0));
          std::fill(dk, dk + attn.dim_stride, T(0));
          std::fill(dv, dv + attn.dim_stride, T(0));
        }
      };
      for (int64_t p = 0; p < L; ++p) {
        T top = -std::numeric_limits<T>::infinity();
        for (int64_t r = 0; r < s.n_hashes; ++r) top = std::max(top, lse_row[r * L + p]);
        T sum = 0;
        for (int64_t r = 0; r < s.n_hashes; ++r) sum += std::exp(lse_row[r * L + p] - top);
        lse_all[p] = top + std::log(sum);
        grad_dot_out[p] = dot<T>(g_row + p * g_rows.row_stride, out_row + p * out_rows.row_stride, d);
      }
      for (int64_t chunk = 0; chunk < s.n_chunks; ++chunk) {
        // The slot that gather_chunk refills has been in its last window.
        if (chunk > 0) write_out_slot(wrap(chunk + n_chunks_after, window));
        // The gradient rows that the next chunk's write-out updates (those of the slot it refills,
        // which sit at random positions) are asked for now, into L2, a whole chunk ahead: a write
        // prefetch after the attention, just before the write-out, came too late (paired A/B: the
        // backward is 6-8% faster at 4K and 16K tokens with this one instead).
        if (chunk > 0) {
          const int64_t later = wrap(chunk + 1 + n_chunks_after, window);
          for (int64_t j = later * s.chunk_len; j < (later + 1) * s.chunk_len; ++j) {
            prefetch_row(gqk + attn.key_pos[j] * gqk_stride, d);
            prefetch_row(gv + attn.key_pos[j] * gv_stride, d);
          }
        }
        gather_chunk(attn, s, chunk, n_chunks_before, n_chunks_after, chunk == 0, !keep.enabled, entries,
                     qk_row, qk_rows.row_stride, v_row, v_rows.row_stride, scale.data(), valid_row, rounds.data(), order,
                     keys);
        // Round r's output enters out with weight w = exp(lse_r - lse_all), so its upstream
        // gradient is w * g; the combination also sends w * (g . (o_r - out)) into lse_r, and
        // dO_r . o_r - dlse_r collapses to w * (g . out) - grad_lse_r: o_r is never needed.
        for (int64_t i = 0; i < s.chunk_len; ++i) {
          const int64_t pos = attn.query_pos[i], at = rounds[i] * L + pos;
          const T weight = std::exp(lse_row[at] - lse_all[pos]);
          T* dst = attn.grad_out.data() + i * attn.dim_stride;
          const scalar_t* g = g_row + pos * g_rows.row_stride;
          for (int64_t t = 0; t < d; ++t) dst[t] = weight * static_cast<T>(g[t]);
          attn.lse[i] = lse_row[at];
          attn.delta[i] = weight * grad_dot_out[pos] - (glse_row == nullptr ? T(0) : glse_row[at]);
        }
        set_chunk_keep(attn, keep, row, chunk, s.chunk_len, s.n_chunks, s.chunk_len, n_chunks_before, window);
        attn.backward(s.chunk_len, s.n_keys, causal, true, values, true);
        const int64_t own = wrap(chunk, window) * s.chunk_len;
        for (int64_t i = 0; i < s.chunk_len; ++i) {
          const T* src = attn.grad_q.data() + i * attn.dim_stride;
          T* dst = slot_grad_q.data() + (own + i) * attn.dim_stride;
          for (int64_t t = 0; t < d; ++t) dst[t] += src[t];
          slot_has_grad[own + i] = 1;
        }
        for (int64_t j = 0; j < s.n_keys; ++j) slot_has_grad[j] |= attn.key_used(j, s.chunk_len);
        // Ask for the rows that the next chunk reads (its queries' upstream gradients), which sit
        // at random positions.
        if (chunk + 1 < s.n_chunks) {
          for (int64_t i = 0; i < s.chunk_len; ++i) {
            prefetch_row(g_row + entries.pos[(chunk + 1) * s.chunk_len + i] * g_rows.row_stride, d);
          }
        }
      }
      for (int64_t slot = 0; slot < window; ++slot) write_out_slot(slot);
      if constexpr (!direct) {
        scalar_t* dq = gqk_rows.rows(row);
        scalar_t* dv = gv_rows.rows(row);
        for (int64_t p = 0; p < L; ++p) {
          for (int64_t t = 0; t < d; ++t) {
            dq[p * gqk_rows.row_stride + t] = static_cast<scalar_t>(gqk[p * d + t]);
            dv[p * gv_rows.row_stride + t] = static_cast<scalar_t>(gv[p * d + t]);
          }
        }
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> lsh_attention_fwd_cpu(const at::Tensor& qk_in, const at::Tensor& v_in,
                                                         const at::Tensor& sorted_idx_in, int64_t n_hashes,
                                                         int64_t chunk_len, int64_t n_chunks_before,
                                                         int64_t n_chunks_after, bool causal,
                                                         const std::optional<at::Tensor>& attention_mask, double dropout_p,
    int64_t dropout_seed, int64_t dropout_offset) {
  const char* op = "lsh_attention_fwd";
  const LshShape s =
      check_lsh_inputs(op, qk_in, v_in, sorted_idx_in, n_hashes, chunk_len, n_chunks_before, n_chunks_after);
  const at::Tensor qk = with_contiguous_rows(qk_in), v = with_contiguous_rows(v_in);
  const at::Tensor sorted_idx = sorted_idx_in.contiguous();
  const at::Tensor valid = key_padding(attention_mask, s.batch, s.seq_len, op);
  const DropoutKeep keep = dropout_keep(dropout_p, dropout_seed, dropout_offset, op);
  at::Tensor out = empty_like_rows(qk);
  at::Tensor lse = at::empty({s.batch, s.heads, n_hashes, s.seq_len}, qk.options().dtype(lse_dtype(qk)));
  if (qk.numel() == 0) return {out.zero_(), lse.fill_(-std::numeric_limits<double>::infinity())};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, qk.scalar_type(), "lsh_attention", [&] {
    lsh_forward_kernel<scalar_t>(qk, v, sorted_idx, valid, keep, s, n_chunks_before, n_chunks_after, causal, out, lse);
  });
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor> lsh_attention_bwd_cpu(
    const at::Tensor& grad_out_in, const std::optional<at::Tensor>& grad_lse_in, const at::Tensor& qk_in,
    const at::Tensor& v_in, const at::Tensor& sorted_idx_in, const at::Tensor& out_in, const at::Tensor& lse_in,
    int64_t n_hashes, int64_t chunk_len, int64_t n_chunks_before, int64_t n_chunks_after, bool causal,
    const std::optional<at::Tensor>& attention_mask, double dropout_p, int64_t dropout_seed, int64_t dropout_offset) {
  const char* op = "lsh_attention_bwd";
  const LshShape s =
      check_lsh_inputs(op, qk_in, v_in, sorted_idx_in, n_hashes, chunk_len, n_chunks_before, n_chunks_after);
  TORCH_CHECK_VALUE(grad_out_in.sizes() == qk_in.sizes() && out_in.sizes() == qk_in.sizes(), op,
                    ": grad_out and out must have the shape of qk ", qk_in.sizes());
  TORCH_CHECK_TYPE(grad_out_in.scalar_type() == qk_in.scalar_type() && out_in.scalar_type() == qk_in.scalar_type(),
                   op, ": grad_out and out must have the dtype of qk (", qk_in.scalar_type(), ")");
  const std::vector<int64_t> lse_shape{s.batch, s.heads, n_hashes, s.seq_len};
  TORCH_CHECK_VALUE(lse_in.sizes() == lse_shape, op, ": lse must have shape ", lse_shape, ", got ", lse_in.sizes());
  TORCH_CHECK_TYPE(lse_in.scalar_type() == lse_dtype(qk_in), op, ": lse must be ", lse_dtype(qk_in),
                   " (as lsh_attention_fwd returns it), got ", lse_in.scalar_type());
  at::Tensor grad_lse;
  if (grad_lse_in.has_value() && grad_lse_in->defined()) {
    TORCH_CHECK_VALUE(grad_lse_in->sizes() == lse_shape, op, ": grad_lse must have shape ", lse_shape, ", got ",
                      grad_lse_in->sizes());
    grad_lse = grad_lse_in->to(lse_dtype(qk_in)).contiguous();
  }
  // Inputs are read in place (head-split views included); only rows must be contiguous.
  const at::Tensor qk = with_contiguous_rows(qk_in), v = with_contiguous_rows(v_in);
  const at::Tensor grad_out = with_contiguous_rows(grad_out_in), out = with_contiguous_rows(out_in);
  const at::Tensor sorted_idx = sorted_idx_in.contiguous(), lse = lse_in.contiguous();
  const at::Tensor valid = key_padding(attention_mask, s.batch, s.seq_len, op);
  const DropoutKeep keep = dropout_keep(dropout_p, dropout_seed, dropout_offset, op);
  at::Tensor grad_qk = empty_like_rows(qk);
  at::Tensor grad_v = empty_like_rows(v);
  if (qk.numel() == 0) return {grad_qk, grad_v};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, qk.scalar_type(), "lsh_attention", [&] {
    lsh_backward_kernel<scalar_t>(grad_out, grad_lse, qk, v, sorted_idx, out, lse, valid, keep, s, n_chunks_before,
                                  n_chunks_after, causal, grad_qk, grad_v);
  });
  return {grad_qk, grad_v};
}

}  // namespace
}  // namespace reformer_kernels::cpu

TORCH_LIBRARY_IMPL(reformer_kernels, CPU, m) {
  m.impl("lsh_attention_fwd", &reformer_kernels::cpu::lsh_attention_fwd_cpu);
  m.impl("lsh_attention_bwd", &reformer_kernels::cpu::lsh_attention_bwd_cpu);
}
