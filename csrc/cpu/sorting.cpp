// Stable sort of bucket ids per (batch, head) row, rows in parallel. Stability (ties keep position
// order) is what makes the LSH sort match the reference. A counting sort, O(N + num_buckets), where
// num_buckets is at most the row length N, as it is for LSH's buckets; past that its counters would
// make memory follow the argument instead of the input (num_buckets = 2^33 on four ids asks for
// 64 GiB), so those rows sort the packed keys of sort_keys.h with their positions, as the GPU sort
// does (a thread's rows in one sort): O(N log N), the same permutation. sorted_idx is int32: a
// position within a row fits whenever the row does (N < 2^31), and half the bytes is what the
// attention kernels read it for. bucket_sort_packed sorts the packed keys and positions of
// lsh_hash_packed (the GPU sort's input) the same way, its ids the keys less row * num_keys.
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <torch/types.h>

#include <algorithm>
#include <utility>
#include <vector>

#include "../sort_keys.h"

namespace reformer_kernels {

namespace {

// Sorts rows [first, last) as one sequence of (packed key, entry) pairs, the key's row counted
// from key_row_base, and writes each row's values in sorted order.
template <typename key_t, typename IdOf, typename ValueOf>
void sort_packed_rows(const IdOf& id_of, const ValueOf& value_of, int64_t first, int64_t last, int64_t key_row_base,
                      int64_t n, int64_t num_buckets, int32_t* sorted) {
  std::vector<std::pair<key_t, int32_t>> pairs((last - first) * n);
  for (int64_t row = first; row < last; ++row) {
    for (int64_t i = 0; i < n; ++i) {
      pairs[(row - first) * n + i] = {pack_sort_key<key_t>(row - key_row_base, id_of(row, i), num_buckets),
                                      static_cast<int32_t>(i)};
    }
  }
  // Keys tell rows apart, entries tell a row's ties apart: the pairs are distinct, so their order
  // is the stable one; rows keep their order, so slot / n is the row.
  std::sort(pairs.begin(), pairs.end());
  for (size_t slot = 0; slot < pairs.size(); ++slot) {
    sorted[first * n + slot] = value_of(first + static_cast<int64_t>(slot) / n, pairs[slot].second);
  }
}

// Stable sort of `rows` rows of n entries by id_of(row, i), writing value_of(row, i) in sorted
// order. Returns the first entry, row * n + i, whose id is outside [0, num_buckets), or -1.
template <typename IdOf, typename ValueOf>
int64_t sort_rows(int64_t rows, int64_t n, int64_t num_buckets, const IdOf& id_of, const ValueOf& value_of,
                  int32_t* sorted_ptr) {
  // Range errors are collected per row and reported after the parallel region.
  std::vector<int64_t> bad(rows, -1);
  const bool counting = num_buckets <= n;
  const int key_bits = rows == 0 ? 1 : packed_key_bits(rows, num_buckets);
  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    bool ok = true;
    for (int64_t row = begin; row < end; ++row) {
      for (int64_t i = 0; i < n; ++i) {
        const int64_t id = id_of(row, i);
        if (id < 0 || id >= num_buckets) {
          bad[row] = row * n + i;
          ok = false;
          break;
        }
      }
    }
    if (!ok) return;
    if (counting) {
      std::vector<int64_t> start(num_buckets + 1);
      for (int64_t row = begin; row < end; ++row) {
        int32_t* s = sorted_ptr + row * n;
        std::fill(start.begin(), start.end(), 0);
        for (int64_t i = 0; i < n; ++i) ++start[id_of(row, i) + 1];
        for (int64_t b = 0; b < num_buckets; ++b) start[b + 1] += start[b];
        for (int64_t i = 0; i < n; ++i) s[start[id_of(row, i)]++] = value_of(row, i);
      }
    } else if (key_bits <= 32) {
      sort_packed_rows<uint32_t>(id_of, value_of, begin, end, 0, n, num_buckets, sorted_ptr);
    } else if (key_bits <= 64) {
      sort_packed_rows<uint64_t>(id_of, value_of, begin, end, 0, n, num_buckets, sorted_ptr);
    } else {
      // row * num_buckets would not fit 64 bits: each row alone, its keys the bucket ids.
      for (int64_t row = begin; row < end; ++row) {
        sort_packed_rows<uint64_t>(id_of, value_of, row, row + 1, row, n, num_buckets, sorted_ptr);
      }
    }
  });
  for (int64_t row = 0; row < rows; ++row) {
    if (bad[row] >= 0) return bad[row];
  }
  return -1;
}

}  // namespace

at::Tensor bucket_sort_cpu(const at::Tensor& buckets, int64_t num_buckets) {
  TORCH_CHECK_TYPE(buckets.scalar_type() == at::kLong, "bucket_sort: buckets must be int64, got ",
                   buckets.scalar_type(), "; convert with buckets.long()");
  const int64_t n = check_sort_rows(buckets, num_buckets, "bucket_sort", "buckets", "num_buckets");
  const at::Tensor keys = buckets.contiguous();
  const int64_t rows = n == 0 ? 0 : keys.numel() / n;
  at::Tensor sorted_idx = at::empty(keys.sizes(), keys.options().dtype(at::kInt));
  const int64_t* key_ptr = keys.data_ptr<int64_t>();
  const int64_t bad = sort_rows(
      rows, n, num_buckets, [&](int64_t row, int64_t i) { return key_ptr[row * n + i]; },
      [](int64_t, int64_t i) { return static_cast<int32_t>(i); }, sorted_idx.data_ptr<int32_t>());
  TORCH_CHECK_VALUE(bad < 0, "bucket_sort: bucket id ", bad < 0 ? 0 : key_ptr[bad], " in row ",
                    bad / std::max<int64_t>(n, 1), " is outside [0, num_buckets=", num_buckets,
                    "); pass the number of buckets including round offsets (n_hashes * n_buckets)");
  return sorted_idx;
}

namespace {

template <typename key_t>
at::Tensor sort_packed_keys(const at::Tensor& keys, const at::Tensor& positions, int64_t n, int64_t num_keys) {
  const int64_t rows = n == 0 ? 0 : keys.numel() / n;
  at::Tensor sorted_idx = at::empty(keys.sizes(), positions.options());
  const key_t* key_ptr = reinterpret_cast<const key_t*>(keys.data_ptr());
  const int32_t* position_ptr = positions.data_ptr<int32_t>();
  const uint64_t width = static_cast<uint64_t>(num_keys);
  // A key below its row's range wraps to a huge id, so one comparison rejects both sides.
  const auto id_of = [&](int64_t row, int64_t i) {
    const uint64_t id = static_cast<uint64_t>(key_ptr[row * n + i]) - static_cast<uint64_t>(row) * width;
    return id < width ? static_cast<int64_t>(id) : int64_t{-1};
  };
  const int64_t bad = sort_rows(
      rows, n, num_keys, id_of, [&](int64_t row, int64_t i) { return position_ptr[row * n + i]; },
      sorted_idx.data_ptr<int32_t>());
  if (bad >= 0) {
    const int64_t row = bad / n;
    TORCH_CHECK_VALUE(false, "bucket_sort_packed: key ", static_cast<uint64_t>(key_ptr[bad]), " in row ", row,
                      " is outside its row's [row * num_keys, (row + 1) * num_keys) = [",
                      static_cast<uint64_t>(row) * width, ", ", static_cast<uint64_t>(row + 1) * width,
                      "); pack keys as lsh_hash_packed does, with num_keys its number of ids");
  }
  return sorted_idx;
}

}  // namespace

at::Tensor bucket_sort_packed_cpu(const at::Tensor& keys_in, const at::Tensor& positions_in, int64_t num_keys) {
  const int64_t n = check_packed_sort_inputs(keys_in, positions_in, num_keys, "bucket_sort_packed");
  const at::Tensor keys = keys_in.contiguous(), positions = positions_in.contiguous();
  return keys.scalar_type() == at::kUInt32 ? sort_packed_keys<uint32_t>(keys, positions, n, num_keys)
                                           : sort_packed_keys<uint64_t>(keys, positions, n, num_keys);
}

}  // namespace reformer_kernels

TORCH_LIBRARY_IMPL(reformer_kernels, CPU, m) {
  m.impl("bucket_sort", &reformer_kernels::bucket_sort_cpu);
  m.impl("bucket_sort_packed", &reformer_kernels::bucket_sort_packed_cpu);
}
