// Angular LSH on the GPU in one launch: each thread rotates one (batch, head, position) vector for
// one hash round, takes the argmax over [xR, -xR] per bucket factor, applies the padding bucket and
// the round offset, and writes the key in round-major order: the int64 id, ready for bucket_sort
// (lsh_hash), or the id packed with its row (csrc/sort_keys.h) and the entry's position, ready for
// bucket_sort_packed's radix sort with no packing pass between (lsh_hash_packed).
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>
#include <torch/types.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "../lsh_hash_checks.h"
#include "../sort_keys.h"

namespace reformer_kernels {

namespace {

constexpr int kMaxFactors = 8;

struct BucketFactors {
  int64_t size[kMaxFactors];
  int count;
};

// keys[entry] = pack_sort_key(row, id, row_keys): the id alone for row_keys = 0; positions, where
// given, get the entry's index in its row.
template <typename scalar_t, typename acc_t, typename key_t>
__global__ void lsh_hash_kernel(const scalar_t* __restrict__ vectors, const scalar_t* __restrict__ rotations,
                                const uint8_t* __restrict__ valid, key_t* __restrict__ keys,
                                int32_t* __restrict__ positions, int64_t row_keys, int64_t heads,
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
  const int64_t entry = round * seq_len + pos;
  keys[row * n_hashes * seq_len + entry] = pack_sort_key<key_t>(row, round * round_size + bucket, row_keys);
  if (positions != nullptr) positions[row * n_hashes * seq_len + entry] = static_cast<int32_t>(entry);
}

}  // namespace

// The checked inputs of a hash launch, contiguous, the mask as bytes.
struct HashInputs {
  at::Tensor vectors, rotations, valid;
  BucketFactors factors;
  int64_t half_width, total_buckets;
};

HashInputs hash_inputs(const at::Tensor& vectors_in, const at::Tensor& rotations_in, at::IntArrayRef n_buckets,
                       const std::optional<at::Tensor>& attention_mask, const char* op) {
  const int64_t half_width = check_lsh_hash_inputs(vectors_in, rotations_in, n_buckets, op);
  TORCH_CHECK_VALUE(vectors_in.is_cuda(), op, ": vectors must be a CUDA tensor for the CUDA kernel, got ",
                    vectors_in.device());
  TORCH_CHECK_VALUE(static_cast<int64_t>(n_buckets.size()) <= kMaxFactors, op, ": at most ", kMaxFactors,
                    " bucket factors are supported, got ", n_buckets.size());
  const c10::cuda::CUDAGuard guard(vectors_in.device());
  HashInputs in{vectors_in.contiguous(), rotations_in.contiguous(), {}, {}, half_width, 1};
  const int64_t batch = in.vectors.size(0), seq_len = in.vectors.size(2);
  if (attention_mask.has_value() && attention_mask->defined()) {
    TORCH_CHECK_VALUE(attention_mask->dim() == 2 && attention_mask->size(0) == batch &&
                          attention_mask->size(1) == seq_len,
                      op, ": attention_mask must have shape (batch, seq_len) = (", batch, ", ", seq_len, "), got ",
                      attention_mask->sizes());
    TORCH_CHECK_VALUE(attention_mask->device() == in.vectors.device(), op, ": attention_mask is on ",
                      attention_mask->device(), " but vectors on ", in.vectors.device());
    in.valid = attention_mask->ne(0).to(at::kByte).contiguous();
  }
  in.factors.count = static_cast<int>(n_buckets.size());
  for (int f = 0; f < in.factors.count; ++f) {
    in.factors.size[f] = n_buckets[f];
    in.total_buckets *= n_buckets[f];
  }
  return in;
}

// One launch of lsh_hash_kernel writing keys of key_t (on the current device).
template <typename key_t>
void hash_into(const HashInputs& in, at::Tensor& keys, int64_t row_keys, int32_t* positions) {
  const int64_t total = keys.numel();
  if (total == 0) return;
  const int64_t n_hashes = in.rotations.size(2);
  const int64_t round_size = in.valid.defined() ? in.total_buckets + 1 : in.total_buckets;
  constexpr int threads = 256;
  const int64_t blocks = (total + threads - 1) / threads;
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.vectors.scalar_type(), "lsh_hash", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    lsh_hash_kernel<scalar_t, acc_t, key_t><<<blocks, threads, 0, stream>>>(
        in.vectors.data_ptr<scalar_t>(), in.rotations.data_ptr<scalar_t>(),
        in.valid.defined() ? in.valid.data_ptr<uint8_t>() : nullptr, reinterpret_cast<key_t*>(keys.data_ptr()),
        positions, row_keys, in.vectors.size(1), in.vectors.size(2), in.vectors.size(3), n_hashes, in.half_width,
        in.factors, in.total_buckets, round_size, total);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor lsh_hash_cuda(const at::Tensor& vectors_in, const at::Tensor& rotations_in, at::IntArrayRef n_buckets,
                         const std::optional<at::Tensor>& attention_mask) {
  const HashInputs in = hash_inputs(vectors_in, rotations_in, n_buckets, attention_mask, "lsh_hash");
  const c10::cuda::CUDAGuard guard(in.vectors.device());
  at::Tensor buckets = at::empty({in.vectors.size(0), in.vectors.size(1), in.rotations.size(2) * in.vectors.size(2)},
                                 in.vectors.options().dtype(at::kLong));
  hash_into<int64_t>(in, buckets, 0, nullptr);
  return buckets;
}

std::tuple<at::Tensor, at::Tensor> lsh_hash_packed_cuda(const at::Tensor& vectors_in, const at::Tensor& rotations_in,
                                                        at::IntArrayRef n_buckets,
                                                        const std::optional<at::Tensor>& attention_mask) {
  const char* op = "lsh_hash_packed";
  const HashInputs in = hash_inputs(vectors_in, rotations_in, n_buckets, attention_mask, op);
  const c10::cuda::CUDAGuard guard(in.vectors.device());
  const int64_t num_keys = lsh_num_keys(in.rotations, n_buckets, in.valid.defined());
  const int64_t rows = in.vectors.size(0) * in.vectors.size(1);
  const std::vector<int64_t> shape{in.vectors.size(0), in.vectors.size(1), in.rotations.size(2) * in.vectors.size(2)};
  at::Tensor keys =
      at::empty(shape, in.vectors.options().dtype(packed_key_dtype(std::max<int64_t>(rows, 1), num_keys, op)));
  at::Tensor positions = at::empty(shape, in.vectors.options().dtype(at::kInt));
  if (keys.scalar_type() == at::kUInt32) {
    hash_into<uint32_t>(in, keys, num_keys, positions.data_ptr<int32_t>());
  } else {
    hash_into<uint64_t>(in, keys, num_keys, positions.data_ptr<int32_t>());
  }
  return {keys, positions};
}

}  // namespace reformer_kernels

TORCH_LIBRARY_IMPL(reformer_kernels, CUDA, m) {
  m.impl("lsh_hash", &reformer_kernels::lsh_hash_cuda);
  m.impl("lsh_hash_packed", &reformer_kernels::lsh_hash_packed_cuda);
}
