// float16 / bfloat16 storage types for the CPU kernels, as raw 16-bit patterns, with exact
// round-to-nearest-even conversions written with integer operations only. Where the
// translation unit is compiled with F16C (the AVX2 level), float16 converts with the hardware
// instructions instead (vcvtph2ps / vcvtps2ph through _Float16), which round the same way;
// the integer code reproduces the hardware's NaN results too (sign and top payload bits
// kept, quiet bit set), so every level gives the same bits.
//
// Internal linkage only: this header is compiled into the ISA-specific translation units.
#pragma once

#include <cstdint>
#include <cstring>

namespace tzfast {
namespace cpu {
namespace {

struct f16 {
  uint16_t bits;
};
struct bf16 {
  uint16_t bits;
};

inline uint32_t float_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

inline float bits_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// The conversions are written as selects between candidate results rather than early
// returns, so that GCC can if-convert (and, where the ISA allows, vectorise) the loops that
// use them.

// ---- bfloat16: the upper half of a float32.
inline float bf16_to_float(uint16_t h) { return bits_float(uint32_t(h) << 16); }

inline uint16_t float_to_bf16(float f) {
  uint32_t u = float_bits(f);
  uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;  // ties to even
  return uint16_t((u & 0x7fffffffu) > 0x7f800000u ? 0x7fc0u : rounded);  // NaN -> 0x7fc0
}

// ---- float16 (IEEE binary16).
inline float f16_to_float(uint16_t h) {
  uint32_t sign = uint32_t(h & 0x8000u) << 16;
  uint32_t e = (uint32_t(h) >> 10) & 0x1fu;
  uint32_t m = uint32_t(h) & 0x3ffu;
  uint32_t normal = sign | ((e + 112u) << 23) | (m << 13);
  uint32_t infnan = sign | 0x7f800000u | (m << 13) | (m != 0u ? 0x400000u : 0u);  // NaN: quiet
  // zero or subnormal: m * 2^-24, exact in float
  uint32_t sub = sign | float_bits(float(int32_t(m)) * 5.9604644775390625e-8f);
  return bits_float(e == 0x1fu ? infnan : (e == 0u ? sub : normal));
}

inline uint16_t float_to_f16(float f) {
  uint32_t u = float_bits(f);
  uint32_t sign = (u >> 16) & 0x8000u;
  uint32_t a = u & 0x7fffffffu;
  // normal half: rebias the exponent 127 -> 15 and round the 13 dropped bits to even
  // (a carry into the exponent is correct, up to inf)
  uint32_t rn = (a - 0x38000000u) >> 13;
  uint32_t remn = a & 0x1fffu;
  rn += uint32_t(remn > 0x1000u || (remn == 0x1000u && (rn & 1u) != 0u));
  // subnormal half (or zero): (1.m * 2^(e-127)) / 2^-24 = mant >> (126 - e); a shift of 25
  // or more (below 2^-25) rounds to zero, which the clamp to 31 preserves
  uint32_t e = a >> 23;
  uint32_t shift = e >= 126u ? 1u : (126u - e > 31u ? 31u : 126u - e);
  uint32_t mant = (a & 0x7fffffu) | 0x800000u;
  uint32_t rs = mant >> shift;
  uint32_t rems = mant & ((1u << shift) - 1u);
  uint32_t halfway = 1u << (shift - 1u);
  rs += uint32_t(rems > halfway || (rems == halfway && (rs & 1u) != 0u));
  uint32_t r = a >= 0x38800000u ? rn : rs;
  r = a >= 0x477ff000u ? 0x7c00u : r;  // >= 65520 rounds to inf
  r = a > 0x7f800000u ? (0x7e00u | ((a >> 13) & 0x3ffu)) : r;  // NaN: quiet, top payload kept
  return uint16_t(sign | r);
}

// ---- storage <-> compute.
template <typename T>
struct Compute {
  using type = T;
};
template <>
struct Compute<f16> {
  using type = float;
};
template <>
struct Compute<bf16> {
  using type = float;
};

#if defined(__F16C__)
inline float load(const f16& v) {
  _Float16 h;
  std::memcpy(&h, &v.bits, sizeof h);
  return float(h);
}
#else
inline float load(const f16& v) { return f16_to_float(v.bits); }
#endif
inline float load(const bf16& v) { return bf16_to_float(v.bits); }
inline float load(const float& v) { return v; }
inline double load(const double& v) { return v; }

template <typename T>
inline T store(typename Compute<T>::type c);
template <>
inline float store<float>(float c) {
  return c;
}
template <>
inline double store<double>(double c) {
  return c;
}
template <>
inline f16 store<f16>(float c) {
#if defined(__F16C__)
  _Float16 h = static_cast<_Float16>(c);
  f16 r;
  std::memcpy(&r.bits, &h, sizeof h);
  return r;
#else
  return f16{float_to_f16(c)};
#endif
}
template <>
inline bf16 store<bf16>(float c) {
  return bf16{float_to_bf16(c)};
}

}  // namespace
}  // namespace cpu
}  // namespace tzfast
