// Stable sort of bucket ids per (batch, head) row, rows in parallel. Stability (ties keep position
// order) is what makes the LSH sort match the reference. A counting sort, O(N + num_buckets), where
// num_buckets is at most the row length N, as it is for LSH's buckets; past that its counters would
// make memory follow the argument instead of the input (num_buckets = 2^33 on four ids asks for
// 64 GiB), so those rows sort (id, position) pairs instead: O(N log N), the same permutation.
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <torch/types.h>

#include <algorithm>
#include <utility>
#include <vector>

namespace reformer_kernels {

std::tuple<at::Tensor, at::Tensor> bucket_sort_cpu(const at::Tensor& buckets, int64_t num_buckets) {
  TORCH_CHECK_TYPE(buckets.scalar_type() == at::kLong, "bucket_sort: buckets must be int64, got ",
                   buckets.scalar_type(), "; convert with buckets.long()");
  TORCH_CHECK_VALUE(buckets.dim() >= 1, "bucket_sort: buckets must have at least one dimension");
  TORCH_CHECK_VALUE(num_buckets >= 1, "bucket_sort: num_buckets must be >= 1, got ", num_buckets);
  const at::Tensor keys = buckets.contiguous();
  const int64_t n = keys.size(-1);
  const int64_t rows = n == 0 ? 0 : keys.numel() / n;
  at::Tensor sorted_idx = at::empty_like(keys);
  at::Tensor undo_sort = at::empty_like(keys);
  const int64_t* key_ptr = keys.data_ptr<int64_t>();
  int64_t* sorted_ptr = sorted_idx.data_ptr<int64_t>();
  int64_t* undo_ptr = undo_sort.data_ptr<int64_t>();

  // Range errors are collected per row and raised after the parallel region.
  std::vector<int64_t> bad_value(rows, 0);
  std::vector<char> bad(rows, 0);
  const bool counting = num_buckets <= n;
  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> start(counting ? num_buckets + 1 : 0);
    std::vector<std::pair<int64_t, int64_t>> pairs(counting ? 0 : n);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t* k = key_ptr + row * n;
      std::fill(start.begin(), start.end(), 0);
      bool ok = true;
      for (int64_t i = 0; i < n; ++i) {
        const int64_t b = k[i];
        if (b < 0 || b >= num_buckets) {
          bad[row] = 1;
          bad_value[row] = b;
          ok = false;
          break;
        }
        if (counting) {
          ++start[b + 1];
        } else {
          pairs[i] = {b, i};
        }
      }
      if (!ok) continue;
      int64_t* s = sorted_ptr + row * n;
      int64_t* u = undo_ptr + row * n;
      if (counting) {
        for (int64_t b = 0; b < num_buckets; ++b) start[b + 1] += start[b];
        for (int64_t i = 0; i < n; ++i) {
          const int64_t slot = start[k[i]]++;
          s[slot] = i;
          u[i] = slot;
        }
      } else {
        // Positions make the pairs distinct, so their order is the stable one.
        std::sort(pairs.begin(), pairs.end());
        for (int64_t slot = 0; slot < n; ++slot) {
          s[slot] = pairs[slot].second;
          u[pairs[slot].second] = slot;
        }
      }
    }
  });
  for (int64_t row = 0; row < rows; ++row) {
    TORCH_CHECK_VALUE(!bad[row], "bucket_sort: bucket id ", bad_value[row], " in row ", row,
                      " is outside [0, num_buckets=", num_buckets,
                      "); pass the number of buckets including round offsets (n_hashes * n_buckets)");
  }
  return {sorted_idx, undo_sort};
}

}  // namespace reformer_kernels

TORCH_LIBRARY_IMPL(reformer_kernels, CPU, m) { m.impl("bucket_sort", &reformer_kernels::bucket_sort_cpu); }
