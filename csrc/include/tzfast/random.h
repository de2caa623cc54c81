// Random directions for zeroth-order estimators (docs/perturbation.md): the value of element i
// of direction (seed, sample) for each distribution, as a pure function of Philox4x32-10 bits.
//
// Shared by the CPU kernels (csrc/kernels/perturb_kernels.cpp, compiled once per SIMD level)
// and the CUDA kernels (cuda/perturb.cu). Every value is computed in float32 with + - * / and
// a correctly rounded sqrt only: log, sin and cos are the polynomials below, in a fixed
// evaluation order, with FMA contraction off on both compilers (-ffp-contract=off,
// nvcc --fmad=false). So CPU scalar code, the CPU SIMD loops (GCC vectorises these functions
// as written) and CUDA give the same bits, and the pure-torch twin in tzfast/ops/perturb.py
// reproduces them operation by operation.
//
// Accuracy (exhaustive over every input the kernels can produce; tests/cpp/test_perturb.cpp):
// log_odd24 within 1.7 ulp of float64 log, sincos_odd24 within 1.7 ulp (sin) and 1.3 ulp
// (cos) of float64 sin/cos, the Box-Muller radius within 1.5 ulp.
//
// The polynomial coefficients are minimax fits (Lawson's iteration on the relative error,
// then rounded to float32) made for tzfast; the hex literals are exact float32 values, and
// tzfast/ops/perturb.py uses the same literals.
//
// Rules as in elementwise.h: no torch; every function TZ_HOST_DEVICE; internal linkage.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "tzfast/philox.h"

namespace tzfast {
namespace rng {
namespace {

// ---------------------------------------------------------------------------------------
// Distribution codes (the `dist` argument of the ops) and the counter layout.
// ---------------------------------------------------------------------------------------
enum Distribution : int32_t {
  kGaussian = 0,    // "gaussian", "normal"
  kRademacher = 1,  // "rademacher"
  kUniform = 2,     // "uniform": sqrt(3) * U(-1, 1), variance 1
  kSphere = 3,      // "sphere": the Gaussian values; the caller scales to norm sqrt(n)
};
constexpr int32_t kNumDistributions = 4;

// Counter word x3 of every direction (other values are reserved for other uses of a seed).
constexpr uint32_t kDirectionStream = 0;

// direction_sq_norm sums z^2 in float64 in a fixed order, so its result does not depend on
// threads or SIMD width: blocks of kSqNormBlock elements (the last one shorter); in a block,
// kSqNormLanes running sums, element i going to sum i % kSqNormLanes in increasing i; a block's
// value is ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7)); the total adds the blocks' values
// one after the other, from block 0.
constexpr int64_t kSqNormBlock = 4096;
constexpr int32_t kSqNormLanes = 8;

// Elements drawn from one Philox block: 4 (one 32-bit word per element, Box-Muller pairs for
// the Gaussian), or 128 for Rademacher (one bit per element).
TZ_HOST_DEVICE constexpr int32_t elements_per_block(int32_t dist) {
  return dist == kRademacher ? 128 : 4;
}

// ---------------------------------------------------------------------------------------
// Bit casts.
// ---------------------------------------------------------------------------------------
TZ_HOST_DEVICE TZ_INLINE uint32_t float_as_u32(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
#endif
}

TZ_HOST_DEVICE TZ_INLINE float u32_as_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
#endif
}

// IEEE (correctly rounded) float32 division and square root on both devices, whatever the
// nvcc -prec-div / -prec-sqrt settings.
TZ_HOST_DEVICE TZ_INLINE float div_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fdiv_rn(a, b);
#else
  return a / b;
#endif
}

TZ_HOST_DEVICE TZ_INLINE float sqrt_rn(float x) {
#if defined(__CUDA_ARCH__)
  return __fsqrt_rn(x);
#else
  return std::sqrt(x);  // sqrtss / vsqrtps with -fno-math-errno
#endif
}

// ---------------------------------------------------------------------------------------
// Uniforms: the top 23 bits of a word as the odd integer v = 2*(x >> 9) + 1 in [1, 2^24), which
// stands for u = v * 2^-24 in (0, 1) (exact in float32, symmetric: u and 1 - u are equally
// likely).
// ---------------------------------------------------------------------------------------
TZ_HOST_DEVICE TZ_INLINE int32_t odd24(uint32_t x) {
  return static_cast<int32_t>((x >> 8) | 1u);  // == ((x >> 9) << 1) | 1
}

// ---------------------------------------------------------------------------------------
// log: ln(v * 2^-24) for an odd v in [1, 2^24).
//   v = 2^e * m with m in [sqrt(1/2), sqrt(2)) (read off the float32 bits of v, exact);
//   ln(m) = 2 atanh(s) = 2s + (s*z)*P(z), s = f/(f + 2), f = m - 1 (exact), z = s*s;
//   ln(u) = k*LN2_HI + (k*LN2_LO + ln(m)), k = e - 24 (k*LN2_HI is exact: LN2_HI has 15
//   significant bits and |k| <= 24).
// ---------------------------------------------------------------------------------------
constexpr float kLogP0 = 0x1.55557ap-1f;  // ~2/3
constexpr float kLogP1 = 0x1.995eb6p-2f;  // ~2/5
constexpr float kLogP2 = 0x1.31e34cp-2f;  // ~2/7 (+ the tail)
constexpr float kLn2Hi = 0x1.62e4p-1f;
constexpr float kLn2Lo = 0x1.7f7d1cp-20f;
constexpr uint32_t kSqrt2Bits = 0x3fb504f3u;  // float32 bits of sqrt(2) (rounded)

TZ_HOST_DEVICE TZ_INLINE float log_odd24(int32_t v) {
  const uint32_t b = float_as_u32(static_cast<float>(v));
  const uint32_t mb1 = (b & 0x007fffffu) | 0x3f800000u;  // mantissa as a float in [1, 2)
  const bool big = mb1 > kSqrt2Bits;                      // m > sqrt(2): use m/2, e + 1
  const uint32_t mb = big ? mb1 - 0x00800000u : mb1;
  const int32_t k = static_cast<int32_t>(b >> 23) - (big ? 150 : 151);  // e - 24
  const float m = u32_as_float(mb);
  const float f = m - 1.0f;
  const float s = div_rn(f, f + 2.0f);
  const float z = s * s;
  const float p = kLogP0 + z * (kLogP1 + z * kLogP2);
  const float lnm = 2.0f * s + (s * z) * p;
  const float kf = static_cast<float>(k);
  return kf * kLn2Hi + (kf * kLn2Lo + lnm);
}

// ---------------------------------------------------------------------------------------
// sin and cos of the angle 2*pi*v*2^-24 (v an odd integer in [1, 2^24)).
//   q = round(v / 2^22) quarter turns (0..4), r = v - q*2^22 (odd, |r| < 2^21), all exact
//   integer arithmetic; f = r * 2^-24 turns (exact, |f| < 1/8);
//   sin(2 pi f) = f*(S1 + z*(S3 + z*(S5 + z*S7))), cos(2 pi f) = 1 + z*(C2 + z*(C4 + z*(C6 +
//   z*C8))), z = f*f; then rotated by q quarter turns (swaps and sign flips, exact).
// ---------------------------------------------------------------------------------------
constexpr float kSinS1 = 0x1.921fb6p+2f;  // ~2 pi
constexpr float kSinS3 = -0x1.4abbbap+5f;
constexpr float kSinS5 = 0x1.465ec6p+6f;
constexpr float kSinS7 = -0x1.2d9bb8p+6f;
constexpr float kCosC2 = -0x1.3bd3ccp+4f;  // ~-2 pi^2
constexpr float kCosC4 = 0x1.03c1dep+6f;
constexpr float kCosC6 = -0x1.55c664p+6f;
constexpr float kCosC8 = 0x1.d9f7bcp+5f;

TZ_HOST_DEVICE TZ_INLINE void sincos_odd24(int32_t v, float& sin_out, float& cos_out) {
  const int32_t q = (v + (1 << 21)) >> 22;
  const int32_t r = v - (q << 22);
  const float f = static_cast<float>(r) * 0x1p-24f;
  const float z = f * f;
  const float sr = f * (kSinS1 + z * (kSinS3 + z * (kSinS5 + z * kSinS7)));
  const float cr = 1.0f + z * (kCosC2 + z * (kCosC4 + z * (kCosC6 + z * kCosC8)));
  // quarter turns: (sin, cos) of q*pi/2 + a is (s, c), (c, -s), (-s, -c), (-c, s) for q = 0..3
  const bool swap = static_cast<int32_t>(static_cast<uint32_t>(q) << 31) < 0;  // q = 1, 3
  const uint32_t neg_sin = (static_cast<uint32_t>(q) << 30) & 0x80000000u;      // q = 2, 3
  const uint32_t neg_cos = (static_cast<uint32_t>(q + 1) << 30) & 0x80000000u;  // q = 1, 2
  const uint32_t sb = swap ? float_as_u32(cr) : float_as_u32(sr);
  const uint32_t cb = swap ? float_as_u32(sr) : float_as_u32(cr);
  sin_out = u32_as_float(sb ^ neg_sin);
  cos_out = u32_as_float(cb ^ neg_cos);
}

// ---------------------------------------------------------------------------------------
// The distributions, from Philox words.
// ---------------------------------------------------------------------------------------

// Box-Muller on one pair of words: r = sqrt(-2 ln u1), (r cos(2 pi u2), r sin(2 pi u2)) with
// u1 from the even word, u2 from the odd word.
TZ_HOST_DEVICE TZ_INLINE void box_muller(uint32_t x_even, uint32_t x_odd, float& z_even,
                                         float& z_odd) {
  const float rad = sqrt_rn(-2.0f * log_odd24(odd24(x_even)));
  float s;
  float c;
  sincos_odd24(odd24(x_odd), s, c);
  z_even = rad * c;
  z_odd = rad * s;
}

constexpr float kSqrt3 = 0x1.bb67aep+0f;

// sqrt(3) * (2u - 1): (2u - 1) = (v - 2^23) * 2^-23 is exact.
TZ_HOST_DEVICE TZ_INLINE float uniform_value(uint32_t x) {
  return (static_cast<float>(odd24(x) - (1 << 23)) * 0x1p-23f) * kSqrt3;
}

// +1 when bit `bit` of `word` is clear, -1 when it is set.
TZ_HOST_DEVICE TZ_INLINE float rademacher_value(uint32_t word, uint32_t bit) {
  return ((word >> bit) & 1u) != 0u ? -1.0f : 1.0f;
}

// The key of a seed: its low and high 32 bits (two's complement for negative seeds).
struct Key {
  uint32_t k0;
  uint32_t k1;
};

TZ_HOST_DEVICE TZ_INLINE Key key_of_seed(int64_t seed) {
  const uint64_t s = static_cast<uint64_t>(seed);
  return Key{static_cast<uint32_t>(s), static_cast<uint32_t>(s >> 32)};
}

// The 128 bits of block `block` of direction `sample`: counter (lo32(block), hi32(block),
// sample, kDirectionStream).
TZ_HOST_DEVICE TZ_INLINE void direction_block(Key key, uint32_t sample, uint64_t block,
                                              uint32_t& x0, uint32_t& x1, uint32_t& x2,
                                              uint32_t& x3) {
  x0 = static_cast<uint32_t>(block);
  x1 = static_cast<uint32_t>(block >> 32);
  x2 = sample;
  x3 = kDirectionStream;
  philox4x32_10(x0, x1, x2, x3, key.k0, key.k1);
}

// Elements 4*quad .. 4*quad + 3 of direction `sample` (the scalar definition; the CPU kernels
// compute whole tiles with the same functions). kSphere gives the Gaussian values.
TZ_HOST_DEVICE TZ_INLINE void direction_quad(int32_t dist, Key key, uint32_t sample,
                                             uint64_t quad, float z[4]) {
  uint32_t x0, x1, x2, x3;
  if (dist == kRademacher) {
    direction_block(key, sample, quad >> 5, x0, x1, x2, x3);
    const uint32_t sel = static_cast<uint32_t>(quad >> 3) & 3u;
    const uint32_t word = sel == 0u ? x0 : (sel == 1u ? x1 : (sel == 2u ? x2 : x3));
    const uint32_t bit0 = (static_cast<uint32_t>(quad) & 7u) * 4u;
    for (uint32_t l = 0; l < 4; ++l) z[l] = rademacher_value(word, bit0 + l);
    return;
  }
  direction_block(key, sample, quad, x0, x1, x2, x3);
  if (dist == kUniform) {
    z[0] = uniform_value(x0);
    z[1] = uniform_value(x1);
    z[2] = uniform_value(x2);
    z[3] = uniform_value(x3);
  } else {  // kGaussian, kSphere
    box_muller(x0, x1, z[0], z[1]);
    box_muller(x2, x3, z[2], z[3]);
  }
}

// Element i of direction `sample` (scalar; for tests and small uses).
TZ_HOST_DEVICE TZ_INLINE float direction_value(int32_t dist, Key key, uint32_t sample,
                                               uint64_t i) {
  float z[4];
  direction_quad(dist, key, sample, i >> 2, z);
  return z[i & 3u];
}

}  // namespace
}  // namespace rng
}  // namespace tzfast
