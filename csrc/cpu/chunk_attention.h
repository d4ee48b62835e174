// The attention of one chunk of queries to its window of keys, forward and backward, that the
// LSH and local attention kernels both run on rows they gathered themselves (in bucket order or in
// sequence order): the masks, causal block skipping and dropout live here once, and each kernel
// keeps only its own gathering and combining.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "gemm.h"
#include "masks.h"
#include "philox.h"
#include "vec.h"

namespace reformer_kernels::cpu {

// a mod m in [0, m), for negative a too: wraps neighbour chunks around the sequence and places
// neighbour u of a key window in slot u mod window.
inline int64_t wrap(int64_t a, int64_t m) { return (a % m + m) % m; }

// row[j] = exp(row[j] - shift) for the vector-wide column blocks starting at columns[0..n_blocks);
// returns their sum, added up in a fixed order.
inline float exp_shifted(float* row, const int64_t* columns, int64_t n_blocks, float shift) {
  constexpr int64_t W = Vec<float>::width;
  vec_t<float> total = {};
  for (int64_t b = 0; b < n_blocks; ++b) {
    float* x = row + columns[b];
    const vec_t<float> e = vexp(vload(x) - vsplat(shift));
    vstore(x, e);
    total += e;
  }
  float sum = 0;
  for (int64_t w = 0; w < W; ++w) sum += total[w];
  return sum;
}

// Double is the precision of the gradient checks, so it keeps the correctly rounded libm exp.
inline double exp_shifted(double* row, const int64_t* columns, int64_t n_blocks, double shift) {
  double sum = 0;
  for (int64_t b = 0; b < n_blocks; ++b) {
    for (int64_t j = columns[b]; j < columns[b] + Vec<double>::width; ++j) {
      row[j] = std::exp(row[j] - shift);
      sum += row[j];
    }
  }
  return sum;
}

template <typename T>
inline T row_max(const T* row, const int64_t* columns, int64_t n_blocks) {
  constexpr int64_t W = Vec<T>::width;
  vec_t<T> best = vsplat(-std::numeric_limits<T>::infinity());
  for (int64_t b = 0; b < n_blocks; ++b) {
    const vec_t<T> x = vload(row + columns[b]);
    best = x > best ? x : best;
  }
  T result = best[0];
  for (int64_t w = 1; w < W; ++w) result = std::max(result, best[w]);
  return result;
}

// Scratch for attending one chunk of queries to its window of keys, all rows gathered by the
// caller. Row strides are padded to the vector width with zeros (vectors) or -inf (scores), so
// the inner loops never need a scalar tail.
template <typename T>
struct ChunkAttention {
  int64_t head_dim, dim_stride, key_stride;
  std::vector<T> q, k, kt, v, vt, scores, out, grad_out, grad_scores, grad_q, grad_k, grad_v;
  std::vector<T> lse, delta;
  // The forward's lse in double: near the -1e5 self-mask score a float lse is rounded to steps of
  // 2^-7, too coarse for weighing hash rounds against each other (see the LSH kernel).
  std::vector<double> lse_wide;
  // With attention dropout: each probability's factor (0, or 1 / (1 - p) where kept), in the
  // scores' layout; the padding columns stay 0. words: one query's Philox words, window order.
  std::vector<T> keep;
  std::vector<uint32_t> words;
  // Positions and padding flags (-1 = forbidden key) as lane-wide integers for vector compares.
  std::vector<lane_int_t<T>> query_pos, key_pos, key_forbidden;

  // Row stride of the key-indexed buffers: the key count rounded up to whole vectors, plus one
  // vector when that is a multiple of 256 bytes, so that the columns of kt and vt (written one
  // vector of keys at a time, a store per row) do not all fall into the same few cache sets.
  static int64_t padded_key_stride(int64_t max_keys) {
    const int64_t stride = round_up(max_keys, Vec<T>::width);
    return (stride * static_cast<int64_t>(sizeof(T))) % 256 == 0 ? stride + Vec<T>::width : stride;
  }

  ChunkAttention(int64_t max_queries, int64_t max_keys, int64_t head_dim, bool backward, bool dropout)
      : head_dim(head_dim),
        dim_stride(round_up(head_dim, Vec<T>::width)),
        key_stride(padded_key_stride(max_keys)),
        q(max_queries * dim_stride, 0),
        k(key_stride * dim_stride, 0),
        kt(head_dim * key_stride, 0),
        v(key_stride * dim_stride, 0),
        vt(backward ? head_dim * key_stride : 0, 0),
        scores(max_queries * key_stride),
        out(backward ? 0 : max_queries * dim_stride),
        grad_out(backward ? max_queries * dim_stride : 0, 0),
        grad_scores(backward ? max_queries * key_stride : 0),
        grad_q(backward ? max_queries * dim_stride : 0),
        grad_k(backward ? key_stride * dim_stride : 0),
        grad_v(backward ? key_stride * dim_stride : 0),
        lse(max_queries),
        delta(backward ? max_queries : 0),
        lse_wide(backward ? 0 : max_queries),
        keep(dropout ? max_queries * key_stride : 0, 0),
        words(dropout ? max_keys : 0),
        query_pos(max_queries),
        key_pos(key_stride, -1),
        key_forbidden(key_stride, -1) {}

  // Key j's row (already scaled) into k, and its value row into v; `forbidden` marks padding keys.
  // The transposed copies that the score products read are made by transpose_keys, once a run
  // of keys is set.
  template <typename S>
  void set_key(int64_t j, int64_t position, bool forbidden, const S* key, T key_scale, const S* value) {
    key_pos[j] = static_cast<lane_int_t<T>>(position);
    key_forbidden[j] = forbidden ? -1 : 0;
    T* k_row = k.data() + j * dim_stride;
    for (int64_t t = 0; t < head_dim; ++t) k_row[t] = static_cast<T>(key[t]) * key_scale;
    T* v_row = v.data() + j * dim_stride;
    for (int64_t t = 0; t < head_dim; ++t) v_row[t] = static_cast<T>(value[t]);
  }

  // kt (and, for the backward, vt) columns j0 .. j0 + n from the rows that set_key wrote.
  void transpose_keys(int64_t j0, int64_t n) {
    transpose_into(k.data() + j0 * dim_stride, dim_stride, n, head_dim, kt.data() + j0, key_stride);
    if (!vt.empty()) transpose_into(v.data() + j0 * dim_stride, dim_stride, n, head_dim, vt.data() + j0, key_stride);
  }

  // Query i's keep factors from its Philox words (in `words`), whose columns run over the window
  // in neighbour order (chunk - before first); here neighbour u sits in slot u mod window.
  void set_keep(int64_t i, uint32_t threshold, T scale, int64_t chunk, int64_t before, int64_t window,
                int64_t chunk_len) {
    T* dst = keep.data() + i * key_stride;
    for (int64_t slot = 0; slot < window; ++slot) {
      const uint32_t* src = words.data() + wrap(slot - chunk + before, window) * chunk_len;
      T* row = dst + slot * chunk_len;
      for (int64_t c = 0; c < chunk_len; ++c) row[c] = (src[c] >> 1) >= threshold ? scale : T(0);
    }
  }

  template <typename S>
  void set_query(int64_t i, int64_t position, const S* query) {
    query_pos[i] = static_cast<lane_int_t<T>>(position);
    T* row = q.data() + i * dim_stride;
    for (int64_t t = 0; t < head_dim; ++t) row[t] = static_cast<T>(query[t]);
  }

  // Lanes of keys j..j+W whose score against query i is forbidden (padding or, if causal, the
  // future); `self` receives the lanes where the key is the query's own position.
  ivec_t<T> forbidden_lanes(int64_t i, int64_t j, bool causal, ivec_t<T>& self) const {
    const ivec_t<T> qp = query_pos[i] - ivec_t<T>{};
    const ivec_t<T> kp = vload_int<T>(key_pos.data() + j);
    self = qp == kp;
    const ivec_t<T> forbidden = vload_int<T>(key_forbidden.data() + j);
    return causal ? (forbidden | (qp < kp)) : forbidden;
  }

  // Causal skipping. Queries are processed in tiles of kQueryTile rows and keys in blocks of one
  // vector; block b is computed for tile t only if t >= first_tile[b], i.e. if some key of the
  // block is not later than the latest query of tiles 0..t. A skipped block holds only keys that
  // the causal mask forbids to every query of the tile, and with the self mask on, every query
  // also sees its own position at >= the self-mask score (-1e5, -1e3 in fp16) while a forbidden
  // score is -1e9 (-1e4): exp(forbidden - max) is exactly 0, so a skipped block would have added
  // exactly nothing (no probability, no gradient). Using the running maximum of the tiles makes
  // the computed tiles of every block a suffix, which the key-side products of the backward
  // need; callers that gather queries and keys in position order make the skipped share large
  // (about half of a window), any order is correct.
  static constexpr int64_t kQueryTile = 8;
  std::vector<int64_t> first_tile;
  // Per query tile, the first column of each block it computes, and how many there are.
  std::vector<int64_t> tile_columns, tile_blocks;

  void plan_blocks(int64_t n_queries, int64_t n_keys, bool skip) {
    constexpr int64_t W = Vec<T>::width;
    const int64_t n_tiles = (n_queries + kQueryTile - 1) / kQueryTile, n_blocks = round_up(n_keys, W) / W;
    first_tile.assign(n_blocks, 0);
    if (skip) {
      std::vector<lane_int_t<T>> latest(n_tiles);
      lane_int_t<T> running = std::numeric_limits<lane_int_t<T>>::min();
      for (int64_t t = 0; t < n_tiles; ++t) {
        for (int64_t i = t * kQueryTile; i < std::min(n_queries, (t + 1) * kQueryTile); ++i)
          running = std::max(running, query_pos[i]);
        latest[t] = running;
      }
      for (int64_t b = 0; b < n_blocks; ++b) {
        lane_int_t<T> earliest = std::numeric_limits<lane_int_t<T>>::max();
        for (int64_t j = b * W; j < std::min(n_keys, (b + 1) * W); ++j) earliest = std::min(earliest, key_pos[j]);
        int64_t t = 0;
        while (t < n_tiles && latest[t] < earliest) ++t;
        first_tile[b] = t;
      }
    }
    tile_columns.resize(n_tiles * n_blocks);
    tile_blocks.assign(n_tiles, 0);
    for (int64_t t = 0; t < n_tiles; ++t) {
      for (int64_t b = 0; b < n_blocks; ++b) {
        if (first_tile[b] <= t) tile_columns[t * n_blocks + tile_blocks[t]++] = b * W;
      }
    }
  }

  // f(first column, column count) for each run of adjacent blocks that tile t computes.
  template <typename F>
  void for_runs(int64_t t, F f) const {
    const int64_t n_blocks = static_cast<int64_t>(first_tile.size());
    const int64_t* columns = tile_columns.data() + t * n_blocks;
    for (int64_t b = 0; b < tile_blocks[t];) {
      int64_t e = b + 1;
      while (e < tile_blocks[t] && columns[e] == columns[e - 1] + Vec<T>::width) ++e;
      f(columns[b], columns[e - 1] + Vec<T>::width - columns[b]);
      b = e;
    }
  }

  // Scores of tile t's rows (q k^T) in the blocks it computes, with the masks written in; columns
  // past n_keys get -inf so they vanish in exp.
  void masked_scores(int64_t t, int64_t rows, int64_t n_keys, bool causal, bool self_mask, MaskValues values) {
    const int64_t i0 = t * kQueryTile;
    for_runs(t, [&](int64_t c0, int64_t width) {
      gemm<T>(rows, width, head_dim, q.data() + i0 * dim_stride, dim_stride, 1, kt.data() + c0, key_stride,
              scores.data() + i0 * key_stride + c0, key_stride, false);
    });
    const vec_t<T> forbidden = vsplat(static_cast<T>(values.forbidden)), self = vsplat(static_cast<T>(values.self));
    const int64_t n_blocks = static_cast<int64_t>(first_tile.size()), padded_keys = n_blocks * Vec<T>::width;
    const int64_t* columns = tile_columns.data() + t * n_blocks;
    for (int64_t i = i0; i < i0 + rows; ++i) {
      T* row = scores.data() + i * key_stride;
      for (int64_t b = 0; b < tile_blocks[t]; ++b) {
        const int64_t j = columns[b];
        ivec_t<T> is_self;
        const ivec_t<T> drop = forbidden_lanes(i, j, causal, is_self);
        vec_t<T> x = drop ? forbidden : vload(row + j);
        if (self_mask) x = is_self ? self : x;
        vstore(row + j, x);
      }
      if (first_tile.back() <= t) {
        for (int64_t j = n_keys; j < padded_keys; ++j) row[j] = -std::numeric_limits<T>::infinity();
      }
    }
  }

  // rows of tile t (rows x K, stride key_stride, the blocks it computes) times B's matching rows
  // (stride ldb) into c (rows x dim_stride).
  void tile_times(int64_t t, int64_t rows, const T* a, const T* b, T* c) const {
    bool accumulate = false;
    for_runs(t, [&](int64_t c0, int64_t width) {
      gemm<T>(rows, dim_stride, width, a + c0, key_stride, 1, b + c0 * dim_stride, dim_stride, c, dim_stride, accumulate);
      accumulate = true;
    });
  }

  // a^T b for the keys of every block: block b's rows sum over the queries of the tiles that
  // computed it, a suffix; a block no tile computed gets zero rows (or, when accumulating into c,
  // is left as it is).
  void keys_times(int64_t n_queries, int64_t n_keys, const T* a, const T* b, T* c, bool accumulate) const {
    constexpr int64_t W = Vec<T>::width;
    for (int64_t blk = 0; blk < static_cast<int64_t>(first_tile.size()); ++blk) {
      const int64_t j0 = blk * W, rows = std::min(W, n_keys - j0), i0 = first_tile[blk] * kQueryTile;
      if (i0 >= n_queries) {
        if (!accumulate) std::fill(c + j0 * dim_stride, c + (j0 + rows) * dim_stride, T(0));
        continue;
      }
      gemm<T>(rows, dim_stride, n_queries - i0, a + i0 * key_stride + j0, 1, key_stride, b + i0 * dim_stride, dim_stride,
              c + j0 * dim_stride, dim_stride, accumulate);
    }
  }

  // Whether key j's gradient rows (grad_k, grad_v) can be nonzero after backward.
  bool key_used(int64_t j, int64_t n_queries) const {
    return first_tile[j / Vec<T>::width] * kQueryTile < n_queries;
  }

  // Plans the blocks (causal skipping with the causal and the self mask on), then per query tile t
  // (rows i0 .. i0 + rows) writes its masked scores and calls body(t, i0, rows, its block columns).
  template <typename F>
  void for_tiles(int64_t n_queries, int64_t n_keys, bool causal, bool self_mask, MaskValues values, F body) {
    plan_blocks(n_queries, n_keys, causal && self_mask);
    const int64_t n_blocks = static_cast<int64_t>(first_tile.size());
    for (int64_t t = 0; t * kQueryTile < n_queries; ++t) {
      const int64_t i0 = t * kQueryTile, rows = std::min(kQueryTile, n_queries - i0);
      masked_scores(t, rows, n_keys, causal, self_mask, values);
      body(t, i0, rows, tile_columns.data() + t * n_blocks);
    }
  }

  // out (n_queries x head_dim, stride dim_stride) and lse of the chunk (lse before any dropout).
  void forward(int64_t n_queries, int64_t n_keys, bool causal, bool self_mask, MaskValues values) {
    for_tiles(n_queries, n_keys, causal, self_mask, values, [&](int64_t t, int64_t i0, int64_t rows, const int64_t* columns) {
      for (int64_t i = i0; i < i0 + rows; ++i) {
        T* row = scores.data() + i * key_stride;
        const T shift = row_max(row, columns, tile_blocks[t]);
        const T total = exp_shifted(row, columns, tile_blocks[t], shift);
        lse_wide[i] = static_cast<double>(shift) + std::log(static_cast<double>(total));
        lse[i] = static_cast<T>(lse_wide[i]);
        const vec_t<T> inverse = vsplat(T(1) / total);
        const T* k_row = keep.empty() ? nullptr : keep.data() + i * key_stride;
        for (int64_t b = 0; b < tile_blocks[t]; ++b) {
          const int64_t j = columns[b];
          const vec_t<T> p = vload(row + j) * inverse;
          vstore(row + j, k_row == nullptr ? p : p * vload(k_row + j));
        }
      }
      tile_times(t, rows, scores.data() + i0 * key_stride, v.data(), out.data() + i0 * dim_stride);
    });
  }

  // Given lse[i], grad_out (rows dO_i) and delta[i] = dO_i . o_i - dlse_i, fills grad_q (n_queries
  // rows), grad_k and grad_v (n_keys rows; with accumulate_keys, adds to what those rows hold, so
  // that a caller can sum a key's gradient over the windows it is part of before writing it out)
  // for this chunk: FlashAttention's backward, recomputing
  // the probabilities P from the scores and lse. With dropout factors K (0, or 1 / (1 - p) where
  // kept) the output used P * K: dS = P * (K * dO V^T - delta) and grad_v = (P * K)^T dO.
  void backward(int64_t n_queries, int64_t n_keys, bool causal, bool self_mask, MaskValues values,
                bool accumulate_keys = false) {
    for_tiles(n_queries, n_keys, causal, self_mask, values, [&](int64_t t, int64_t i0, int64_t rows, const int64_t* columns) {
      for (int64_t i = i0; i < i0 + rows; ++i) {
        T* row = scores.data() + i * key_stride;
        const T total = exp_shifted(row, columns, tile_blocks[t], lse[i]);
        // Without the self mask a query may see no key: then lse = -1e9 + log(n) is -1e9 in float,
        // each exp(s - lse) is 1, and grad_v would get the sum of dO where the forward took the mean,
        // so normalize by the row's sum as the forward's softmax does. With it (LSH) every query sees
        // itself, and the rounding of lse near -1e5 is left in P: it cancels against the same rounding
        // in the round weights exp(lse_r - lse_all). Without the self mask no block is skipped.
        if (!self_mask) {
          const vec_t<T> inverse = vsplat(T(1) / total);
          for (int64_t b = 0; b < tile_blocks[t]; ++b) vstore(row + columns[b], vload(row + columns[b]) * inverse);
        }
      }
      // dP = dO V^T, then dS = P * (K * dP - delta) where the score was not overwritten by a mask
      for_runs(t, [&](int64_t c0, int64_t width) {
        gemm<T>(rows, width, head_dim, grad_out.data() + i0 * dim_stride, dim_stride, 1, vt.data() + c0, key_stride,
                grad_scores.data() + i0 * key_stride + c0, key_stride, false);
      });
      for (int64_t i = i0; i < i0 + rows; ++i) {
        T* p = scores.data() + i * key_stride;
        T* ds = grad_scores.data() + i * key_stride;
        const T* k_row = keep.empty() ? nullptr : keep.data() + i * key_stride;
        const vec_t<T> d_i = vsplat(delta[i]);
        for (int64_t b = 0; b < tile_blocks[t]; ++b) {
          const int64_t j = columns[b];
          ivec_t<T> is_self;
          ivec_t<T> masked = forbidden_lanes(i, j, causal, is_self);
          if (self_mask) masked |= is_self;
          const vec_t<T> dp = k_row == nullptr ? vload(ds + j) : vload(ds + j) * vload(k_row + j);
          const vec_t<T> grad = vload(p + j) * (dp - d_i);
          vstore(ds + j, masked ? vsplat(T(0)) : grad);
          if (k_row != nullptr) vstore(p + j, vload(p + j) * vload(k_row + j));
        }
      }
      // grad_q = dS K
      tile_times(t, rows, grad_scores.data() + i0 * key_stride, k.data(), grad_q.data() + i0 * dim_stride);
    });
    // grad_v = (P * K)^T dO, grad_k = dS^T Q
    keys_times(n_queries, n_keys, scores.data(), grad_out.data(), grad_v.data(), accumulate_keys);
    keys_times(n_queries, n_keys, grad_scores.data(), q.data(), grad_k.data(), accumulate_keys);
  }
};

// Chunk `chunk`'s keep factors for its first n_queries queries of (batch, head) row `row`, drawn
// for the elements (row, chunk, query, window key) of the chunked score tensor (rows, n_chunks,
// chunk_len, window * chunk_len) that the reference's dropout_mask_shape describes; nothing
// without dropout.
template <typename T>
void set_chunk_keep(ChunkAttention<T>& attn, const DropoutKeep& keep, int64_t row, int64_t chunk, int64_t n_queries,
                    int64_t n_chunks, int64_t chunk_len, int64_t before, int64_t window) {
  if (!keep.enabled) return;
  const int64_t n_keys = window * chunk_len;
  const T scale = static_cast<T>(keep.scale);
  for (int64_t i = 0; i < n_queries; ++i) {
    philox_words(keep.seed, keep.offset, ((row * n_chunks + chunk) * chunk_len + i) * n_keys, n_keys,
                 attn.words.data());
    attn.set_keep(i, keep.threshold, scale, chunk, before, window, chunk_len);
  }
}

}  // namespace reformer_kernels::cpu
