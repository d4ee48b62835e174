// Bucket sort on the GPU: every (batch, head) row in one device-wide CUB radix sort of the packed
// keys of sort_keys.h (row * num_buckets + bucket) with int32 within-row positions as values. One
// sort over all rows fills the GPU whatever B * H is (a segmented sort runs a thread block per row:
// 8 of an H100's 132 SMs at B * H = 8). Radix sort is stable, so ties keep position order; rows keep
// apart and in order, so the sorted values are each row's sorted_idx as they are. Only the bits the
// largest key needs are sorted (32-bit keys where rows * num_buckets <= 2^32), so the pass count is
// ceil(log2(rows * num_buckets) / 8). No inverse permutation: functional.bucket_sort scatters one
// for the callers that ask. bucket_sort packs int64 ids into keys first, one pass; bucket_sort_packed
// sorts the keys and positions that lsh_hash_packed writes, which need none.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <cub/device/device_radix_sort.cuh>
#include <torch/library.h>
#include <torch/types.h>

#include "../sort_keys.h"

namespace reformer_kernels {

namespace {

// The sort's prologue, one pass: ids to packed keys, and the positions. An id outside
// [0, num_buckets) (the unchecked direct call) is clamped into its row, so the result stays a
// per-row permutation and nothing is written out of bounds.
template <typename key_t>
__global__ void pack_keys_and_positions(const int64_t* __restrict__ buckets, key_t* __restrict__ keys,
                                        int32_t* __restrict__ positions, int64_t total, int64_t n,
                                        int64_t num_buckets) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < total) {
    const int64_t row = i / n;
    const int64_t id = buckets[i];
    const int64_t bucket = id < 0 ? 0 : (id < num_buckets ? id : num_buckets - 1);
    keys[i] = pack_sort_key<key_t>(row, bucket, num_buckets);
    positions[i] = static_cast<int32_t>(i - row * n);
  }
}

// CUB's sort call `sort(temp, temp_bytes)` twice: for the size of its scratch, then with it.
template <typename Sort>
void with_scratch(const at::TensorOptions& options, Sort sort) {
  size_t temp_bytes = 0;
  C10_CUDA_CHECK(sort(nullptr, temp_bytes));
  at::Tensor temp = at::empty({static_cast<int64_t>(temp_bytes)}, options.dtype(at::kByte));
  C10_CUDA_CHECK(sort(temp.data_ptr(), temp_bytes));
}

// Packs, sorts and returns the tensor that ends up holding the sorted positions (CUB's double
// buffer picks one of the two, on the host, from the pass count).
template <typename key_t>
at::Tensor sort_packed(const at::Tensor& buckets, int64_t n, int64_t num_buckets, int end_bit) {
  const int64_t total = buckets.numel();
  auto stream = at::cuda::getCurrentCUDAStream();
  const auto key_opts = buckets.options().dtype(sizeof(key_t) == 4 ? at::kInt : at::kLong);
  at::Tensor keys = at::empty({2, total}, key_opts);
  at::Tensor positions = at::empty(buckets.sizes(), buckets.options().dtype(at::kInt));
  at::Tensor positions_alt = at::empty_like(positions);
  key_t* key_ptr = reinterpret_cast<key_t*>(keys.data_ptr());
  constexpr int threads = 256;
  const int64_t blocks = (total + threads - 1) / threads;
  pack_keys_and_positions<key_t><<<blocks, threads, 0, stream>>>(buckets.data_ptr<int64_t>(), key_ptr,
                                                                  positions.data_ptr<int32_t>(), total, n, num_buckets);
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  cub::DoubleBuffer<key_t> key_buffers(key_ptr, key_ptr + total);
  cub::DoubleBuffer<int32_t> value_buffers(positions.data_ptr<int32_t>(), positions_alt.data_ptr<int32_t>());
  with_scratch(buckets.options(), [&](void* temp, size_t& temp_bytes) {
    return cub::DeviceRadixSort::SortPairs(temp, temp_bytes, key_buffers, value_buffers, static_cast<int>(total), 0,
                                           end_bit, stream);
  });
  return value_buffers.selector == 0 ? positions : positions_alt;
}

// Sorts keys the caller owns without writing them: CUB's out-of-place sort, into new buffers.
template <typename key_t>
at::Tensor sort_pairs(const at::Tensor& keys, const at::Tensor& positions, int end_bit) {
  const int64_t total = keys.numel();
  auto stream = at::cuda::getCurrentCUDAStream();
  at::Tensor keys_out = at::empty_like(keys);
  at::Tensor sorted = at::empty_like(positions);
  const key_t* key_ptr = reinterpret_cast<const key_t*>(keys.data_ptr());
  key_t* key_out_ptr = reinterpret_cast<key_t*>(keys_out.data_ptr());
  with_scratch(keys.options(), [&](void* temp, size_t& temp_bytes) {
    return cub::DeviceRadixSort::SortPairs(temp, temp_bytes, key_ptr, key_out_ptr, positions.data_ptr<int32_t>(),
                                           sorted.data_ptr<int32_t>(), static_cast<int>(total), 0, end_bit, stream);
  });
  return sorted;
}

// CUB counts the items of one sort in int here.
void check_cub_item_count(const at::Tensor& keys, const char* op) {
  TORCH_CHECK_VALUE(keys.numel() <= INT32_MAX, op, ": ", keys.numel(),
                    " keys are more than one CUDA sort takes (2^31 - 1); sort fewer rows per call");
}

}  // namespace

at::Tensor bucket_sort_cuda(const at::Tensor& buckets, int64_t num_buckets) {
  TORCH_CHECK_TYPE(buckets.scalar_type() == at::kLong, "bucket_sort: buckets must be int64, got ",
                   buckets.scalar_type(), "; convert with buckets.long()");
  const int64_t n = check_sort_rows(buckets, num_buckets, "bucket_sort", "buckets", "num_buckets");
  check_cub_item_count(buckets, "bucket_sort");
  const c10::cuda::CUDAGuard guard(buckets.device());
  const at::Tensor keys = buckets.contiguous();
  const int64_t total = keys.numel();
  if (total == 0) return at::empty(keys.sizes(), keys.options().dtype(at::kInt));
  const int64_t rows = total / n;
  const int key_bits = packed_key_bits(rows, num_buckets);
  TORCH_CHECK_VALUE(key_bits <= 64, "bucket_sort: ", rows, " rows * num_buckets=", num_buckets,
                    " do not fit the 64-bit sort key; sort fewer rows per call or pass fewer buckets");
  return key_bits <= 32 ? sort_packed<uint32_t>(keys, n, num_buckets, key_bits)
                        : sort_packed<uint64_t>(keys, n, num_buckets, key_bits);
}

// Keys of a row outside [row * num_keys, (row + 1) * num_keys) (the unchecked direct call) sort into
// another row's place, but only positions are written, so nothing is written out of bounds.
at::Tensor bucket_sort_packed_cuda(const at::Tensor& keys_in, const at::Tensor& positions_in, int64_t num_keys) {
  const char* op = "bucket_sort_packed";
  const int64_t n = check_packed_sort_inputs(keys_in, positions_in, num_keys, op);
  check_cub_item_count(keys_in, op);
  const c10::cuda::CUDAGuard guard(keys_in.device());
  const at::Tensor keys = keys_in.contiguous(), positions = positions_in.contiguous();
  if (keys.numel() == 0) return at::empty(keys.sizes(), positions.options());
  const int64_t rows = keys.numel() / n;
  const int key_bits = packed_key_bits(rows, num_keys);
  const int width = keys.scalar_type() == at::kUInt32 ? 32 : 64;
  TORCH_CHECK_VALUE(key_bits <= width, op, ": ", rows, " rows * num_keys=", num_keys, " need ", key_bits,
                    "-bit keys, but keys are uint", width, "; hash with lsh_hash_packed, which picks the width");
  return width == 32 ? sort_pairs<uint32_t>(keys, positions, key_bits)
                     : sort_pairs<uint64_t>(keys, positions, key_bits);
}

}  // namespace reformer_kernels

TORCH_LIBRARY_IMPL(reformer_kernels, CUDA, m) {
  m.impl("bucket_sort", &reformer_kernels::bucket_sort_cuda);
  m.impl("bucket_sort_packed", &reformer_kernels::bucket_sort_packed_cuda);
}
