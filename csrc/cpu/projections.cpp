// The attention layers' input projections on the CPU, computed straight into heads: x (B, L, D)
// times each weight W (H * d, D) transposed gives (B, H, L, d) with one head's rows dense. The
// attention kernels read a chunk's rows at random positions of a head; in a head-split view of a
// (B, L, H * d) projection those rows spread over H times as many pages as in a dense head, and
// the TLB misses cost the LSH kernels ~10% of their time at 16K tokens. Producing the heads in
// the GEMM itself costs no copy.
//
// The backward has two ops: the input gradient sums every projection and head in one pass over
// positions (no per-projection products added afterwards), and the weight gradients accumulate
// over blocks of positions that stay in L2. All three run on gemm_tile over weights packed into
// strips of 2 vectors of columns; every sum runs in a fixed order, so any thread count gives the
// same bits.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <string>
#include <vector>

#include "gemm.h"
#include "rows.h"
#include "vec.h"

namespace reformer_kernels::cpu {
namespace {

constexpr int64_t kPanel = 8;       // rows per register tile
constexpr int64_t kRowBlock = 64;   // positions per task of the forward and the input gradient
constexpr int64_t kKeyBlock = 128;  // positions per step of the weight gradients' sum (x's rows in L2)

template <typename T>
constexpr int64_t strip_width() {
  return 2 * Vec<T>::width;
}

// Columns [0, n) of the K x n matrix whose element (k, j) is src[k * k_stride + j * j_stride], as
// ceil(n / strip) strips of K rows of `strip` values each, zero past column n: the B operand of
// gemm_strip with ldb = strip.
template <typename T>
std::vector<T> pack_strips(const T* src, int64_t K, int64_t n, int64_t k_stride, int64_t j_stride) {
  constexpr int64_t S = strip_width<T>();
  const int64_t n_strips = (n + S - 1) / S;
  std::vector<T> packed(n_strips * K * S, T(0));
  for (int64_t s = 0; s < n_strips; ++s) {
    for (int64_t k = 0; k < K; ++k) {
      for (int64_t c = 0; c < S && s * S + c < n; ++c) packed[(s * K + k) * S + c] = src[k * k_stride + (s * S + c) * j_stride];
    }
  }
  return packed;
}

// Where a panel's product goes: straight into the output rows when they hold whole strips, else
// into scratch rows of whole strips, copied out afterwards (the tile stores whole vectors).
template <typename T>
struct PanelTarget {
  int64_t cols, padded;
  std::vector<T> scratch;

  PanelTarget(int64_t cols, int64_t padded) : cols(cols), padded(padded), scratch(cols == padded ? 0 : kPanel * padded) {}

  T* rows(T* out) { return scratch.empty() ? out : scratch.data(); }
  int64_t stride(int64_t out_stride) const { return scratch.empty() ? out_stride : padded; }

  void finish(int64_t rows, T* out, int64_t out_stride) const {
    if (scratch.empty()) return;
    for (int64_t i = 0; i < rows; ++i) std::copy_n(scratch.data() + i * padded, cols, out + i * out_stride);
  }
};

struct Shape {
  int64_t batch, seq_len, hidden, heads, head_dim;
};

// The forward and the input gradient: tasks of kRowBlock positions of one batch row, each walked
// in panels of kPanel rows; panel(b, l, rows, target) computes rows l .. l + rows of batch row b
// through the task's PanelTarget of `cols` columns (padded to whole strips).
template <typename T, typename F>
void for_row_panels(const Shape& s, int64_t cols, F panel) {
  constexpr int64_t S = strip_width<T>();
  const int64_t n_blocks = (s.seq_len + kRowBlock - 1) / kRowBlock;
  at::parallel_for(0, s.batch * n_blocks, 1, [&](int64_t begin, int64_t end) {
    PanelTarget<T> target(cols, round_up(cols, S));
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / n_blocks, first = task % n_blocks * kRowBlock;
      const int64_t last = std::min(s.seq_len, first + kRowBlock);
      for (int64_t l = first; l < last; l += kPanel) panel(b, l, std::min(kPanel, last - l), target);
    }
  });
}

// y_p[b, h, l, :] = x[b, l, :] W_p[h * d : (h + 1) * d, :]^T.
template <typename T>
void project_kernel(const at::Tensor& x, const std::vector<at::Tensor>& weights, const Shape& s,
                    std::vector<at::Tensor>& outputs) {
  constexpr int64_t S = strip_width<T>();
  const int64_t D = s.hidden, d = s.head_dim, n_strips = (d + S - 1) / S;
  // packed[p * H + h]: head h of weight p, transposed (D x d), in strips
  std::vector<std::vector<T>> packed;
  for (const at::Tensor& w : weights) {
    for (int64_t h = 0; h < s.heads; ++h) packed.push_back(pack_strips(w.data_ptr<T>() + h * d * D, D, d, 1, D));
  }
  const T* x_ptr = x.data_ptr<T>();
  std::vector<T*> out_ptrs;
  for (at::Tensor& y : outputs) out_ptrs.push_back(y.data_ptr<T>());
  for_row_panels<T>(s, d, [&](int64_t b, int64_t l, int64_t rows, PanelTarget<T>& target) {
    const T* a = x_ptr + (b * s.seq_len + l) * D;
    for (size_t ph = 0; ph < packed.size(); ++ph) {
      const int64_t p = static_cast<int64_t>(ph) / s.heads, h = static_cast<int64_t>(ph) % s.heads;
      T* out = out_ptrs[p] + ((b * s.heads + h) * s.seq_len + l) * d;
      T* c = target.rows(out);
      for (int64_t strip = 0; strip < n_strips; ++strip) {
        gemm_strip<T>(rows, D, a, D, 1, packed[ph].data() + strip * D * S, S, c + strip * S, target.stride(d), false);
      }
      target.finish(rows, out, d);
    }
  });
}

// A (B, H, L, d) gradient with contiguous rows, read in place.
template <typename T>
struct HeadRows {
  const T* data;
  int64_t batch_stride, head_stride, row_stride;

  const T* row(int64_t b, int64_t h, int64_t l) const { return data + b * batch_stride + h * head_stride + l * row_stride; }
};

template <typename T>
std::vector<HeadRows<T>> head_rows(const std::vector<at::Tensor>& grads) {
  std::vector<HeadRows<T>> rows;
  for (const at::Tensor& g : grads) rows.push_back({g.data_ptr<T>(), g.stride(0), g.stride(1), g.stride(2)});
  return rows;
}

// grad_x[b, l, :] = sum over p, h of g_p[b, h, l, :] W_p[h * d : (h + 1) * d, :], in that order.
template <typename T>
void grad_input_kernel(const std::vector<at::Tensor>& grads, const at::Tensor& stacked_weights, const Shape& s,
                       at::Tensor& grad_x) {
  constexpr int64_t S = strip_width<T>();
  const int64_t D = s.hidden, d = s.head_dim, K = stacked_weights.size(0), n_strips = (D + S - 1) / S;
  const int64_t n_segments = K / d;  // (p, h) pairs, each d rows of the stacked weights
  const std::vector<T> packed = pack_strips(stacked_weights.data_ptr<T>(), K, D, D, 1);
  const std::vector<HeadRows<T>> g = head_rows<T>(grads);
  T* out_ptr = grad_x.data_ptr<T>();
  for_row_panels<T>(s, D, [&](int64_t b, int64_t l, int64_t rows, PanelTarget<T>& target) {
    T* out = out_ptr + (b * s.seq_len + l) * D;
    T* c = target.rows(out);
    for (int64_t strip = 0; strip < n_strips; ++strip) {
      for (int64_t seg = 0; seg < n_segments; ++seg) {
        const HeadRows<T>& rows_p = g[seg / s.heads];
        gemm_strip<T>(rows, d, rows_p.row(b, seg % s.heads, l), rows_p.row_stride, 1,
                        packed.data() + (strip * K + seg * d) * S, S, c + strip * S, target.stride(D), seg > 0);
      }
    }
    target.finish(rows, out, D);
  });
}

// grad_W_p[h * d + t, :] = sum over b, l of g_p[b, h, l, t] x[b, l, :]. Each task owns some
// panels of kPanel weight rows and walks all positions in blocks, so x's block is read from
// memory once per task and reused from L2 by every panel the task owns.
template <typename T>
void grad_weight_kernel(const std::vector<at::Tensor>& grads, const at::Tensor& x, const Shape& s,
                        std::vector<at::Tensor>& grad_weights) {
  constexpr int64_t S = strip_width<T>();
  const int64_t D = s.hidden, d = s.head_dim, padded = round_up(D, S);
  const int64_t panels_per_head = (d + kPanel - 1) / kPanel;
  const int64_t n_panels = static_cast<int64_t>(grads.size()) * s.heads * panels_per_head;
  const std::vector<HeadRows<T>> g = head_rows<T>(grads);
  const T* x_ptr = x.data_ptr<T>();
  at::parallel_for(0, n_panels, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> sums((end - begin) * kPanel * padded, T(0));
    // x's rows with whole strips of columns (a copy only where D is not a multiple of them)
    std::vector<T> x_block(D == padded ? 0 : kKeyBlock * padded, T(0));
    for (int64_t b = 0; b < s.batch; ++b) {
      for (int64_t first = 0; first < s.seq_len; first += kKeyBlock) {
        const int64_t n = std::min(kKeyBlock, s.seq_len - first);
        const T* xb = x_ptr + (b * s.seq_len + first) * D;
        int64_t ldb = D;
        if (!x_block.empty()) {
          for (int64_t i = 0; i < n; ++i) std::copy_n(xb + i * D, D, x_block.data() + i * padded);
          xb = x_block.data();
          ldb = padded;
        }
        for (int64_t panel = begin; panel < end; ++panel) {
          const int64_t ph = panel / panels_per_head, t = panel % panels_per_head * kPanel;
          const HeadRows<T>& rows_p = g[ph / s.heads];
          const T* a = rows_p.row(b, ph % s.heads, first) + t;
          T* c = sums.data() + (panel - begin) * kPanel * padded;
          for (int64_t strip = 0; strip < padded; strip += S) {
            gemm_strip<T>(std::min(kPanel, d - t), n, a, 1, rows_p.row_stride, xb + strip, ldb, c + strip, padded, true);
          }
        }
      }
    }
    for (int64_t panel = begin; panel < end; ++panel) {
      const int64_t ph = panel / panels_per_head, t = panel % panels_per_head * kPanel;
      T* dst = grad_weights[ph / s.heads].data_ptr<T>() + ((ph % s.heads) * d + t) * D;
      const T* src = sums.data() + (panel - begin) * kPanel * padded;
      for (int64_t i = 0; i < std::min(kPanel, d - t); ++i) std::copy_n(src + i * padded, D, dst + i * D);
    }
  });
}

void check_projection_tensor(const at::Tensor& t, const char* op, const std::string& name, at::ScalarType dtype) {
  TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, op, ": ", name,
                   " must be float32 or float64, got ", t.scalar_type(),
                   "; for other dtypes use torch.nn.functional.linear");
  TORCH_CHECK_TYPE(t.scalar_type() == dtype, op, ": ", name, " is ", t.scalar_type(), " but the others are ", dtype,
                   "; cast it with .to(", dtype, ")");
  TORCH_CHECK_VALUE(t.device().is_cpu(), op, ": ", name, " must be on the CPU, got ", t.device());
}

// The weights' shared shape (H * d, D) checked against heads and the hidden size D.
Shape check_weights(const char* op, at::TensorList weights, int64_t heads, at::ScalarType dtype) {
  TORCH_CHECK_VALUE(!weights.empty(), op, ": weights must hold at least one (heads * head_dim, hidden) weight");
  TORCH_CHECK_VALUE(heads >= 1, op, ": heads must be >= 1, got ", heads);
  const at::Tensor& first = weights[0];
  for (size_t i = 0; i < weights.size(); ++i) {
    const std::string name = "weights[" + std::to_string(i) + "]";
    check_projection_tensor(weights[i], op, name, dtype);
    TORCH_CHECK_VALUE(weights[i].dim() == 2 && weights[i].sizes() == first.sizes(), op, ": ", name,
                      " must be 2-D (heads * head_dim, hidden) like weights[0] ", first.sizes(), ", got ",
                      weights[i].sizes());
  }
  TORCH_CHECK_VALUE(first.size(0) % heads == 0, op, ": the weights' ", first.size(0), " output features do not split into ",
                    heads, " heads; pass heads that divides them");
  return {0, 0, first.size(1), heads, first.size(0) / heads};
}

std::vector<at::Tensor> contiguous_all(at::TensorList tensors) {
  std::vector<at::Tensor> result;
  for (const at::Tensor& t : tensors) result.push_back(t.contiguous());
  return result;
}

std::vector<at::Tensor> head_projections_cpu(const at::Tensor& x_in, at::TensorList weights_in, int64_t heads) {
  const char* op = "head_projections";
  check_projection_tensor(x_in, op, "x", x_in.scalar_type());
  Shape s = check_weights(op, weights_in, heads, x_in.scalar_type());
  TORCH_CHECK_VALUE(x_in.dim() == 3 && x_in.size(2) == s.hidden, op, ": x must be (batch, seq_len, ", s.hidden,
                    ") to match the weights, got ", x_in.sizes());
  s.batch = x_in.size(0);
  s.seq_len = x_in.size(1);
  const at::Tensor x = x_in.contiguous();
  const std::vector<at::Tensor> weights = contiguous_all(weights_in);
  std::vector<at::Tensor> outputs;
  for (size_t i = 0; i < weights.size(); ++i) outputs.push_back(at::empty({s.batch, heads, s.seq_len, s.head_dim}, x.options()));
  if (s.batch * s.seq_len * s.head_dim == 0) return outputs;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "head_projections", [&] { project_kernel<scalar_t>(x, weights, s, outputs); });
  return outputs;
}

// The gradients' shared shape (B, H, L, d), checked against the weights' (H * d) or x's (B, L).
Shape check_grads(const char* op, at::TensorList grads, at::ScalarType dtype) {
  TORCH_CHECK_VALUE(!grads.empty(), op, ": grads must hold one (batch, heads, seq_len, head_dim) gradient per projection");
  for (size_t i = 0; i < grads.size(); ++i) {
    const std::string name = "grads[" + std::to_string(i) + "]";
    check_projection_tensor(grads[i], op, name, dtype);
    TORCH_CHECK_VALUE(grads[i].dim() == 4 && grads[i].sizes() == grads[0].sizes(), op, ": ", name,
                      " must be (batch, heads, seq_len, head_dim) like grads[0] ", grads[0].sizes(), ", got ",
                      grads[i].sizes());
  }
  return {grads[0].size(0), grads[0].size(2), 0, grads[0].size(1), grads[0].size(3)};
}

std::vector<at::Tensor> rows_contiguous_all(at::TensorList tensors) {
  std::vector<at::Tensor> result;
  for (const at::Tensor& t : tensors) result.push_back(with_contiguous_rows(t));
  return result;
}

at::Tensor head_projections_grad_input_cpu(at::TensorList grads_in, at::TensorList weights_in) {
  const char* op = "head_projections_grad_input";
  Shape s = check_grads(op, grads_in, grads_in.empty() ? at::kFloat : grads_in[0].scalar_type());
  const Shape w = check_weights(op, weights_in, s.heads, grads_in[0].scalar_type());
  TORCH_CHECK_VALUE(weights_in.size() == grads_in.size(), op, ": got ", grads_in.size(), " grads for ",
                    weights_in.size(), " weights; pass one gradient per projection");
  TORCH_CHECK_VALUE(w.head_dim == s.head_dim, op, ": grads have head_dim ", s.head_dim, " but the weights split into ",
                    s.heads, " heads of ", w.head_dim);
  s.hidden = w.hidden;
  const std::vector<at::Tensor> grads = rows_contiguous_all(grads_in);
  const at::Tensor stacked = at::cat(weights_in, 0).contiguous();
  at::Tensor grad_x = at::empty({s.batch, s.seq_len, s.hidden}, grads[0].options());
  if (grad_x.numel() == 0) return grad_x;
  if (s.head_dim == 0) return grad_x.zero_();
  AT_DISPATCH_FLOATING_TYPES(grad_x.scalar_type(), "head_projections_grad_input", [&] { grad_input_kernel<scalar_t>(grads, stacked, s, grad_x); });
  return grad_x;
}

std::vector<at::Tensor> head_projections_grad_weights_cpu(at::TensorList grads_in, const at::Tensor& x_in) {
  const char* op = "head_projections_grad_weights";
  Shape s = check_grads(op, grads_in, x_in.scalar_type());
  check_projection_tensor(x_in, op, "x", x_in.scalar_type());
  TORCH_CHECK_VALUE(x_in.dim() == 3 && x_in.size(0) == s.batch && x_in.size(1) == s.seq_len, op,
                    ": x must be (batch, seq_len, hidden) = (", s.batch, ", ", s.seq_len, ", hidden) like the grads, got ",
                    x_in.sizes());
  s.hidden = x_in.size(2);
  const at::Tensor x = x_in.contiguous();
  const std::vector<at::Tensor> grads = rows_contiguous_all(grads_in);
  std::vector<at::Tensor> grad_weights;
  for (size_t i = 0; i < grads.size(); ++i) grad_weights.push_back(at::empty({s.heads * s.head_dim, s.hidden}, x.options()));
  if (s.heads * s.head_dim * s.hidden == 0) return grad_weights;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "head_projections_grad_weights", [&] { grad_weight_kernel<scalar_t>(grads, x, s, grad_weights); });
  return grad_weights;
}

}  // namespace
}  // namespace reformer_kernels::cpu

TORCH_LIBRARY_IMPL(reformer_kernels, CPU, m) {
  m.impl("head_projections", &reformer_kernels::cpu::head_projections_cpu);
  m.impl("head_projections_grad_input", &reformer_kernels::cpu::head_projections_grad_input_cpu);
  m.impl("head_projections_grad_weights", &reformer_kernels::cpu::head_projections_grad_weights_cpu);
}
