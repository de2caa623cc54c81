// Philox4x32-10, the counter-based random number generator of Salmon, Moraes, Dror and Shaw,
// "Parallel random numbers: as easy as 1, 2, 3" (SC'11), header-only and shared by the CPU
// kernels (csrc/kernels/, compiled once per SIMD level) and the CUDA kernels (cuda/).
//
// A 128-bit counter (x0, x1, x2, x3) and a 64-bit key (k0, k1) give 128 random bits. One round
// multiplies x0 and x2 by the constants M0 and M1 into 64-bit products (hi, lo) and mixes:
//   (x0, x1, x2, x3) <- (hi(M1*x2) ^ x1 ^ k0,  lo(M1*x2),  hi(M0*x0) ^ x3 ^ k1,  lo(M0*x0))
// and the key advances by the Weyl constants (k0 += W0, k1 += W1) between rounds; ten rounds.
// The Random123 known-answer vectors are the tests (tests/cpp/test_perturb.cpp and
// tests/test_perturb_ops.py). How tzfast lays out counters and keys: docs/perturbation.md.
//
// Rules as in elementwise.h: no torch, only <cstdint>; every function TZ_HOST_DEVICE; internal
// linkage (anonymous namespace), because the CPU kernels compile this header under several
// ISA flags. Written so that GCC vectorises a loop of philox4x32_10 calls over counters: the
// 32x32 -> 64-bit multiply becomes vpmuludq (AVX2) / pmuludq (SSE2).
#pragma once

#include <cstdint>

#ifndef TZ_HOST_DEVICE
#if defined(__CUDACC__) || defined(__HIPCC__)
#define TZ_HOST_DEVICE __host__ __device__
#else
#define TZ_HOST_DEVICE
#endif
#endif

#ifndef TZ_INLINE
#if defined(__CUDACC__) || defined(__HIPCC__)
#define TZ_INLINE __forceinline__
#else
#define TZ_INLINE inline __attribute__((always_inline))
#endif
#endif

namespace tzfast {
namespace rng {
namespace {

constexpr uint32_t kPhiloxM0 = 0xD2511F53u;  // multiplier of x0
constexpr uint32_t kPhiloxM1 = 0xCD9E8D57u;  // multiplier of x2
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u;  // key schedule: golden ratio
constexpr uint32_t kPhiloxW1 = 0xBB67AE85u;  // key schedule: sqrt(3) - 1
constexpr int kPhiloxRounds = 10;

// High 32 bits of the 64-bit product a * b.
TZ_HOST_DEVICE TZ_INLINE uint32_t mulhi32(uint32_t a, uint32_t b) {
#if defined(__CUDA_ARCH__)
  return __umulhi(a, b);
#else
  return static_cast<uint32_t>((static_cast<uint64_t>(a) * static_cast<uint64_t>(b)) >> 32);
#endif
}

// One Philox round on (x0, x1, x2, x3) with key (k0, k1).
TZ_HOST_DEVICE TZ_INLINE void philox_round(uint32_t& x0, uint32_t& x1, uint32_t& x2, uint32_t& x3,
                                           uint32_t k0, uint32_t k1) {
  const uint32_t hi0 = mulhi32(kPhiloxM0, x0);
  const uint32_t lo0 = kPhiloxM0 * x0;
  const uint32_t hi1 = mulhi32(kPhiloxM1, x2);
  const uint32_t lo1 = kPhiloxM1 * x2;
  x0 = hi1 ^ x1 ^ k0;
  x1 = lo1;
  x2 = hi0 ^ x3 ^ k1;
  x3 = lo0;
}

// Philox4x32-10: the counter (x0, x1, x2, x3) is replaced by its 128 random bits.
TZ_HOST_DEVICE TZ_INLINE void philox4x32_10(uint32_t& x0, uint32_t& x1, uint32_t& x2,
                                            uint32_t& x3, uint32_t k0, uint32_t k1) {
#if defined(__CUDA_ARCH__)
#pragma unroll
#elif defined(__GNUC__) && !defined(__CUDACC__)
#pragma GCC unroll 10
#endif
  for (int r = 0; r < kPhiloxRounds; ++r) {
    philox_round(x0, x1, x2, x3, k0 + static_cast<uint32_t>(r) * kPhiloxW0,
                 k1 + static_cast<uint32_t>(r) * kPhiloxW1);
  }
}

}  // namespace
}  // namespace rng
}  // namespace tzfast
