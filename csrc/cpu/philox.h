// Philox4x32-10, the counter-based generator that dropout draws from on every backend, and the
// element numbering and keep rule of reformer_kernels/reference/dropout.py (which explains them):
// element e of a call keyed by seed at generator offset `offset` gets word e % 4 of the counter
// (offset / 4 low, offset / 4 high, e / 4 low, e / 4 high) under key (seed low, seed high), and is
// kept when that word >> 1 is at least floor(p * 2^31). Sixteen counters run side by side in
// vector-extension lanes (two AVX-512 registers per 64-bit product, four with AVX2), so one source
// gives the same bits as Triton's tl.philox and the torch reference on any -march.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

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

// The words of elements first .. first + n of the call (seed, offset) into words[0 .. n).
inline void philox_words(int64_t seed, int64_t offset, int64_t first, int64_t n, uint32_t* words) {
  const uint64_t key = static_cast<uint64_t>(seed), base = static_cast<uint64_t>(offset) >> 2;
  const uint32_t k0 = static_cast<uint32_t>(key), k1 = static_cast<uint32_t>(key >> 32);
  philox_u32 lane;
  for (int64_t l = 0; l < kPhiloxLanes; ++l) lane[l] = static_cast<uint32_t>(l);
  const int64_t end = first + n;
  for (int64_t group = first >> 2; group * 4 < end; group += kPhiloxLanes) {
    const uint64_t g = static_cast<uint64_t>(group);
    PhiloxBlock c{static_cast<uint32_t>(base) + philox_u32{}, static_cast<uint32_t>(base >> 32) + philox_u32{},
                  static_cast<uint32_t>(g) + lane, static_cast<uint32_t>(g >> 32) + philox_u32{}};
    // where the group number's low half wrapped inside this block, carry into its high half
    c.c3 -= (philox_u32)(c.c2 < static_cast<uint32_t>(g));
    philox4x32_10(c, k0, k1);
    uint32_t block[4 * kPhiloxLanes];
    for (int64_t l = 0; l < kPhiloxLanes; ++l) {
      block[4 * l] = c.c0[l];
      block[4 * l + 1] = c.c1[l];
      block[4 * l + 2] = c.c2[l];
      block[4 * l + 3] = c.c3[l];
    }
    const int64_t lo = std::max(first, group * 4), hi = std::min(end, (group + kPhiloxLanes) * 4);
    std::memcpy(words + (lo - first), block + (lo - group * 4), (hi - lo) * sizeof(uint32_t));
  }
}

// Elements whose word >> 1 is below this are dropped: floor(p * 2^31), as keep_threshold in Python.
inline uint32_t keep_threshold(double p) { return static_cast<uint32_t>(std::floor(p * 2147483648.0)); }

}  // namespace reformer_kernels::cpu
