// C++ unit tests of the header-only elementwise math (csrc/include/tzfast/elementwise.h),
// the float16/bfloat16 conversions and the CPU kernel tables. No torch, no test framework:
// each CHECK prints the failing expression and the test exits non-zero.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "kernels/cpu_kernels.h"
#include "kernels/half_bits.h"
#include "test_perturb.h"
#include "tzfast/elementwise.h"

namespace ew = tzfast::ew;
namespace cpu = tzfast::cpu;

namespace {

int g_failures = 0;
int g_checks = 0;

#define CHECK(...)                                                                    \
  do {                                                                                \
    ++g_checks;                                                                       \
    if (!(__VA_ARGS__)) {                                                             \
      ++g_failures;                                                                   \
      if (g_failures <= 50) {                                                         \
        std::printf("%s:%d: CHECK(%s) failed\n", __FILE__, __LINE__, #__VA_ARGS__);   \
      }                                                                               \
    }                                                                                 \
  } while (0)

#define CHECK_MSG(cond, ...)                                         \
  do {                                                               \
    ++g_checks;                                                      \
    if (!(cond)) {                                                   \
      ++g_failures;                                                  \
      if (g_failures <= 50) {                                        \
        std::printf("%s:%d: CHECK(%s) failed: ", __FILE__, __LINE__, #cond); \
        std::printf(__VA_ARGS__);                                    \
        std::printf("\n");                                           \
      }                                                              \
    }                                                                \
  } while (0)

template <typename T>
uint64_t bits_of(T v) {
  uint64_t b = 0;
  std::memcpy(&b, &v, sizeof v);
  return b;
}

bool same_bits(float a, float b) { return bits_of(a) == bits_of(b); }
bool same_bits(double a, double b) { return bits_of(a) == bits_of(b); }

const float kNaN = std::numeric_limits<float>::quiet_NaN();
const float kInf = std::numeric_limits<float>::infinity();

// ------------------------------------------------------------------ scalar helpers
void test_scalar_helpers() {
  CHECK(ew::sign_(3.0f) == 1.0f);
  CHECK(ew::sign_(-0.5f) == -1.0f);
  CHECK(same_bits(ew::sign_(0.0f), 0.0f));
  CHECK(same_bits(ew::sign_(-0.0f), 0.0f));  // 0 for zero, whatever its sign
  CHECK(std::isnan(ew::sign_(kNaN)));        // NaN stays NaN
  CHECK(ew::sign_(-kInf) == -1.0f);

  CHECK(same_bits(ew::abs_(-0.0f), 0.0f));
  CHECK(ew::abs_(-2.5) == 2.5);
  CHECK(std::isnan(ew::abs_(kNaN)));

  CHECK(std::isnan(ew::max_nan(kNaN, 1.0f)));
  CHECK(std::isnan(ew::max_nan(1.0f, kNaN)));
  CHECK(ew::max_nan(1.0f, 2.0f) == 2.0f);
  CHECK(ew::max_nan(3.0f, 2.0f) == 3.0f);

  CHECK(ew::clamp_(5.0f, -1.0f, 1.0f) == 1.0f);
  CHECK(ew::clamp_(-5.0f, -1.0f, 1.0f) == -1.0f);
  CHECK(ew::clamp_(0.25f, -1.0f, 1.0f) == 0.25f);
  CHECK(std::isnan(ew::clamp_(kNaN, -1.0f, 1.0f)));
  CHECK(ew::clamp_(0.0f, 2.0f, 1.0f) == 1.0f);  // min(max(x, a), b) when a > b, like torch

  // integer powers: exact products in the same order as torch.pow for |e| <= 3
  CHECK(ew::ipow(3.0, 0) == 1.0);
  CHECK(ew::ipow(3.0, 1) == 3.0);
  CHECK(ew::ipow(3.0, 2) == 9.0);
  CHECK(ew::ipow(3.0, 5) == 243.0);
  CHECK(ew::ipow(-2.0, 3) == -8.0);
  CHECK(ew::ipow(2.0, -1) == 0.5);
  CHECK(ew::ipow(2.0, -3) == 0.125);
  const float x = 1.1f;
  CHECK(same_bits(ew::ipow(x, 3), (x * x) * x));
  CHECK(same_bits(ew::ipow(x, -2), 1.0f / (x * x)));
}

// ------------------------------------------------------------------ lerp / pow / root
void test_lerp_pow_root() {
  // both sides of torch's two-sided formula
  auto w_small = ew::make_lerp_weight<float>(0.1);
  auto w_large = ew::make_lerp_weight<float>(0.9);
  CHECK(w_small.small && !w_large.small);
  const float a = 0.3f, b = 1.7f;
  CHECK(same_bits(ew::lerp(a, b, w_small), a + 0.1f * (b - a)));
  CHECK(same_bits(ew::lerp(a, b, w_large), b - (b - a) * float(1.0 - 0.9)));
  CHECK(ew::lerp(a, b, ew::make_lerp_weight<float>(0.0)) == a);
  CHECK(ew::lerp(a, b, ew::make_lerp_weight<float>(1.0)) == b);  // exact at w = 1
  CHECK(ew::make_lerp_weight<double>(0.5).small == false);        // 0.5 takes the second side

  CHECK(ew::pow_mode(2.0) == ew::POW2);
  CHECK(ew::pow_mode(1.0) == ew::POW1);
  CHECK(ew::pow_mode(3.0) == ew::POWG);
  CHECK(ew::is_even_integer(4.0) && ew::is_even_integer(-2.0) && ew::is_even_integer(0.0));
  CHECK(!ew::is_even_integer(3.0) && !ew::is_even_integer(2.5));

  auto p2 = ew::make_pow_args<double>(2.0);
  auto p1 = ew::make_pow_args<double>(1.0);
  auto p3 = ew::make_pow_args<double>(3.0);
  auto p4 = ew::make_pow_args<double>(4.0);
  auto p15 = ew::make_pow_args<double>(1.5);
  CHECK(ew::powabs<ew::POW2>(-3.0, p2) == 9.0);
  CHECK(ew::powabs<ew::POW1>(-3.0, p1) == 3.0);
  CHECK(std::fabs(ew::powabs<ew::POWG>(-2.0, p3) - 8.0) < 1e-12);   // |(-2)^3|
  CHECK(std::fabs(ew::powabs<ew::POWG>(-2.0, p4) - 16.0) < 1e-12);  // even: x^4
  CHECK(std::isnan(ew::powabs<ew::POWG>(-2.0, p15)));               // |NaN|, as specified
  CHECK(ew::root<ew::POW2>(9.0, p2) == 3.0);
  CHECK(ew::root<ew::POW1>(-9.0, p1) == 9.0);
  CHECK(std::fabs(ew::root<ew::POWG>(8.0, p3) - 2.0) < 1e-12);
}

// ------------------------------------------------------------------ rules
void test_rules() {
  // adam, pow 2, against the formula evaluated step by step in double
  {
    const double b1 = 0.9, b2 = 0.999, eps = 1e-8, ss = 0.01;
    auto a = ew::make_adam_args<double>(b1, b2, eps, ss, 2.0, 1.0);
    double m = 0.5, v = 0.25, vmax = 0.0, x = -1.5;
    double u = ew::adam_rule<ew::POW2, false>(x, m, v, vmax, a);
    const double m_ref = 0.5 + (1.0 - b1) * (x - 0.5);  // 1 - b1 < 0.5: first side
    const double v_ref = b2 * 0.25 + ((1.0 - b2) * x) * x;
    CHECK(same_bits(m, m_ref));
    CHECK(same_bits(v, v_ref));
    CHECK(same_bits(u, (m_ref * ss) / (std::sqrt(v_ref) + eps)));
    CHECK(vmax == 0.0);  // untouched without AMSGrad
  }
  // adam with AMSGrad uses the running max in the denominator
  {
    auto a = ew::make_adam_args<double>(0.0, 0.0, 0.0, 1.0, 2.0, 1.0);
    double m = 0.0, v = 0.0, vmax = 16.0;
    double u = ew::adam_rule<ew::POW2, true>(1.0, m, v, vmax, a);
    CHECK(v == 1.0 && vmax == 16.0 && u == 0.25);
    vmax = 0.5;
    u = ew::adam_rule<ew::POW2, true>(2.0, m, v, vmax, a);
    CHECK(v == 4.0 && vmax == 4.0 && u == 1.0);
  }
  // adam pow 1: v is a lerp of |x|, root is |d|
  {
    auto a = ew::make_adam_args<double>(0.5, 0.75, 0.0, 1.0, 1.0, 1.0);
    double m = 1.0, v = 1.0, vmax = 0.0;
    double u = ew::adam_rule<ew::POW1, false>(-3.0, m, v, vmax, a);
    CHECK(m == -3.0 - (-3.0 - 1.0) * 0.5);  // w = 0.5: second side
    CHECK(v == 1.0 + 0.25 * (3.0 - 1.0));
    CHECK(u == m / v);
  }
  // ema: momentum form, dampening, lerp form
  {
    auto a = ew::make_ema_args<double>(0.9, 0.5, 1.0);
    double m = 2.0;
    CHECK(ew::ema_rule<false, true>(4.0, m, a) == 2.0 * 0.9 + 4.0 * 0.5);
    m = 2.0;
    CHECK(ew::ema_rule<false, false>(4.0, m, a) == 2.0 * 0.9 + 4.0);
    m = 2.0;
    double u = ew::ema_rule<true, false>(4.0, m, a);
    CHECK(same_bits(u, 2.0 + (1.0 - 0.9) * (4.0 - 2.0)));
    CHECK(u == m);
  }
  // nag
  {
    auto a = ew::make_nag_args<double>(0.5, 0.25, 1.0);
    double vel = 1.0;
    double u = ew::nag_rule<false>(3.0, vel, a);
    CHECK(vel == (1.0 + 3.0) * 0.5);
    CHECK(u == 3.0 + vel * 0.75);
    vel = 1.0;
    u = ew::nag_rule<true>(3.0, vel, a);
    CHECK(vel == 3.0 - (3.0 - 1.0) * 0.5);
  }
  // ema_sq with and without root / AMSGrad
  {
    auto a = ew::make_ema_sq_args<double>(0.5, 2.0, 1.0);
    double v = 2.0, vmax = 0.0;
    double u = ew::ema_sq_rule<ew::POW2, false, false>(2.0, v, vmax, a);
    CHECK(v == 0.5 * 2.0 + (0.5 * 2.0) * 2.0 && u == v);
    v = 2.0;
    vmax = 100.0;
    u = ew::ema_sq_rule<ew::POW2, true, true>(2.0, v, vmax, a);
    CHECK(v == 3.0 && vmax == 100.0 && u == 10.0);
  }
  // unary codes
  {
    auto a = ew::make_unary_args<float>(2.0, -1.0, 1.0);
    CHECK(ew::unary_rule<ew::UNARY_AFFINE>(3.0f, a) == 5.0f);
    CHECK(ew::unary_rule<ew::UNARY_ABS>(-3.0f, a) == 3.0f);
    CHECK(ew::unary_rule<ew::UNARY_SIGN>(-3.0f, a) == -1.0f);
    CHECK(ew::unary_rule<ew::UNARY_SQRT>(9.0f, a) == 3.0f);
    CHECK(std::isnan(ew::unary_rule<ew::UNARY_SQRT>(-1.0f, a)));
    auto c = ew::make_unary_args<float>(-1.0, 1.0, 1.0);
    CHECK(ew::unary_rule<ew::UNARY_CLAMP>(3.0f, c) == 1.0f);
  }
  // weight decay
  {
    auto l1 = ew::make_weight_decay_args<double>(0.1, 1, 1.0);
    auto l2 = ew::make_weight_decay_args<double>(0.1, 2, 1.0);
    auto l3 = ew::make_weight_decay_args<double>(0.1, 3, 1.0);
    CHECK(ew::weight_decay_rule<ew::DECAY_L1>(1.0, -5.0, l1) == 1.0 - 0.1);
    CHECK(ew::weight_decay_rule<ew::DECAY_L2>(1.0, -5.0, l2) == 1.0 + 0.1 * -5.0);
    CHECK(ew::weight_decay_rule<ew::DECAY_POW>(1.0, -5.0, l3) == 1.0 + 0.1 * 25.0);
  }
  // epilogue
  CHECK(ew::epilogue<false>(123.0, 2.0, -0.5) == -1.0);
  CHECK(ew::epilogue<true>(10.0, 2.0, -0.5) == 9.0);
  CHECK(ew::epilogue<false>(std::numeric_limits<double>::quiet_NaN(), 2.0, 1.0) == 2.0);
}

// ------------------------------------------------------------------ half conversions
// Round-to-nearest-even reference: pick the nearer of the two neighbours in double.
float nearest_of(double v, double lo, double hi, bool lo_even) {
  const double dl = v - lo, dh = hi - v;
  if (dl < dh) return float(lo);
  if (dh < dl) return float(hi);
  return float(lo_even ? lo : hi);
}

void test_half_conversions() {
  // every float16 bit pattern: to float is exact, and back gives the same pattern
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = cpu::f16_to_float(uint16_t(h));
    const uint32_t e = (h >> 10) & 0x1f, m = h & 0x3ff;
    if (e == 0x1f && m != 0) {
      CHECK(std::isnan(f));
      CHECK((cpu::float_to_f16(f) & 0x7fffu) > 0x7c00u);  // NaN stays NaN
      continue;
    }
    double expect = e == 0 ? std::ldexp(double(m), -24)
                           : (e == 0x1f ? INFINITY : std::ldexp(1.0 + m / 1024.0, int(e) - 15));
    if (h & 0x8000) expect = -expect;
    CHECK_MSG(double(f) == expect, "h=%04x f=%g expect=%g", h, f, expect);
    CHECK_MSG(cpu::float_to_f16(f) == h, "h=%04x -> %04x", h, cpu::float_to_f16(f));
  }
  // float -> float16 rounding on a dense sample of floats, including every half midpoint
  auto check_f16 = [](float f) {
    if (std::isnan(f)) return;
    const uint16_t h = cpu::float_to_f16(f);
    const double v = std::fabs(double(f));
    // neighbours in the half grid
    double lo, hi;
    bool lo_even;
    if (v >= 65520.0) {
      CHECK_MSG((h & 0x7fffu) == 0x7c00u, "f=%a -> %04x (expected inf)", f, h);
      return;
    }
    int ex;
    std::frexp(v, &ex);  // v = frac * 2^ex, frac in [0.5, 1)
    const int q = std::max(ex - 11, -24);  // ulp exponent of the half grid at v
    const double ulp = std::ldexp(1.0, q);
    lo = std::floor(v / ulp) * ulp;
    hi = lo + ulp;
    lo_even = std::fmod(lo / ulp, 2.0) == 0.0;
    const double expect = nearest_of(v, lo, hi, lo_even);
    const double got = std::fabs(double(cpu::f16_to_float(h)));
    CHECK_MSG(got == expect, "f=%a -> %04x (%g), expected %g", f, h, got, expect);
    CHECK_MSG(((h & 0x8000u) != 0) == std::signbit(f), "sign of %a", f);
  };
  for (uint64_t u = 0; u <= 0xffffffffull; u += 4099) {
    float f;
    uint32_t b = uint32_t(u);
    std::memcpy(&f, &b, 4);
    check_f16(f);
  }
  for (uint32_t h = 0; h < 0x7c00; ++h) {  // exact midpoints and their neighbours
    const double a = double(cpu::f16_to_float(uint16_t(h)));
    const double b = double(cpu::f16_to_float(uint16_t(h + 1)));
    const float mid = float((a + b) / 2);
    check_f16(mid);
    check_f16(std::nextafter(mid, 0.0f));
    check_f16(std::nextafter(mid, 1e30f));
    check_f16(-mid);
  }
  CHECK(cpu::float_to_f16(kNaN) == 0x7e00u);
  CHECK(cpu::float_to_f16(-kInf) == 0xfc00u);
  CHECK(cpu::float_to_f16(65519.99f) == 0x7bffu);
  CHECK(cpu::float_to_f16(1e-30f) == 0u);
  CHECK(cpu::float_to_f16(-1e-30f) == 0x8000u);

  // bfloat16: every pattern round-trips; rounding of a dense sample is to nearest even
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = cpu::bf16_to_float(uint16_t(h));
    if (std::isnan(f)) {
      CHECK(cpu::float_to_bf16(f) == 0x7fc0u);
      continue;
    }
    CHECK_MSG(cpu::float_to_bf16(f) == h, "bf16 %04x", h);
  }
  for (uint64_t u = 0; u <= 0xffffffffull; u += 4099) {
    const uint32_t b = uint32_t(u);
    float f;
    std::memcpy(&f, &b, 4);
    if (std::isnan(f)) continue;
    const uint16_t h = cpu::float_to_bf16(f);
    const uint32_t lo_bits = b & 0xffff0000u;
    float lo, hi;
    const uint32_t hi_bits = lo_bits + 0x10000u;
    std::memcpy(&lo, &lo_bits, 4);
    std::memcpy(&hi, &hi_bits, 4);
    // past the largest finite value the upper neighbour is 2^128 (rounds to inf)
    const double hi_mag = (hi_bits & 0x7fffffffu) == 0x7f800000u ? std::ldexp(1.0, 128)
                                                                   : std::fabs(double(hi));
    const float expect = nearest_of(std::fabs(double(f)), std::fabs(double(lo)), hi_mag,
                                    ((lo_bits >> 16) & 1u) == 0u);
    CHECK_MSG(std::fabs(cpu::bf16_to_float(h)) == expect, "bf16 of %a", f);
  }
}

// ------------------------------------------------------------------ kernel tables
// Random data with the awkward values mixed in.
template <typename T>
void fill(std::vector<T>& v, std::mt19937& rng, bool positive) {
  std::uniform_real_distribution<double> d(positive ? 0.0 : -2.0, 2.0);
  const double specials[] = {0.0, -0.0, 1e-40, 1e30, NAN, INFINITY, -INFINITY, 1.0};
  for (size_t i = 0; i < v.size(); ++i) {
    double x = d(rng);
    if (i % 37 == 5) x = specials[(i / 37) % 8];
    if (positive) x = std::fabs(x);
    v[i] = T(x);
  }
}

struct Buffers {
  std::vector<float> x, p, out, s0, s1, s2;
  explicit Buffers(size_t n, uint32_t seed) : x(n), p(n), out(n), s0(n), s1(n), s2(n) {
    std::mt19937 rng(seed);
    fill(x, rng, false);
    fill(p, rng, false);
    fill(out, rng, false);
    fill(s0, rng, false);
    fill(s1, rng, true);
    fill(s2, rng, true);
  }
  cpu::Piece piece(bool inplace) {
    cpu::Piece pc{x.data(), p.data(), inplace ? x.data() : out.data(), s0.data(), s1.data(),
                  s2.data(), int64_t(x.size())};
    return pc;
  }
  // Bitwise equality of every buffer, read as `dt`, except that any NaN equals any NaN:
  // IEEE 754 leaves the sign and payload of a NaN result unspecified when both operands
  // are NaN, and compilers commute operands freely.
  bool same(const Buffers& o, cpu::DType dt = cpu::DType::Float32) const {
    auto eq = [dt](const std::vector<float>& a, const std::vector<float>& b) {
      const size_t bytes = a.size() * sizeof(float);
      const char* pa = reinterpret_cast<const char*>(a.data());
      const char* pb = reinterpret_cast<const char*>(b.data());
      const size_t es = dt == cpu::DType::Float64 ? 8 : (dt == cpu::DType::Float32 ? 4 : 2);
      for (size_t off = 0; off + es <= bytes; off += es) {
        if (std::memcmp(pa + off, pb + off, es) == 0) continue;
        if (!(is_nan(pa + off, dt) && is_nan(pb + off, dt))) return false;
      }
      return true;
    };
    return eq(x, o.x) && eq(out, o.out) && eq(s0, o.s0) && eq(s1, o.s1) && eq(s2, o.s2);
  }
  static bool is_nan(const char* p, cpu::DType dt) {
    switch (dt) {
      case cpu::DType::Float32: {
        float v;
        std::memcpy(&v, p, 4);
        return std::isnan(v);
      }
      case cpu::DType::Float64: {
        double v;
        std::memcpy(&v, p, 8);
        return std::isnan(v);
      }
      case cpu::DType::Float16: {
        uint16_t h;
        std::memcpy(&h, p, 2);
        return (h & 0x7fffu) > 0x7c00u;
      }
      case cpu::DType::BFloat16: {
        uint16_t h;
        std::memcpy(&h, p, 2);
        return (h & 0x7fffu) > 0x7f80u;
      }
    }
    return false;
  }
};

// The f32 kernels of one level against the header rules applied in a plain scalar loop here.
void test_kernels_match_rules(const cpu::KernelTable& k) {
  const size_t n = 1000 + 7;  // a SIMD body and a tail
  for (int inplace = 0; inplace < 2; ++inplace) {
    for (int acc = 0; acc < 2; ++acc) {
      for (int ams = 0; ams < 2; ++ams) {
        Buffers got(n, 11), want(n, 11);
        auto pc = got.piece(inplace);
        cpu::AdamCall c{cpu::DType::Float32, 0.9, 0.999, 1e-8, 0.01, 2.0, -0.5, ams != 0, acc != 0};
        k.adam(c, &pc, 1);
        auto a = ew::make_adam_args<float>(0.9, 0.999, 1e-8, 0.01, 2.0, -0.5);
        float* out = inplace ? want.x.data() : want.out.data();
        for (size_t i = 0; i < n; ++i) {
          float m = want.s0[i], v = want.s1[i], vm = want.s2[i];
          float u = ams ? ew::adam_rule<ew::POW2, true>(want.x[i], m, v, vm, a)
                        : ew::adam_rule<ew::POW2, false>(want.x[i], m, v, vm, a);
          want.s0[i] = m;
          want.s1[i] = v;
          want.s2[i] = vm;
          out[i] = acc ? ew::epilogue<true>(out[i], u, a.out_scale)
                       : ew::epilogue<false>(out[i], u, a.out_scale);
        }
        CHECK_MSG(got.same(want), "%s adam inplace=%d acc=%d ams=%d", k.name, inplace, acc, ams);
      }
    }
  }
  {
    Buffers got(n, 12), want(n, 12);
    auto pc = got.piece(false);
    cpu::WeightDecayCall c{cpu::DType::Float32, 0.1, 1, 2.0, true};
    k.weight_decay(c, &pc, 1);
    auto a = ew::make_weight_decay_args<float>(0.1, 1, 2.0);
    for (size_t i = 0; i < n; ++i) {
      want.out[i] = ew::epilogue<true>(
          want.out[i], ew::weight_decay_rule<ew::DECAY_L1>(want.x[i], want.p[i], a), 2.0f);
    }
    CHECK_MSG(got.same(want), "%s weight_decay", k.name);
  }
}

// Every op, mode and dtype: the two SIMD levels give bitwise-identical results.
void test_levels_identical(const cpu::KernelTable& a, const cpu::KernelTable& b) {
  const cpu::DType dtypes[] = {cpu::DType::Float32, cpu::DType::Float64, cpu::DType::Float16,
                               cpu::DType::BFloat16};
  int cases = 0;
  for (cpu::DType dt : dtypes) {
    for (size_t n : {size_t(1), size_t(3), size_t(33), size_t(1031)}) {
      for (int inplace = 0; inplace < 2; ++inplace) {
        auto run = [&](auto&& call_a, auto&& call_b, const char* what) {
          // the float buffers are reinterpreted as the dtype's storage; values are whatever
          // bit patterns result (including NaNs and denormals), which is the point
          Buffers ba(n * 2, 21), bb(n * 2, 21);
          auto pa = ba.piece(inplace);
          auto pb = bb.piece(inplace);
          pa.n = pb.n = int64_t(n);
          call_a(&pa);
          call_b(&pb);
          ++cases;
          CHECK_MSG(ba.same(bb, dt), "%s vs %s: %s dtype=%d n=%zu inplace=%d", a.name, b.name, what,
                    int(dt), n, inplace);
        };
        for (double pw : {2.0, 1.0, 3.0, 0.5}) {
          for (int ams = 0; ams < 2; ++ams) {
            for (int acc = 0; acc < 2; ++acc) {
              cpu::AdamCall c{dt, 0.9, 0.999, 1e-8, 0.01, pw, -0.5, ams != 0, acc != 0};
              run([&](cpu::Piece* p) { a.adam(c, p, 1); }, [&](cpu::Piece* p) { b.adam(c, p, 1); },
                  "adam");
              for (int root = 0; root < 2; ++root) {
                cpu::EmaSqCall e{dt, 0.99, pw, 1.5, root != 0, ams != 0, acc != 0};
                run([&](cpu::Piece* p) { a.ema_sq(e, p, 1); },
                    [&](cpu::Piece* p) { b.ema_sq(e, p, 1); }, "ema_sq");
              }
            }
          }
        }
        for (int lerp = 0; lerp < 2; ++lerp) {
          for (double damp : {0.0, 0.25}) {
            for (double mom : {0.9, 0.3}) {
              cpu::MomentumCall c{dt, mom, damp, 0.75, lerp != 0, (lerp + int(damp * 4)) % 2 == 0};
              run([&](cpu::Piece* p) { a.ema(c, p, 1); }, [&](cpu::Piece* p) { b.ema(c, p, 1); },
                  "ema");
              run([&](cpu::Piece* p) { a.nag(c, p, 1); }, [&](cpu::Piece* p) { b.nag(c, p, 1); },
                  "nag");
            }
          }
        }
        for (int64_t op = 0; op < ew::UNARY_COUNT; ++op) {
          for (int acc = 0; acc < 2; ++acc) {
            cpu::UnaryCall c{dt, op, -0.5, 0.75, 2.0, acc != 0};
            run([&](cpu::Piece* p) { a.unary(c, p, 1); }, [&](cpu::Piece* p) { b.unary(c, p, 1); },
                "unary");
          }
        }
        for (int64_t ord : {1, 2, 3, 0, -1}) {
          cpu::WeightDecayCall c{dt, 0.1, ord, -1.0, true};
          run([&](cpu::Piece* p) { a.weight_decay(c, p, 1); },
              [&](cpu::Piece* p) { b.weight_decay(c, p, 1); }, "weight_decay");
        }
      }
    }
  }
  std::printf("  %d kernel cases compared between %s and %s\n", cases, a.name, b.name);

  // Every float16 / bfloat16 bit pattern through x*a + b (load, round on store): the same
  // bits at both levels, NaNs included (a single NaN operand propagates its payload).
  for (cpu::DType dt : {cpu::DType::Float16, cpu::DType::BFloat16}) {
    for (double scale : {1.0, 1.0 + 1.0 / 2048, 0.3, 65504.0}) {
      std::vector<uint16_t> x(65536), oa(65536), ob(65536);
      for (uint32_t i = 0; i < 65536; ++i) x[i] = uint16_t(i);
      cpu::Piece pa{x.data(), nullptr, oa.data(), nullptr, nullptr, nullptr, 65536};
      cpu::Piece pb{x.data(), nullptr, ob.data(), nullptr, nullptr, nullptr, 65536};
      cpu::UnaryCall c{dt, ew::UNARY_AFFINE, scale, 0.0, 1.0, false};
      a.unary(c, &pa, 1);
      b.unary(c, &pb, 1);
      size_t first_diff = 65536;
      for (size_t i = 0; i < 65536 && first_diff == 65536; ++i) {
        if (oa[i] != ob[i]) first_diff = i;
      }
      CHECK_MSG(first_diff == 65536, "dtype=%d scale=%g: x=%04zx gives %04x vs %04x", int(dt), scale,
                first_diff, first_diff < 65536 ? oa[first_diff] : 0, first_diff < 65536 ? ob[first_diff] : 0);
    }
  }
}

void test_kernel_tables() {
  const cpu::KernelTable* base = cpu::kernels_by_name("baseline");
  CHECK(base != nullptr);
  if (base == nullptr) return;
  CHECK(std::strcmp(base->name, "baseline") == 0);
  test_kernels_match_rules(*base);
  const cpu::KernelTable& chosen = cpu::kernels();
  std::printf("  selected SIMD level: %s\n", chosen.name);
  for (const char* const* lvl = cpu::simd_compiled(); *lvl != nullptr; ++lvl) {
    if (std::strcmp(*lvl, "baseline") == 0) continue;
    const cpu::KernelTable* t = cpu::kernels_by_name(*lvl);
    CHECK(t != nullptr);
    if (t == nullptr) continue;
    if (!cpu::simd_supported(*lvl)) {
      std::printf("  SIMD level %s compiled but not supported by this CPU: not compared\n", *lvl);
      continue;
    }
    test_kernels_match_rules(*t);
    test_levels_identical(*base, *t);
  }
}

}  // namespace

int main() {
  struct {
    const char* name;
    void (*fn)();
  } tests[] = {{"scalar helpers", test_scalar_helpers},
               {"lerp, powabs, root", test_lerp_pow_root},
               {"per-element rules", test_rules},
               {"float16/bfloat16 conversions", test_half_conversions},
               {"kernel tables", test_kernel_tables}};
  int failed_tests = 0;
  for (auto& t : tests) {
    const int before = g_failures;
    std::printf("[ RUN  ] %s\n", t.name);
    t.fn();
    const bool ok = g_failures == before;
    failed_tests += ok ? 0 : 1;
    std::printf("[ %s ] %s\n", ok ? " OK " : "FAIL", t.name);
  }
  const int n = int(sizeof tests / sizeof tests[0]);
  std::printf("%d checks, %d failed\n", g_checks, g_failures);
  std::printf("%d passed, %d failed\n", n - failed_tests, failed_tests);
  const int perturb_failures = run_perturb_tests();  // tests/cpp/test_perturb.cpp
  return g_failures == 0 && perturb_failures == 0 ? 0 : 1;
}
