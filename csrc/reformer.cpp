// Every op schema of the reformer_kernels library, in one place. Backend files (cpu/*.cpp,
// cuda/*.cu) add implementations with TORCH_LIBRARY_IMPL; Python adds fake impls and autograd.
#include <Python.h>
#include <torch/library.h>

#include <string>

#include "cpu/memory_pool.h"

// The module object only exists so that `import reformer_kernels._C` loads the library and runs
// the registrations below; it also says whether CUDA was compiled in.
static PyObject* with_cuda(PyObject*, PyObject*) {
#ifdef REFORMER_KERNELS_WITH_CUDA
  Py_RETURN_TRUE;
#else
  Py_RETURN_FALSE;
#endif
}

static PyMethodDef methods[] = {
    {"with_cuda", with_cuda, METH_NOARGS, "Whether the CUDA kernels were compiled in."},
    {nullptr, nullptr, 0, nullptr},
};

extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "reformer_kernels compiled kernels", -1, methods};
  PyObject* created = PyModule_Create(&module);
  if (created != nullptr && reformer_kernels::add_memory_pool_functions(created) != 0) {
    Py_CLEAR(created);
  }
  return created;
}

TORCH_LIBRARY(reformer_kernels, m) {
  // Stable sort of LSH bucket ids (round offsets already added) along the last dim. buckets:
  // (..., N) int64 in [0, num_buckets), N < 2^31. Returns sorted_idx, the positions ordered by
  // (bucket, position), int32, same shape; functional.bucket_sort adds the inverse where asked.
  m.def("bucket_sort(Tensor buckets, int num_buckets) -> Tensor sorted_idx");
  // bucket_sort of keys already packed, as lsh_hash_packed writes them: keys (..., N) uint32 or
  // uint64, row r's in [r * num_keys, (r + 1) * num_keys), positions (..., N) int32. Returns
  // positions in the order of (key, entry) per row: bucket_sort's sorted_idx when positions count
  // each row's entries, as lsh_hash_packed's do.
  m.def("bucket_sort_packed(Tensor keys, Tensor positions, int num_keys) -> Tensor sorted_idx");
  // Angular LSH: vectors (B, H, L, d), rotations (H, d, n_hashes, sum(n_buckets) / 2), n_buckets the
  // bucket factors (one for an int bucket count). With attention_mask (B, L) given, its zeros get
  // the padding bucket prod(n_buckets) and rounds are prod(n_buckets) + 1 wide (pass it only when it
  // pads something). Returns bucket ids with round offsets, (B, H, n_hashes * L) int64, round-major.
  m.def("lsh_hash(Tensor vectors, Tensor rotations, int[] n_buckets, Tensor? attention_mask) -> Tensor");
  // lsh_hash's ids as the sort keys of bucket_sort_packed, so that a GPU sort needs no packing pass:
  // the id of (batch, head) row r packed as r * num_keys + id (csrc/sort_keys.h), num_keys = n_hashes
  // * ids per round; uint32 while rows * num_keys <= 2^32, else uint64. And positions, each entry's
  // index in its row (int32), the values the sort carries. Both (B, H, n_hashes * L).
  m.def(
      "lsh_hash_packed(Tensor vectors, Tensor rotations, int[] n_buckets, Tensor? attention_mask) -> "
      "(Tensor keys, Tensor positions)");
  // Shared-QK LSH attention over bucket-sorted chunks. qk, v (B, H, L, d); sorted_idx (B, H,
  // n_hashes * L). Returns out (B, H, L, d) and lse (B, H, n_hashes, L), float32 (float64 for
  // float64 inputs). The backward recomputes the scores from qk, v, out and lse. Attention dropout
  // (dropout_p > 0) keeps a probability (scaled by 1 / (1 - dropout_p)) as the Philox stream keyed
  // by (dropout_seed, dropout_offset) decides for its element of the chunked scores (B, H, n_chunks,
  // chunk_len, window keys) of the reference's dropout_mask_shape (reference/dropout.py); the
  // backward regenerates it. lse is pre-dropout.
  m.def(
      "lsh_attention_fwd(Tensor qk, Tensor v, Tensor sorted_idx, int n_hashes, int chunk_len, int n_chunks_before, "
      "int n_chunks_after, bool causal, Tensor? attention_mask, float dropout_p=0., int dropout_seed=0, "
      "int dropout_offset=0) -> (Tensor out, Tensor lse)");
  m.def(
      "lsh_attention_bwd(Tensor grad_out, Tensor? grad_lse, Tensor qk, Tensor v, Tensor sorted_idx, Tensor out, "
      "Tensor lse, int n_hashes, int chunk_len, int n_chunks_before, int n_chunks_after, bool causal, "
      "Tensor? attention_mask, float dropout_p=0., int dropout_seed=0, int dropout_offset=0) -> "
      "(Tensor grad_qk, Tensor grad_v)");
  // The attention layers' input projections straight into heads: x (B, L, D) and weights, each
  // (H * d, D) with H = heads, float32 or float64; returns x W^T per weight as (B, H, L, d),
  // contiguous (one head's rows dense, which the attention kernels' random row reads want). The
  // backward is two ops: the gradient of x, summed over every projection, and of each weight.
  m.def("head_projections(Tensor x, Tensor[] weights, int heads) -> Tensor[]");
  m.def("head_projections_grad_input(Tensor[] grads, Tensor[] weights) -> Tensor");
  m.def("head_projections_grad_weights(Tensor[] grads, Tensor x) -> Tensor[]");
  // Local (chunked) attention on q, k, v (B, H, L, d), any L. Returns out and lse (B, H, L), float32
  // (float64 for float64 inputs), which the backward needs. Dropout as for LSH, over the chunks
  // that local_chunking gives (the padded length, or one chunk of L when L <= chunk_len).
  m.def(
      "local_attention_fwd(Tensor q, Tensor k, Tensor v, int chunk_len, int n_chunks_before, int n_chunks_after, "
      "bool causal, Tensor? attention_mask, float dropout_p=0., int dropout_seed=0, int dropout_offset=0) -> "
      "(Tensor out, Tensor lse)");
  m.def(
      "local_attention_bwd(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, int chunk_len, "
      "int n_chunks_before, int n_chunks_after, bool causal, Tensor? attention_mask, float dropout_p=0., "
      "int dropout_seed=0, int dropout_offset=0) -> (Tensor grad_q, Tensor grad_k, Tensor grad_v)");
  // One cached decoding step of causal LSH attention at `position` (reformer_kernels/ops/lsh_decode_step):
  // qk, v (B, H, capacity, d) the cached projections, position's included; merged (B, H, n_hashes, m)
  // and recent[..., :n_recent] (B, H, n_hashes, R) the sorted runs of sort keys (bucket * 2^32 +
  // position) of positions [0, position), m + n_recent = position < capacity, n_recent < R. Inserts
  // sort_keys (B, H, n_hashes), position's keys, into recent in place; attends position within its
  // chunk windows of the order of padded_len positions (those past position padding, sorted last);
  // key_valid (B, position + 1) bool. Returns out (B, H, d), rounds combined by their lse.
  m.def(
      "lsh_decode_step(Tensor qk, Tensor v, Tensor merged, Tensor(a!) recent, int n_recent, Tensor sort_keys, "
      "Tensor key_valid, int position, int padded_len, int chunk_len, int n_chunks_before, int n_chunks_after) -> "
      "Tensor");
  // Philox4x32-10 (Random123's, Triton's tl.philox) of counters (..., 4) int64 in [0, 2^32) under
  // the 64-bit key seed (low word first): the four output words, int64 in [0, 2^32).
  m.def("philox4x32_10(Tensor counters, int seed) -> Tensor");
  // residual +- dropout(x, p) in dtype (residual None: +-dropout(x), the backward), computed in
  // float (double for double). Element e of x (row-major) is kept as the Philox stream keyed by
  // (seed, philox_offset) decides (reference/dropout.py); p = 0 draws nothing, p = 1 keeps nothing.
  m.def(
      "dropout_add(Tensor? residual, Tensor x, float p, int seed, int philox_offset, bool subtract, ScalarType dtype) "
      "-> Tensor");
  // relu(dropout(x + bias, p)) in x's dtype (computed as dropout_add computes), bias (x.size(-1),)
  // of x's dtype or None, the mask that of dropout_add(None, x, p, seed, philox_offset): the
  // feed-forward's bias, dropout and activation in one pass after a bias-free matrix product.
  m.def("dropout_relu(Tensor x, Tensor? bias, float p, int seed, int philox_offset) -> Tensor");
  // Its backward from its output: grad_out / (1 - p) where out > 0, else 0 (no mask needed), in out's dtype.
  m.def("dropout_relu_backward(Tensor grad_out, Tensor out, float p) -> Tensor");
  // The same, written over grad (contiguous, out's dtype and shape): for a gradient nothing else reads.
  m.def("dropout_relu_backward_(Tensor(a!) grad, Tensor out, float p) -> ()");
}
