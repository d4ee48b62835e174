// The packed sort key of bucket_sort, shared by its CPU and CUDA kernels so that the CPU tests
// exercise the arithmetic the GPU sort runs on. All (batch, head) rows sort in one radix sort of
// key = row * num_buckets + bucket: rows keep apart and in order, within a row the keys order by
// bucket, and the values being within-row positions, the sort's stability orders ties by
// position. The key is as wide as the largest one needs: 32 bits (a 4-byte radix sort that also
// skips the top bits) when rows * num_buckets <= 2^32, else 64. lsh_hash_packed writes these keys
// straight from the hash (with num_buckets the hash's num_keys), so that the GPU sort needs no
// packing pass; lsh_hash writes the ids alone, which are the keys packed with num_buckets = 0.
#pragma once

#include <ATen/ATen.h>
#include <c10/macros/Macros.h>
#include <c10/util/Exception.h>

#include <cstdint>

namespace reformer_kernels {

// Bits of the largest packed key rows * num_buckets - 1 (at least 1: CUB sorts bits
// [0, end_bit) and wants a non-empty range), or 65 where it does not fit 64 bits. rows, num_buckets >= 1.
inline int packed_key_bits(int64_t rows, int64_t num_buckets) {
  const uint64_t buckets = static_cast<uint64_t>(num_buckets);
  if (static_cast<uint64_t>(rows - 1) > (UINT64_MAX - (buckets - 1)) / buckets) return 65;
  const uint64_t largest = static_cast<uint64_t>(rows - 1) * buckets + (buckets - 1);
  int bits = 1;
  while (bits < 64 && (largest >> bits) != 0) ++bits;
  return bits;
}

template <typename key_t>
C10_HOST_DEVICE inline key_t pack_sort_key(int64_t row, int64_t bucket, int64_t num_buckets) {
  return static_cast<key_t>(row) * static_cast<key_t>(num_buckets) + static_cast<key_t>(bucket);
}

// The dtype of the packed keys of rows * num_buckets entries: uint32 up to 32 bits, uint64 up to 64;
// past that an error naming op.
inline at::ScalarType packed_key_dtype(int64_t rows, int64_t num_buckets, const char* op) {
  const int bits = packed_key_bits(rows, num_buckets);
  TORCH_CHECK_VALUE(bits <= 64, op, ": ", rows, " rows * num_keys=", num_buckets,
                    " do not fit a 64-bit sort key; pass fewer rows (batch * heads) per call or fewer buckets");
  return bits <= 32 ? at::kUInt32 : at::kUInt64;
}

// The row length n of a sort over (..., n) of ``name`` (ids or packed keys) into num_keys keys per
// row (the argument ``count_name``), after the checks every bucket sort shares.
inline int64_t check_sort_rows(const at::Tensor& keys, int64_t num_keys, const char* op, const char* name,
                               const char* count_name) {
  TORCH_CHECK_VALUE(keys.dim() >= 1, op, ": ", name, " must have at least one dimension");
  TORCH_CHECK_VALUE(num_keys >= 1, op, ": ", count_name, " must be >= 1, got ", num_keys);
  const int64_t n = keys.size(-1);
  TORCH_CHECK_VALUE(n <= INT32_MAX, op, ": rows of ", n, " ", name,
                    " are longer than int32 sorted_idx can index (2^31 - 1); sort shorter rows");
  return n;
}

// bucket_sort_packed's inputs: packed keys (lsh_hash_packed's) and their int32 positions, alike in
// shape and device; returns the row length n.
inline int64_t check_packed_sort_inputs(const at::Tensor& keys, const at::Tensor& positions, int64_t num_keys,
                                        const char* op) {
  TORCH_CHECK_TYPE(keys.scalar_type() == at::kUInt32 || keys.scalar_type() == at::kUInt64, op,
                   ": keys must be uint32 or uint64 packed keys (lsh_hash_packed), got ", keys.scalar_type());
  TORCH_CHECK_TYPE(positions.scalar_type() == at::kInt, op, ": positions must be int32, got ", positions.scalar_type());
  TORCH_CHECK_VALUE(positions.sizes() == keys.sizes() && positions.device() == keys.device(), op, ": positions ",
                    positions.sizes(), " on ", positions.device(), " must match keys ", keys.sizes(), " on ",
                    keys.device());
  return check_sort_rows(keys, num_keys, op, "keys", "num_keys");
}

}  // namespace reformer_kernels
