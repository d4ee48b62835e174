// Philox4x32-10, the counter-based generator that dropout draws from on every backend, and the
// element numbering and keep rule of reformer_kernels/reference/dropout.py (which explains them):
// element e of a call keyed by seed at generator offset `offset` gets word e % 4 of the counter
// (offset / 4 low, offset / 4 high, e / 4 low, e / 4 high) under key (seed low, seed high), and is
// kept when that word >> 1 is at least floor(p * 2^31). Sixteen counters run side by side: in
// vector-extension lanes (philox4x32_10, any -march) and, where AVX-512 is available, in the low
// halves of 64-bit lanes (philox_block, for the kernels' streams); both give the same bits as
// Triton's tl.philox and the torch reference.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#ifdef __AVX512F__
#include <immintrin.h>
#endif

namespace reformer_kernels::cpu {

constexpr int64_t kPhiloxLanes = 16;
typedef uint32_t philox_u32 __attribute__((vector_size(kPhiloxLanes * 4)));
typedef uint64_t philox_u64 __attribute__((vector_size(kPhiloxLanes * 8)));

struct PhiloxBlock {
  philox_u32 c0, c1, c2, c3;
};

// Ten rounds on the counters in place under key (k0, k1).
inline void philox4x32_10(PhiloxBlock& c, uint32_t k0, uint32_t k1) {
  constexpr uint64_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u;
  for (int round = 0; round < 10; ++round) {
    const philox_u64 product0 = __builtin_convertvector(c.c0, philox_u64) * kM0;
    const philox_u64 product1 = __builtin_convertvector(c.c2, philox_u64) * kM1;
    const philox_u32 high0 = __builtin_convertvector(product0 >> 32, philox_u32);
    const philox_u32 high1 = __builtin_convertvector(product1 >> 32, philox_u32);
    c.c0 = high1 ^ c.c1 ^ k0;
    c.c1 = __builtin_convertvector(product1, philox_u32);
    c.c2 = high0 ^ c.c3 ^ k1;
    c.c3 = __builtin_convertvector(product0, philox_u32);
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
}

// The 64 words of the 16 counters (base, group + 0 .. 15) under key (k0, k1), in element order
// (counter l's four words at 4 l .. 4 l + 3), into out[0 .. 64).
#ifdef __AVX512F__
// The vector-extension rounds above compile to vpmullq (a full 64-bit product: 3 uops, ~15 cycles)
// and a widening and narrowing per round; _mm512_mul_epu32 multiplies the low 32 bits of each
// 64-bit lane in one uop. So each counter word rides in the low half of a 64-bit lane (16 counters:
// two registers of 8), and the high halves keep whatever the products and xors leave there: the
// multiplies ignore them and only the low halves are narrowed to words at the end. Same bits as
// philox4x32_10 (tests/ops/test_philox.py, test_dropout_add.py). (GCC 12 warns that the intrinsics'
// deliberately undefined pass-through registers may be uninitialized: a false positive.)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
inline void philox_block(uint64_t base, uint64_t group, uint32_t k0, uint32_t k1, uint32_t* out) {
  const __m512i m0 = _mm512_set1_epi64(0xD2511F53u), m1 = _mm512_set1_epi64(0xCD9E8D57u);
  const __m512i lanes = _mm512_set_epi64(7, 6, 5, 4, 3, 2, 1, 0);
  __m512i c0[2], c1[2], c2[2], c3[2];
  for (int h = 0; h < 2; ++h) {
    // the 64-bit sum carries the group number's low half into its high half
    const __m512i counter = _mm512_add_epi64(_mm512_set1_epi64(static_cast<int64_t>(group + 8 * h)), lanes);
    c0[h] = _mm512_set1_epi64(static_cast<int64_t>(base));
    c1[h] = _mm512_set1_epi64(static_cast<int64_t>(base >> 32));
    c2[h] = counter;
    c3[h] = _mm512_srli_epi64(counter, 32);
  }
  for (int round = 0; round < 10; ++round) {
    const __m512i key0 = _mm512_set1_epi64(k0), key1 = _mm512_set1_epi64(k1);
    for (int h = 0; h < 2; ++h) {
      const __m512i product0 = _mm512_mul_epu32(c0[h], m0), product1 = _mm512_mul_epu32(c2[h], m1);
      c0[h] = _mm512_ternarylogic_epi64(_mm512_srli_epi64(product1, 32), c1[h], key0, 0x96);  // three-way xor
      c1[h] = product1;
      c2[h] = _mm512_ternarylogic_epi64(_mm512_srli_epi64(product0, 32), c3[h], key1, 0x96);
      c3[h] = product0;
    }
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  const auto narrow = [](const __m512i* c) {
    return _mm512_inserti64x4(_mm512_castsi256_si512(_mm512_cvtepi64_epi32(c[0])), _mm512_cvtepi64_epi32(c[1]), 1);
  };
  const __m512i w0 = narrow(c0), w1 = narrow(c1), w2 = narrow(c2), w3 = narrow(c3);
  // 4 x 4 transposes within each 128-bit lane: r_j's lane i holds counter 4 i + j's four words
  const __m512i t0 = _mm512_unpacklo_epi32(w0, w1), t1 = _mm512_unpackhi_epi32(w0, w1);
  const __m512i t2 = _mm512_unpacklo_epi32(w2, w3), t3 = _mm512_unpackhi_epi32(w2, w3);
  const __m512i r0 = _mm512_unpacklo_epi64(t0, t2), r1 = _mm512_unpackhi_epi64(t0, t2);
  const __m512i r2 = _mm512_unpacklo_epi64(t1, t3), r3 = _mm512_unpackhi_epi64(t1, t3);
  // then gather lane i of r0 .. r3 into output register i
  const __m512i low01 = _mm512_shuffle_i32x4(r0, r1, _MM_SHUFFLE(1, 0, 1, 0));
  const __m512i low23 = _mm512_shuffle_i32x4(r2, r3, _MM_SHUFFLE(1, 0, 1, 0));
  const __m512i high01 = _mm512_shuffle_i32x4(r0, r1, _MM_SHUFFLE(3, 2, 3, 2));
  const __m512i high23 = _mm512_shuffle_i32x4(r2, r3, _MM_SHUFFLE(3, 2, 3, 2));
  _mm512_storeu_si512(out, _mm512_shuffle_i32x4(low01, low23, _MM_SHUFFLE(2, 0, 2, 0)));
  _mm512_storeu_si512(out + 16, _mm512_shuffle_i32x4(low01, low23, _MM_SHUFFLE(3, 1, 3, 1)));
  _mm512_storeu_si512(out + 32, _mm512_shuffle_i32x4(high01, high23, _MM_SHUFFLE(2, 0, 2, 0)));
  _mm512_storeu_si512(out + 48, _mm512_shuffle_i32x4(high01, high23, _MM_SHUFFLE(3, 1, 3, 1)));
}
#pragma GCC diagnostic pop
#else
inline void philox_block(uint64_t base, uint64_t group, uint32_t k0, uint32_t k1, uint32_t* out) {
  philox_u32 lane;
  for (int64_t l = 0; l < kPhiloxLanes; ++l) lane[l] = static_cast<uint32_t>(l);
  PhiloxBlock c{static_cast<uint32_t>(base) + philox_u32{}, static_cast<uint32_t>(base >> 32) + philox_u32{},
                static_cast<uint32_t>(group) + lane, static_cast<uint32_t>(group >> 32) + philox_u32{}};
  // where the group number's low half wrapped inside this block, carry into its high half
  c.c3 -= (philox_u32)(c.c2 < static_cast<uint32_t>(group));
  philox4x32_10(c, k0, k1);
  for (int64_t l = 0; l < kPhiloxLanes; ++l) {
    out[4 * l] = c.c0[l];
    out[4 * l + 1] = c.c1[l];
    out[4 * l + 2] = c.c2[l];
    out[4 * l + 3] = c.c3[l];
  }
}
#endif

// The words of elements first .. first + n of the call (seed, offset) into words[0 .. n).
inline void philox_words(int64_t seed, int64_t offset, int64_t first, int64_t n, uint32_t* words) {
  const uint64_t key = static_cast<uint64_t>(seed), base = static_cast<uint64_t>(offset) >> 2;
  const uint32_t k0 = static_cast<uint32_t>(key), k1 = static_cast<uint32_t>(key >> 32);
  const int64_t end = first + n;
  for (int64_t group = first >> 2; group * 4 < end; group += kPhiloxLanes) {
    uint32_t block[4 * kPhiloxLanes];
    philox_block(base, static_cast<uint64_t>(group), k0, k1, block);
    const int64_t lo = std::max(first, group * 4), hi = std::min(end, (group + kPhiloxLanes) * 4);
    std::memcpy(words + (lo - first), block + (lo - group * 4), (hi - lo) * sizeof(uint32_t));
  }
}

// Elements whose word >> 1 is below this are dropped: floor(p * 2^31), as keep_threshold in Python.
inline uint32_t keep_threshold(double p) { return static_cast<uint32_t>(std::floor(p * 2147483648.0)); }

}  // namespace reformer_kernels::cpu
