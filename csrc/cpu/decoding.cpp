// lsh_decode_step on the CPU: one cached decoding step of causal LSH attention (the semantics are
// reformer_kernels/ops/lsh_decode_step/reference.py's). Per (batch, head), in one task: insert the
// new position's sort key into each round's `recent` run, then per round walk the two sorted runs
// from the start of each window chunk (a merge-path binary search finds where), attend the query to
// those keys with the chunked attention's masks, and combine the rounds by their log-sum-exp. The
// cost is O(rounds * (log(length) + window * head_dim)) plus the O(merge_every) insertion, whatever
// the context.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "attention_checks.h"
#include "masks.h"
#include "rows.h"
#include "shared_qk.h"
#include "vec.h"

namespace reformer_kernels::cpu {
namespace {

constexpr const char* kOp = "lsh_decode_step";
constexpr uint64_t kPositionMask = 0xFFFFFFFFull;  // the low POSITION_BITS = 32 bits of a sort key

struct StepShape {
  int64_t batch, heads, head_dim, n_hashes, n_merged, n_recent, recent_len, position, padded_len, chunk_len,
      n_chunks_before, n_chunks_after;
};

void check_int64_runs(const at::Tensor& t, const char* name, int64_t batch, int64_t heads) {
  TORCH_CHECK_TYPE(t.scalar_type() == at::kLong, kOp, ": ", name, " must be int64 sort keys, got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.device().is_cpu(), kOp, ": ", name, " must be on the CPU, got ", t.device());
  TORCH_CHECK_VALUE(t.dim() == 4 && t.size(0) == batch && t.size(1) == heads, kOp, ": ", name,
                    " must be (batch, heads, n_hashes, n) = (", batch, ", ", heads, ", n_hashes, n), got ", t.sizes());
}

StepShape check_step(const at::Tensor& qk, const at::Tensor& v, const at::Tensor& merged, const at::Tensor& recent,
                     int64_t n_recent, const at::Tensor& sort_keys, const at::Tensor& key_valid, int64_t position,
                     int64_t padded_len, int64_t chunk_len, int64_t n_chunks_before, int64_t n_chunks_after) {
  check_qk_and_values(kOp, qk, v, "capacity");
  const int64_t batch = qk.size(0), heads = qk.size(1);
  check_int64_runs(merged, "merged", batch, heads);
  check_int64_runs(recent, "recent", batch, heads);
  const int64_t n_hashes = merged.size(2);
  TORCH_CHECK_VALUE(n_hashes >= 1 && recent.size(2) == n_hashes, kOp, ": merged and recent must hold the same n_hashes >= 1 ",
                    "rounds, got ", merged.sizes(), " and ", recent.sizes());
  TORCH_CHECK_VALUE(n_recent >= 0 && n_recent < recent.size(3), kOp, ": n_recent = ", n_recent, " must lie in [0, ",
                    recent.size(3), "): recent needs a free slot for the new key; merge the runs first");
  TORCH_CHECK_VALUE(merged.size(3) + n_recent == position, kOp, ": merged holds ", merged.size(3), " keys and recent ",
                    n_recent, " but the positions before position ", position, " are ", position);
  TORCH_CHECK_VALUE(position >= 0 && position < qk.size(2), kOp, ": position ", position,
                    " must lie in the cache's capacity [0, ", qk.size(2), ") of qk and v");
  check_positions(kOp, padded_len);
  check_chunking(kOp, chunk_len, n_chunks_before, n_chunks_after);
  TORCH_CHECK_VALUE(padded_len > position && padded_len % chunk_len == 0, kOp, ": padded_len ", padded_len,
                    " must be a multiple of chunk_len ", chunk_len, " greater than position ", position);
  window_keys(kOp, chunk_len, n_hashes * padded_len / chunk_len, n_chunks_before, n_chunks_after);
  TORCH_CHECK_TYPE(sort_keys.scalar_type() == at::kLong, kOp, ": sort_keys must be int64, got ", sort_keys.scalar_type());
  TORCH_CHECK_VALUE(sort_keys.device().is_cpu() && sort_keys.dim() == 3 && sort_keys.size(0) == batch &&
                        sort_keys.size(1) == heads && sort_keys.size(2) == n_hashes,
                    kOp, ": sort_keys must be (batch, heads, n_hashes) = (", batch, ", ", heads, ", ", n_hashes,
                    ") on the CPU, got ", sort_keys.sizes(), " on ", sort_keys.device());
  TORCH_CHECK_TYPE(key_valid.scalar_type() == at::kBool, kOp, ": key_valid must be bool, got ", key_valid.scalar_type());
  TORCH_CHECK_VALUE(key_valid.device().is_cpu() && key_valid.dim() == 2 && key_valid.size(0) == batch &&
                        key_valid.size(1) == position + 1,
                    kOp, ": key_valid must be (batch, position + 1) = (", batch, ", ", position + 1,
                    ") on the CPU, got ", key_valid.sizes(), " on ", key_valid.device());
  return {batch, heads, qk.size(3), n_hashes, merged.size(3), n_recent, recent.size(3), position, padded_len, chunk_len,
          n_chunks_before, n_chunks_after};
}

// How many of the first `rank` entries of the union of the sorted runs a (n_a) and b (n_b) come
// from a: the merge path's binary search. Keys are distinct (they hold their position).
int64_t merge_split(const int64_t* a, int64_t n_a, const int64_t* b, int64_t n_b, int64_t rank) {
  int64_t lo = std::max<int64_t>(0, rank - n_b), hi = std::min(rank, n_a);
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    // Taking mid entries of a is enough when a[mid] comes after the b entry that would be the last taken.
    if (a[mid] > b[rank - mid - 1]) {
      hi = mid;
    } else {
      lo = mid + 1;
    }
  }
  return lo;
}

template <typename scalar_t>
void decode_kernel(const at::Tensor& qk, const at::Tensor& v, const at::Tensor& merged, at::Tensor& recent,
                   const at::Tensor& sort_keys, const at::Tensor& key_valid, const StepShape& s, at::Tensor& out) {
  using T = acc_type<scalar_t>;
  const RowView<scalar_t> qk_rows = row_view<scalar_t>(qk), v_rows = row_view<scalar_t>(v);
  const int64_t* merged_ptr = merged.data_ptr<int64_t>();
  int64_t* recent_ptr = recent.data_ptr<int64_t>();
  const int64_t* keys_ptr = sort_keys.data_ptr<int64_t>();
  const bool* valid_ptr = key_valid.data_ptr<bool>();
  const MaskValues masks = mask_values(qk.scalar_type());
  const int64_t d = s.head_dim, length = s.position + 1, n_in_recent = s.n_recent + 1;
  const int64_t n_neighbours = s.n_chunks_before + 1 + s.n_chunks_after;
  const int64_t n_chunks = s.n_hashes * s.padded_len / s.chunk_len;
  const int64_t window = n_neighbours * s.chunk_len;
  const T inv_sqrt_dim = T(1) / std::sqrt(static_cast<T>(d));

  at::parallel_for(0, s.batch * s.heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> ranks(s.n_hashes), key_positions(window);
    std::vector<T> query(d), scores(window), acc(d), round_out(s.n_hashes * d), round_lse(s.n_hashes);
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / s.heads;
      const int64_t* merged_rows = merged_ptr + bh * s.n_hashes * s.n_merged;
      int64_t* recent_rows = recent_ptr + bh * s.n_hashes * s.recent_len;
      // Stage 1: the new key's rank in each round, and its insertion into the sorted recent run.
      for (int64_t r = 0; r < s.n_hashes; ++r) {
        const int64_t key = keys_ptr[bh * s.n_hashes + r];
        const int64_t* m_row = merged_rows + r * s.n_merged;
        int64_t* r_row = recent_rows + r * s.recent_len;
        const int64_t below_recent = std::lower_bound(r_row, r_row + s.n_recent, key) - r_row;
        ranks[r] = (std::lower_bound(m_row, m_row + s.n_merged, key) - m_row) + below_recent;
        std::copy_backward(r_row + below_recent, r_row + s.n_recent, r_row + s.n_recent + 1);
        r_row[below_recent] = key;
      }
      const scalar_t* qk_bh = qk_rows.rows(bh);
      const scalar_t* v_bh = v_rows.rows(bh);
      const bool* valid_b = valid_ptr + b * length;
      for (int64_t i = 0; i < d; ++i) query[i] = static_cast<T>(qk_bh[s.position * qk_rows.row_stride + i]);
      // Stage 2: per round, the window's key positions in sorted order, then attention over them.
      for (int64_t r = 0; r < s.n_hashes; ++r) {
        const int64_t own_chunk = (r * s.padded_len + ranks[r]) / s.chunk_len;
        for (int64_t c = 0; c < n_neighbours; ++c) {
          const int64_t chunk = ((own_chunk + c - s.n_chunks_before) % n_chunks + n_chunks) % n_chunks;
          const int64_t start = chunk * s.chunk_len, round = start / s.padded_len, first = start % s.padded_len;
          const int64_t* m_row = merged_rows + round * s.n_merged;
          const int64_t* r_row = recent_rows + round * s.recent_len;
          int64_t i = merge_split(m_row, s.n_merged, r_row, n_in_recent, std::min(first, length));
          int64_t j = std::min(first, length) - i;
          int64_t* out_positions = key_positions.data() + c * s.chunk_len;
          for (int64_t k = 0; k < s.chunk_len; ++k) {
            const int64_t rank = first + k;
            if (rank >= length) {
              out_positions[k] = rank;  // the padding past the position, sorted last
            } else if (j >= n_in_recent || (i < s.n_merged && m_row[i] < r_row[j])) {
              out_positions[k] = static_cast<int64_t>(static_cast<uint64_t>(m_row[i++]) & kPositionMask);
            } else {
              out_positions[k] = static_cast<int64_t>(static_cast<uint64_t>(r_row[j++]) & kPositionMask);
            }
          }
        }
        T top = -std::numeric_limits<T>::infinity();
        for (int64_t w = 0; w < window; ++w) {
          const int64_t p = key_positions[w];
          T score = static_cast<T>(masks.forbidden);
          if (p <= s.position && valid_b[p]) {
            const scalar_t* key = qk_bh + p * qk_rows.row_stride;
            score = dot<T>(query.data(), key, d) * key_scale(key, d, inv_sqrt_dim);
          }
          if (p == s.position) score = static_cast<T>(masks.self);
          scores[w] = score;
          top = std::max(top, score);
        }
        T total = 0;
        for (int64_t w = 0; w < window; ++w) total += std::exp(scores[w] - top);
        const T lse = top + std::log(total);
        std::fill(acc.begin(), acc.end(), T(0));
        for (int64_t w = 0; w < window; ++w) {
          const T p = std::exp(scores[w] - lse);
          const scalar_t* value = v_bh + std::min(key_positions[w], s.position) * v_rows.row_stride;
          for (int64_t e = 0; e < d; ++e) acc[e] += p * static_cast<T>(value[e]);
        }
        std::copy(acc.begin(), acc.end(), round_out.begin() + r * d);
        round_lse[r] = lse;
      }
      // Stage 3: rounds weighted by exp(lse_r - logsumexp_r lse_r).
      const T top = *std::max_element(round_lse.begin(), round_lse.end());
      T total = 0;
      for (int64_t r = 0; r < s.n_hashes; ++r) total += std::exp(round_lse[r] - top);
      const T lse_all = top + std::log(total);
      std::fill(acc.begin(), acc.end(), T(0));
      for (int64_t r = 0; r < s.n_hashes; ++r) {
        const T weight = std::exp(round_lse[r] - lse_all);
        for (int64_t e = 0; e < d; ++e) acc[e] += weight * round_out[r * d + e];
      }
      scalar_t* out_bh = out.data_ptr<scalar_t>() + bh * d;
      for (int64_t e = 0; e < d; ++e) out_bh[e] = static_cast<scalar_t>(acc[e]);
    }
  });
}

at::Tensor lsh_decode_step_cpu(const at::Tensor& qk_in, const at::Tensor& v_in, const at::Tensor& merged_in,
                               at::Tensor& recent, int64_t n_recent, const at::Tensor& sort_keys_in,
                               const at::Tensor& key_valid_in, int64_t position, int64_t padded_len, int64_t chunk_len,
                               int64_t n_chunks_before, int64_t n_chunks_after) {
  const StepShape s = check_step(qk_in, v_in, merged_in, recent, n_recent, sort_keys_in, key_valid_in, position,
                                 padded_len, chunk_len, n_chunks_before, n_chunks_after);
  TORCH_CHECK_VALUE(recent.is_contiguous(), kOp, ": recent must be contiguous (the op inserts into it in place)");
  const at::Tensor qk = with_contiguous_rows(qk_in), v = with_contiguous_rows(v_in);
  const at::Tensor merged = merged_in.contiguous(), sort_keys = sort_keys_in.contiguous();
  const at::Tensor key_valid = key_valid_in.contiguous();
  at::Tensor out = at::empty({s.batch, s.heads, s.head_dim}, qk.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, qk.scalar_type(), kOp, [&] {
    decode_kernel<scalar_t>(qk, v, merged, recent, sort_keys, key_valid, s, out);
  });
  return out;
}

}  // namespace
}  // namespace reformer_kernels::cpu

TORCH_LIBRARY_IMPL(reformer_kernels, CPU, m) { m.impl("lsh_decode_step", &reformer_kernels::cpu::lsh_decode_step_cpu); }
