// Bucket sort on the GPU: every (batch, head) row in one device-wide CUB radix sort of the packed
// keys of sort_keys.h (row * num_buckets + bucket) with int32 within-row positions as values. One
// sort over all rows fills the GPU whatever B * H is (a segmented sort runs a thread block per row:
// 8 of an H100's 132 SMs at B * H = 8). Radix sort is stable, so ties keep position order; rows keep
// apart and in order, so the sorted values are each row's sorted_idx as they are. Only the bits the
// largest key needs are sorted (32-bit keys where rows * num_buckets <= 2^32), so the pass count is
// ceil(log2(rows * num_buckets) / 8). No inverse permutation: functional.bucket_sort scatters one
// for the callers that ask.
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

// Sorts and returns the tensor that ends up holding the sorted positions (CUB's double buffer
// picks one of the two, on the host, from the pass count).
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
  const int items = static_cast<int>(total);
  size_t temp_bytes = 0;
  C10_CUDA_CHECK(
      cub::DeviceRadixSort::SortPairs(nullptr, temp_bytes, key_buffers, value_buffers, items, 0, end_bit, stream));
  at::Tensor temp = at::empty({static_cast<int64_t>(temp_bytes)}, buckets.options().dtype(at::kByte));
  C10_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(temp.data_ptr(), temp_bytes, key_buffers, value_buffers, items, 0,
                                                 end_bit, stream));
  return value_buffers.selector == 0 ? positions : positions_alt;
}

}  // namespace

at::Tensor bucket_sort_cuda(const at::Tensor& buckets, int64_t num_buckets) {
  TORCH_CHECK_TYPE(buckets.scalar_type() == at::kLong, "bucket_sort: buckets must be int64, got ",
                   buckets.scalar_type(), "; convert with buckets.long()");
  TORCH_CHECK_VALUE(buckets.dim() >= 1, "bucket_sort: buckets must have at least one dimension");
  TORCH_CHECK_VALUE(num_buckets >= 1, "bucket_sort: num_buckets must be >= 1, got ", num_buckets);
  const int64_t n = buckets.size(-1);
  TORCH_CHECK_VALUE(n <= INT32_MAX, "bucket_sort: rows of ", n,
                    " ids are longer than int32 sorted_idx can index (2^31 - 1); sort shorter rows");
  const c10::cuda::CUDAGuard guard(buckets.device());
  const at::Tensor keys = buckets.contiguous();
  const int64_t total = keys.numel();
  if (total == 0) return at::empty(keys.sizes(), keys.options().dtype(at::kInt));
  // CUB counts the items of one sort in int here.
  TORCH_CHECK_VALUE(total <= INT32_MAX, "bucket_sort: ", total,
                    " keys are more than one CUDA sort takes (2^31 - 1); sort fewer rows per call");
  const int64_t rows = total / n;
  const int key_bits = packed_key_bits(rows, num_buckets);
  TORCH_CHECK_VALUE(key_bits <= 64, "bucket_sort: ", rows, " rows * num_buckets=", num_buckets,
                    " do not fit the 64-bit sort key; sort fewer rows per call or pass fewer buckets");
  return key_bits <= 32 ? sort_packed<uint32_t>(keys, n, num_buckets, key_bits)
                        : sort_packed<uint64_t>(keys, n, num_buckets, key_bits);
}

}  // namespace reformer_kernels

TORCH_LIBRARY_IMPL(reformer_kernels, CUDA, m) { m.impl("bucket_sort", &reformer_kernels::bucket_sort_cuda); }
