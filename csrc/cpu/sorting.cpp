// Stable sort of bucket ids per (batch, head) row, rows in parallel. Stability (ties keep position
// order) is what makes the LSH sort match the reference. A counting sort, O(N + num_buckets), where
// num_buckets is at most the row length N, as it is for LSH's buckets; past that its counters would
// make memory follow the argument instead of the input (num_buckets = 2^33 on four ids asks for
// 64 GiB), so those rows sort the packed keys of sort_keys.h with their positions, as the GPU sort
// does (a thread's rows in one sort): O(N log N), the same permutation. sorted_idx is int32: a
// position within a row fits whenever the row does (N < 2^31), and half the bytes is what the
// attention kernels read it for.
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <torch/types.h>

#include <algorithm>
#include <utility>
#include <vector>

#include "../sort_keys.h"

namespace reformer_kernels {

namespace {

// Sorts rows [first, last) of keys as one sequence of (packed key, position) pairs, the key's row
// counted from key_row_base, and writes each row's positions in sorted order.
template <typename key_t>
void sort_packed_rows(const int64_t* keys, int64_t first, int64_t last, int64_t key_row_base, int64_t n,
                      int64_t num_buckets, int32_t* sorted) {
  std::vector<std::pair<key_t, int32_t>> pairs((last - first) * n);
  for (int64_t row = first; row < last; ++row) {
    for (int64_t i = 0; i < n; ++i) {
      pairs[(row - first) * n + i] = {pack_sort_key<key_t>(row - key_row_base, keys[row * n + i], num_buckets),
                                      static_cast<int32_t>(i)};
    }
  }
  // Keys tell rows apart, positions tell a row's ties apart: the pairs are distinct, so their order
  // is the stable one.
  std::sort(pairs.begin(), pairs.end());
  for (size_t slot = 0; slot < pairs.size(); ++slot) sorted[first * n + slot] = pairs[slot].second;
}

}  // namespace

at::Tensor bucket_sort_cpu(const at::Tensor& buckets, int64_t num_buckets) {
  TORCH_CHECK_TYPE(buckets.scalar_type() == at::kLong, "bucket_sort: buckets must be int64, got ",
                   buckets.scalar_type(), "; convert with buckets.long()");
  TORCH_CHECK_VALUE(buckets.dim() >= 1, "bucket_sort: buckets must have at least one dimension");
  TORCH_CHECK_VALUE(num_buckets >= 1, "bucket_sort: num_buckets must be >= 1, got ", num_buckets);
  const int64_t n = buckets.size(-1);
  TORCH_CHECK_VALUE(n <= INT32_MAX, "bucket_sort: rows of ", n,
                    " ids are longer than int32 sorted_idx can index (2^31 - 1); sort shorter rows");
  const at::Tensor keys = buckets.contiguous();
  const int64_t rows = n == 0 ? 0 : keys.numel() / n;
  at::Tensor sorted_idx = at::empty(keys.sizes(), keys.options().dtype(at::kInt));
  const int64_t* key_ptr = keys.data_ptr<int64_t>();
  int32_t* sorted_ptr = sorted_idx.data_ptr<int32_t>();

  // Range errors are collected per row and raised after the parallel region.
  std::vector<int64_t> bad_value(rows, 0);
  std::vector<char> bad(rows, 0);
  const bool counting = num_buckets <= n;
  const int key_bits = rows == 0 ? 1 : packed_key_bits(rows, num_buckets);
  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    bool ok = true;
    for (int64_t row = begin; row < end; ++row) {
      const int64_t* k = key_ptr + row * n;
      for (int64_t i = 0; i < n; ++i) {
        if (k[i] < 0 || k[i] >= num_buckets) {
          bad[row] = 1;
          bad_value[row] = k[i];
          ok = false;
          break;
        }
      }
    }
    if (!ok) return;
    if (counting) {
      std::vector<int64_t> start(num_buckets + 1);
      for (int64_t row = begin; row < end; ++row) {
        const int64_t* k = key_ptr + row * n;
        int32_t* s = sorted_ptr + row * n;
        std::fill(start.begin(), start.end(), 0);
        for (int64_t i = 0; i < n; ++i) ++start[k[i] + 1];
        for (int64_t b = 0; b < num_buckets; ++b) start[b + 1] += start[b];
        for (int64_t i = 0; i < n; ++i) s[start[k[i]]++] = static_cast<int32_t>(i);
      }
    } else if (key_bits <= 32) {
      sort_packed_rows<uint32_t>(key_ptr, begin, end, 0, n, num_buckets, sorted_ptr);
    } else if (key_bits <= 64) {
      sort_packed_rows<uint64_t>(key_ptr, begin, end, 0, n, num_buckets, sorted_ptr);
    } else {
      // row * num_buckets would not fit 64 bits: each row alone, its keys the bucket ids.
      for (int64_t row = begin; row < end; ++row) {
        sort_packed_rows<uint64_t>(key_ptr, row, row + 1, row, n, num_buckets, sorted_ptr);
      }
    }
  });
  for (int64_t row = 0; row < rows; ++row) {
    TORCH_CHECK_VALUE(!bad[row], "bucket_sort: bucket id ", bad_value[row], " in row ", row,
                      " is outside [0, num_buckets=", num_buckets,
                      "); pass the number of buckets including round offsets (n_hashes * n_buckets)");
  }
  return sorted_idx;
}

}  // namespace reformer_kernels

TORCH_LIBRARY_IMPL(reformer_kernels, CPU, m) { m.impl("bucket_sort", &reformer_kernels::bucket_sort_cpu); }
