// Angular LSH on the CPU in one pass per block of positions: rotate (a small GEMM against the
// head's rotations), argmax over [xR, -xR] per bucket factor, padding bucket, round offset, and the
// sort key written in round-major order: the int64 id, ready for bucket_sort (lsh_hash), or the id
// packed with its row and the entry's position, ready for bucket_sort_packed (lsh_hash_packed).
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../lsh_hash_checks.h"
#include "../sort_keys.h"
#include "gemm.h"
#include "masks.h"
#include "rows.h"
#include "vec.h"

namespace reformer_kernels::cpu {
namespace {

constexpr int64_t kBlock = 64;  // positions per task: one block's rotated rows stay in L1/L2

// Per lane (a position), the index of the largest entry of [x, -x], where x's `half` entries sit
// `stride` apart; the first one on ties, as argmax: the x half wins a tie between the halves, so
// the answer is the first index of max(x) when max(x) >= -min(x), else half + the first index of
// min(x). Branch-free: Vec<T>::width positions at a time. With NaNs in x the answer is some index
// in range (the rotated vector has no direction).
template <typename T>
ivec_t<T> signed_argmax(const T* x, int64_t half, int64_t stride) {
  vec_t<T> top = vload(x), bottom = top;
  ivec_t<T> top_at = {}, bottom_at = {};
  for (int64_t j = 1; j < half; ++j) {
    const vec_t<T> v = vload(x + j * stride);
    const ivec_t<T> at = ivec_t<T>{} + static_cast<lane_int_t<T>>(j);
    const ivec_t<T> higher = v > top, lower = v < bottom;
    top = higher ? v : top;
    top_at = higher ? at : top_at;
    bottom = lower ? v : bottom;
    bottom_at = lower ? at : bottom_at;
  }
  return top >= -bottom ? top_at : bottom_at + static_cast<lane_int_t<T>>(half);
}

// Writes each entry's key, pack_sort_key(row, id, row_keys) (the id alone for row_keys = 0), and,
// where positions is given, its index in the row.
template <typename scalar_t, typename key_t>
void hash_kernel(const at::Tensor& vectors, const at::Tensor& rotations, const std::vector<int64_t>& factors,
                 const at::Tensor& valid, key_t* out_ptr, int64_t row_keys, int32_t* positions) {
  using T = acc_type<scalar_t>;
  constexpr int64_t W = Vec<T>::width;
  const int64_t batch = vectors.size(0), heads = vectors.size(1), L = vectors.size(2), d = vectors.size(3);
  const int64_t n_hashes = rotations.size(2), half_width = rotations.size(3);
  const int64_t cols = n_hashes * half_width;
  int64_t n_buckets = 1;
  for (int64_t f : factors) n_buckets *= f;
  // With padding present, padded positions get bucket n_buckets and every round one more bucket.
  const int64_t round_size = valid.defined() ? n_buckets + 1 : n_buckets;
  const int64_t n_blocks = (L + kBlock - 1) / kBlock;
  const RowView<scalar_t> x_rows = row_view<scalar_t>(vectors);
  const scalar_t* rot_ptr = rotations.data_ptr<scalar_t>();
  const uint8_t* valid_ptr = valid.defined() ? valid.data_ptr<uint8_t>() : nullptr;

  // The block is rotated transposed, rotated^T = R^T x^T (cols x positions), so that each rotated
  // coordinate is a row over the block's positions and the argmax runs a vector of positions at once.
  at::parallel_for(0, batch * heads * n_blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> rot_t(cols * d), xt(d * kBlock, 0), rotated(cols * kBlock);
    int64_t loaded_head = -1;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t row = task / n_blocks, block = task % n_blocks;
      const int64_t b = row / heads, h = row % heads;
      if (h != loaded_head) {
        const scalar_t* src = rot_ptr + h * d * cols;
        for (int64_t t = 0; t < d; ++t)
          for (int64_t c = 0; c < cols; ++c) rot_t[c * d + t] = static_cast<T>(src[t * cols + c]);
        loaded_head = h;
      }
      const int64_t first = block * kBlock, rows = std::min(kBlock, L - first);
      const scalar_t* src = x_rows.rows(row) + first * x_rows.row_stride;
      if constexpr (std::is_same_v<scalar_t, T>) {
        transpose_into(src, x_rows.row_stride, rows, d, xt.data(), kBlock);
      } else {
        for (int64_t i = 0; i < rows; ++i) {
          for (int64_t t = 0; t < d; ++t) xt[t * kBlock + i] = static_cast<T>(src[i * x_rows.row_stride + t]);
        }
      }
      gemm<T>(cols, kBlock, d, rot_t.data(), d, 1, xt.data(), kBlock, rotated.data(), kBlock, false);
      key_t* out_row = out_ptr + row * n_hashes * L;
      for (int64_t i0 = 0; i0 < rows; i0 += W) {
        for (int64_t r = 0; r < n_hashes; ++r) {
          ivec_t<T> bucket = {};
          lane_int_t<T> product = 1;
          const T* part = rotated.data() + r * half_width * kBlock + i0;
          for (int64_t f : factors) {
            bucket += product * signed_argmax(part, f / 2, kBlock);
            part += f / 2 * kBlock;
            product *= static_cast<lane_int_t<T>>(f);
          }
          for (int64_t w = 0; w < W && i0 + w < rows; ++w) {
            const int64_t pos = first + i0 + w;
            const bool padded = valid_ptr != nullptr && !valid_ptr[b * L + pos];
            const int64_t id = r * round_size + (padded ? n_buckets : static_cast<int64_t>(bucket[w]));
            out_row[r * L + pos] = pack_sort_key<key_t>(row, id, row_keys);
            if (positions != nullptr) positions[row * n_hashes * L + r * L + pos] = static_cast<int32_t>(r * L + pos);
          }
        }
      }
    }
  });
}

// Hashes into keys (lsh_hash's int64 ids, or lsh_hash_packed's keys with their positions).
template <typename key_t>
void hash_into(const at::Tensor& vectors, const at::Tensor& rotations, at::IntArrayRef n_buckets,
               const at::Tensor& valid, at::Tensor& keys, int64_t row_keys, at::Tensor* positions) {
  if (keys.numel() == 0) return;
  const std::vector<int64_t> factors(n_buckets.begin(), n_buckets.end());
  key_t* key_ptr = reinterpret_cast<key_t*>(keys.data_ptr());
  int32_t* position_ptr = positions == nullptr ? nullptr : positions->data_ptr<int32_t>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, vectors.scalar_type(), "lsh_hash", [&] {
    hash_kernel<scalar_t, key_t>(vectors, rotations, factors, valid, key_ptr, row_keys, position_ptr);
  });
}

// The vectors are read in place (head-split views of a projection included); only rows must be contiguous.
at::Tensor lsh_hash_cpu(const at::Tensor& vectors_in, const at::Tensor& rotations_in, at::IntArrayRef n_buckets,
                        const std::optional<at::Tensor>& attention_mask) {
  const char* op = "lsh_hash";
  check_lsh_hash_inputs(vectors_in, rotations_in, n_buckets, op);
  const at::Tensor vectors = with_contiguous_rows(vectors_in), rotations = rotations_in.contiguous();
  const at::Tensor valid = key_padding(attention_mask, vectors.size(0), vectors.size(2), op);
  at::Tensor buckets = at::empty({vectors.size(0), vectors.size(1), rotations.size(2) * vectors.size(2)},
                                 vectors.options().dtype(at::kLong));
  hash_into<int64_t>(vectors, rotations, n_buckets, valid, buckets, 0, nullptr);
  return buckets;
}

std::tuple<at::Tensor, at::Tensor> lsh_hash_packed_cpu(const at::Tensor& vectors_in, const at::Tensor& rotations_in,
                                                       at::IntArrayRef n_buckets,
                                                       const std::optional<at::Tensor>& attention_mask) {
  const char* op = "lsh_hash_packed";
  check_lsh_hash_inputs(vectors_in, rotations_in, n_buckets, op);
  const at::Tensor vectors = with_contiguous_rows(vectors_in), rotations = rotations_in.contiguous();
  const at::Tensor valid = key_padding(attention_mask, vectors.size(0), vectors.size(2), op);
  const int64_t num_keys = lsh_num_keys(rotations, n_buckets, valid.defined());
  const int64_t rows = vectors.size(0) * vectors.size(1);
  const std::vector<int64_t> shape{vectors.size(0), vectors.size(1), rotations.size(2) * vectors.size(2)};
  const at::ScalarType key_dtype = packed_key_dtype(std::max<int64_t>(rows, 1), num_keys, op);
  at::Tensor keys = at::empty(shape, vectors.options().dtype(key_dtype));
  at::Tensor positions = at::empty(shape, vectors.options().dtype(at::kInt));
  if (keys.scalar_type() == at::kUInt32) {
    hash_into<uint32_t>(vectors, rotations, n_buckets, valid, keys, num_keys, &positions);
  } else {
    hash_into<uint64_t>(vectors, rotations, n_buckets, valid, keys, num_keys, &positions);
  }
  return {keys, positions};
}

}  // namespace
}  // namespace reformer_kernels::cpu

TORCH_LIBRARY_IMPL(reformer_kernels, CPU, m) {
  m.impl("lsh_hash", &reformer_kernels::cpu::lsh_hash_cpu);
  m.impl("lsh_hash_packed", &reformer_kernels::cpu::lsh_hash_packed_cpu);
}
