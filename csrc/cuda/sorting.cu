// Bucket sort on the GPU: one CUB segmented radix sort of (bucket id, position) pairs, a segment
// per (batch, head) row. Radix sort is stable, and the keys are narrowed to 32 bits and only the
// bits that num_buckets needs are sorted, so the pass count is ceil(log2(num_buckets) / 8).
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <cub/device/device_segmented_radix_sort.cuh>
#include <torch/library.h>
#include <torch/types.h>

namespace reformer_kernels {

namespace {

__global__ void narrow_keys_and_iota(const int64_t* __restrict__ buckets, int32_t* __restrict__ keys,
                                     int64_t* __restrict__ positions, int64_t total, int64_t n) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < total) {
    keys[i] = static_cast<int32_t>(buckets[i]);
    positions[i] = i % n;
  }
}

__global__ void invert_permutation(const int64_t* __restrict__ sorted_idx, int64_t* __restrict__ undo_sort,
                                   int64_t total, int64_t n) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < total) {
    const int64_t row_start = i - i % n;
    undo_sort[row_start + sorted_idx[i]] = i - row_start;
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> bucket_sort_cuda(const at::Tensor& buckets, int64_t num_buckets) {
  TORCH_CHECK_TYPE(buckets.scalar_type() == at::kLong, "bucket_sort: buckets must be int64, got ",
                   buckets.scalar_type(), "; convert with buckets.long()");
  TORCH_CHECK_VALUE(buckets.dim() >= 1, "bucket_sort: buckets must have at least one dimension");
  TORCH_CHECK_VALUE(num_buckets >= 1 && num_buckets <= INT32_MAX, "bucket_sort: num_buckets must be in [1, 2^31), got ",
                    num_buckets);
  const c10::cuda::CUDAGuard guard(buckets.device());
  const at::Tensor keys_in64 = buckets.contiguous();
  const int64_t n = keys_in64.size(-1);
  const int64_t total = keys_in64.numel();
  at::Tensor sorted_idx = at::empty_like(keys_in64);
  at::Tensor undo_sort = at::empty_like(keys_in64);
  if (total == 0) return {sorted_idx, undo_sort};
  const int64_t rows = total / n;
  // CUB's segmented radix sort counts items and segments in int.
  TORCH_CHECK_VALUE(total <= INT32_MAX, "bucket_sort: ", total,
                    " keys are more than one CUDA segmented sort takes (2^31 - 1); sort fewer rows per call");

  auto stream = at::cuda::getCurrentCUDAStream();
  const auto int_opts = keys_in64.options().dtype(at::kInt);
  at::Tensor keys_in = at::empty({total}, int_opts);
  at::Tensor keys_out = at::empty({total}, int_opts);
  at::Tensor positions = at::empty({total}, keys_in64.options());
  at::Tensor offsets = at::arange(0, rows + 1, keys_in64.options()).mul_(n);
  constexpr int threads = 256;
  const int64_t blocks = (total + threads - 1) / threads;
  narrow_keys_and_iota<<<blocks, threads, 0, stream>>>(keys_in64.data_ptr<int64_t>(), keys_in.data_ptr<int32_t>(),
                                                       positions.data_ptr<int64_t>(), total, n);
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  int end_bit = 1;
  while ((int64_t{1} << end_bit) < num_buckets) ++end_bit;
  const int64_t* offsets_ptr = offsets.data_ptr<int64_t>();
  size_t temp_bytes = 0;
  C10_CUDA_CHECK(cub::DeviceSegmentedRadixSort::SortPairs(
      nullptr, temp_bytes, keys_in.data_ptr<int32_t>(), keys_out.data_ptr<int32_t>(), positions.data_ptr<int64_t>(),
      sorted_idx.data_ptr<int64_t>(), total, static_cast<int>(rows), offsets_ptr, offsets_ptr + 1, 0, end_bit, stream));
  at::Tensor temp = at::empty({static_cast<int64_t>(temp_bytes)}, keys_in64.options().dtype(at::kByte));
  C10_CUDA_CHECK(cub::DeviceSegmentedRadixSort::SortPairs(
      temp.data_ptr(), temp_bytes, keys_in.data_ptr<int32_t>(), keys_out.data_ptr<int32_t>(),
      positions.data_ptr<int64_t>(), sorted_idx.data_ptr<int64_t>(), total, static_cast<int>(rows), offsets_ptr,
      offsets_ptr + 1, 0, end_bit, stream));

  invert_permutation<<<blocks, threads, 0, stream>>>(sorted_idx.data_ptr<int64_t>(), undo_sort.data_ptr<int64_t>(),
                                                     total, n);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {sorted_idx, undo_sort};
}

}  // namespace reformer_kernels

TORCH_LIBRARY_IMPL(reformer_kernels, CUDA, m) { m.impl("bucket_sort", &reformer_kernels::bucket_sort_cuda); }
