// Angular LSH on the GPU in one launch: each thread rotates one (batch, head, position) vector for
// one hash round, takes the argmax over [xR, -xR] per bucket factor, applies the padding bucket and
// the round offset, and writes the int64 key in round-major order, ready for bucket_sort.
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>
#include <torch/types.h>

#include "../lsh_hash_checks.h"

namespace reformer_kernels {

namespace {

constexpr int kMaxFactors = 8;

struct BucketFactors {
  int64_t size[kMaxFactors];
  int count;
};

template <typename scalar_t, typename acc_t>
__global__ void lsh_hash_kernel(const scalar_t* __restrict__ vectors, const scalar_t* __restrict__ rotations,
                                const uint8_t* __restrict__ valid, int64_t* __restrict__ buckets, int64_t heads,
                                int64_t seq_len, int64_t head_dim, int64_t n_hashes, int64_t half_width,
                                BucketFactors factors, int64_t n_buckets, int64_t round_size, int64_t total) {
  const int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (index >= total) return;
  // index = ((row * n_hashes) + round) * seq_len + pos, so neighbouring threads read neighbouring rows.
  const int64_t pos = index % seq_len;
  const int64_t round = (index / seq_len) % n_hashes;
  const int64_t row = index / (seq_len * n_hashes);
  const int64_t batch = row / heads, head = row % heads;
  int64_t bucket = n_buckets;
  if (valid == nullptr || valid[batch * seq_len + pos]) {
    const scalar_t* x = vectors + (row * seq_len + pos) * head_dim;
    // rotations (heads, head_dim, n_hashes, half_width): column j of this round, row t of the head.
    const scalar_t* rot = rotations + (head * head_dim * n_hashes + round) * half_width;
    const int64_t rot_row_stride = n_hashes * half_width;
    bucket = 0;
    int64_t product = 1, column = 0;
    for (int f = 0; f < factors.count; ++f) {
      const int64_t half = factors.size[f] / 2;
      // argmax over [xR, -xR]: the largest xR (first on ties) against the smallest xR, whose
      // negation comes second in the concatenation and so loses ties.
      acc_t top = 0, bottom = 0;
      int64_t top_at = 0, bottom_at = 0;
      for (int64_t j = 0; j < half; ++j, ++column) {
        acc_t dot = 0;
        for (int64_t t = 0; t < head_dim; ++t)
          dot += static_cast<acc_t>(x[t]) * static_cast<acc_t>(rot[t * rot_row_stride + column]);
        if (j == 0 || dot > top) {
          top = dot;
          top_at = j;
        }
        if (j == 0 || dot < bottom) {
          bottom = dot;
          bottom_at = j;
        }
      }
      bucket += product * (top >= -bottom ? top_at : half + bottom_at);
      product *= factors.size[f];
    }
  }
  buckets[row * n_hashes * seq_len + round * seq_len + pos] = round * round_size + bucket;
}

}  // namespace

at::Tensor lsh_hash_cuda(const at::Tensor& vectors_in, const at::Tensor& rotations_in, at::IntArrayRef n_buckets,
                         const std::optional<at::Tensor>& attention_mask) {
  const char* op = "lsh_hash";
  const int64_t half_width = check_lsh_hash_inputs(vectors_in, rotations_in, n_buckets, op);
  TORCH_CHECK_VALUE(vectors_in.is_cuda(), op, ": vectors must be a CUDA tensor for the CUDA kernel, got ",
                    vectors_in.device());
  TORCH_CHECK_VALUE(static_cast<int64_t>(n_buckets.size()) <= kMaxFactors, op, ": at most ", kMaxFactors,
                    " bucket factors are supported, got ", n_buckets.size());
  const c10::cuda::CUDAGuard guard(vectors_in.device());
  const at::Tensor vectors = vectors_in.contiguous(), rotations = rotations_in.contiguous();
  const int64_t batch = vectors.size(0), heads = vectors.size(1), seq_len = vectors.size(2);
  at::Tensor valid;
  if (attention_mask.has_value() && attention_mask->defined()) {
    TORCH_CHECK_VALUE(attention_mask->dim() == 2 && attention_mask->size(0) == batch &&
                          attention_mask->size(1) == seq_len,
                      op, ": attention_mask must have shape (batch, seq_len) = (", batch, ", ", seq_len, "), got ",
                      attention_mask->sizes());
    TORCH_CHECK_VALUE(attention_mask->device() == vectors.device(), op, ": attention_mask is on ",
                      attention_mask->device(), " but vectors on ", vectors.device());
    valid = attention_mask->ne(0).to(at::kByte).contiguous();
  }
  BucketFactors factors{};
  factors.count = static_cast<int>(n_buckets.size());
  int64_t total_buckets = 1;
  for (int f = 0; f < factors.count; ++f) {
    factors.size[f] = n_buckets[f];
    total_buckets *= n_buckets[f];
  }
  const int64_t n_hashes = rotations.size(2);
  const int64_t round_size = valid.defined() ? total_buckets + 1 : total_buckets;
  at::Tensor buckets = at::empty({batch, heads, n_hashes * seq_len}, vectors.options().dtype(at::kLong));
  const int64_t total = buckets.numel();
  if (total == 0) return buckets;
  constexpr int threads = 256;
  const int64_t blocks = (total + threads - 1) / threads;
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, vectors.scalar_type(), "lsh_hash", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    lsh_hash_kernel<scalar_t, acc_t><<<blocks, threads, 0, stream>>>(
        vectors.data_ptr<scalar_t>(), rotations.data_ptr<scalar_t>(),
        valid.defined() ? valid.data_ptr<uint8_t>() : nullptr, buckets.data_ptr<int64_t>(), heads, seq_len,
        vectors.size(3), n_hashes, half_width, factors, total_buckets, round_size, total);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return buckets;
}

}  // namespace reformer_kernels

TORCH_LIBRARY_IMPL(reformer_kernels, CUDA, m) { m.impl("lsh_hash", &reformer_kernels::lsh_hash_cuda); }
