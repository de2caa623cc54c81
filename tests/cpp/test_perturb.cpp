// C++ unit tests of the perturbation engine: Philox4x32-10 (Random123 known-answer vectors),
// the float32 log / sincos / Box-Muller of tzfast/random.h against float64 libm (exhaustive
// over every input the kernels can produce), and the CPU kernel tables (each level against the
// scalar definition, and the levels against each other, bit for bit). No torch.
//
// Run from main() in test_elementwise.cpp through run_perturb_tests() (one ctest executable).
#include "test_perturb.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "kernels/cpu_kernels.h"
#include "kernels/half_bits.h"
#include "kernels/perturb_kernels.h"
#include "tzfast/philox.h"
#include "tzfast/random.h"

namespace rng = tzfast::rng;
namespace cpu = tzfast::cpu;

namespace {

int g_failures = 0;
int g_checks = 0;

#define PCHECK_MSG(cond, ...)                                                       \
  do {                                                                              \
    ++g_checks;                                                                     \
    if (!(cond)) {                                                                  \
      ++g_failures;                                                                 \
      if (g_failures <= 50) {                                                       \
        std::printf("%s:%d: CHECK(%s) failed: ", __FILE__, __LINE__, #cond);        \
        std::printf(__VA_ARGS__);                                                   \
        std::printf("\n");                                                          \
      }                                                                             \
    }                                                                               \
  } while (0)
#define PCHECK(cond) PCHECK_MSG(cond, "%s", "")

template <typename T>
uint64_t bits_of(T v) {
  uint64_t b = 0;
  std::memcpy(&b, &v, sizeof v);
  return b;
}

// Distance of a float32 result from the exact value, in units of the float32 ulp at the exact
// value.
double ulp_error(float got, double exact) {
  const float e = static_cast<float>(std::fabs(exact));
  const double ulp = static_cast<double>(std::nextafter(e, INFINITY)) - static_cast<double>(e);
  return std::fabs(static_cast<double>(got) - exact) / ulp;
}

// ------------------------------------------------------------------ Philox known answers
void test_philox_known_answers() {
  // Random123 kat_vectors: philox4x32 10 <counter x4> <key x2> -> <output x4>
  struct Kat {
    uint32_t ctr[4];
    uint32_t key[2];
    uint32_t out[4];
  };
  const Kat kats[] = {
      {{0u, 0u, 0u, 0u}, {0u, 0u}, {0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u}},
      {{0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu},
       {0xffffffffu, 0xffffffffu},
       {0x408f276du, 0x41c83b0eu, 0xa20bc7c6u, 0x6d5451fdu}},
      {{0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u},
       {0xa4093822u, 0x299f31d0u},
       {0xd16cfe09u, 0x94fdccebu, 0x5001e420u, 0x24126ea1u}},
  };
  for (const Kat& k : kats) {
    uint32_t x0 = k.ctr[0], x1 = k.ctr[1], x2 = k.ctr[2], x3 = k.ctr[3];
    rng::philox4x32_10(x0, x1, x2, x3, k.key[0], k.key[1]);
    PCHECK_MSG(x0 == k.out[0] && x1 == k.out[1] && x2 == k.out[2] && x3 == k.out[3],
               "got %08x %08x %08x %08x", x0, x1, x2, x3);
  }
  // The counter layout: block b of direction (seed, sample) is counter (lo(b), hi(b), sample,
  // 0) under key (lo(seed), hi(seed)).
  uint32_t a0, a1, a2, a3;
  rng::direction_block(rng::key_of_seed(int64_t(0x299f31d0a4093822)), 0x13198a2eu,
                       0x85a308d3243f6a88ull, a0, a1, a2, a3);
  uint32_t b0 = 0x243f6a88u, b1 = 0x85a308d3u, b2 = 0x13198a2eu, b3 = 0u;
  rng::philox4x32_10(b0, b1, b2, b3, 0xa4093822u, 0x299f31d0u);
  PCHECK(a0 == b0 && a1 == b1 && a2 == b2 && a3 == b3);
  const rng::Key neg = rng::key_of_seed(-1);
  PCHECK(neg.k0 == 0xffffffffu && neg.k1 == 0xffffffffu);
}

// ------------------------------------------------------------------ float32 math vs libm
void test_log_exhaustive() {
  double worst = 0.0;
  int32_t worst_v = 0;
  for (int32_t v = 1; v < (1 << 24); v += 2) {
    const double exact = std::log(static_cast<double>(v)) - 24.0 * std::log(2.0);
    const double err = ulp_error(rng::log_odd24(v), exact);
    if (err > worst) {
      worst = err;
      worst_v = v;
    }
  }
  std::printf("  log_odd24: max error %.3f ulp (v = %d)\n", worst, worst_v);
  PCHECK_MSG(worst <= 2.0, "max error %.3f ulp at v = %d", worst, worst_v);
  PCHECK(rng::log_odd24((1 << 24) - 1) < 0.0f);  // u < 1: ln u < 0, so r > 0
}

void test_sincos_exhaustive() {
  double worst_s = 0.0, worst_c = 0.0;
  const double two_pi = 2.0 * 3.14159265358979323846;
  for (int32_t v = 1; v < (1 << 24); v += 2) {
    float s, c;
    rng::sincos_odd24(v, s, c);
    const double a = two_pi * (static_cast<double>(v) * 0x1p-24);
    worst_s = std::fmax(worst_s, ulp_error(s, std::sin(a)));
    worst_c = std::fmax(worst_c, ulp_error(c, std::cos(a)));
  }
  std::printf("  sincos_odd24: max error sin %.3f ulp, cos %.3f ulp\n", worst_s, worst_c);
  PCHECK_MSG(worst_s <= 2.0 && worst_c <= 2.0, "sin %.3f cos %.3f ulp", worst_s, worst_c);
}

void test_box_muller() {
  // the radius, exhaustively over u1; the pair against float64 Box-Muller on random words
  double worst_r = 0.0;
  for (int32_t v = 1; v < (1 << 24); v += 2) {
    const float r = rng::sqrt_rn(-2.0f * rng::log_odd24(v));
    const double ln_u = std::log(static_cast<double>(v)) - 24.0 * std::log(2.0);
    const double exact = std::sqrt(-2.0 * ln_u);
    worst_r = std::fmax(worst_r, ulp_error(r, exact));
  }
  std::printf("  Box-Muller radius: max error %.3f ulp\n", worst_r);
  PCHECK_MSG(worst_r <= 2.0, "radius %.3f ulp", worst_r);

  std::mt19937 gen(1234);
  double worst = 0.0;
  for (int i = 0; i < 1000000; ++i) {
    const uint32_t xe = gen(), xo = gen();
    float ze, zo;
    rng::box_muller(xe, xo, ze, zo);
    const double u1 = static_cast<double>(rng::odd24(xe)) * 0x1p-24;
    const double u2 = static_cast<double>(rng::odd24(xo)) * 0x1p-24;
    const double r = std::sqrt(-2.0 * std::log(u1));
    const double a = 2.0 * 3.14159265358979323846 * u2;
    // error relative to the radius (a cos or sin near 0 has tiny values)
    const double ulp_r = static_cast<double>(std::nextafter(static_cast<float>(r), INFINITY)) - r;
    worst = std::fmax(worst, std::fabs(ze - r * std::cos(a)) / ulp_r);
    worst = std::fmax(worst, std::fabs(zo - r * std::sin(a)) / ulp_r);
  }
  std::printf("  Box-Muller pair: max error %.3f ulp of the radius\n", worst);
  PCHECK_MSG(worst <= 4.5, "%.3f", worst);
}

void test_uniform_and_rademacher() {
  // symmetric: u and 1 - u are equally likely, so every value comes with its negative
  size_t asymmetric = 0;
  float hi = 0.0f;
  for (uint32_t top = 0; top < (1u << 23); ++top) {
    const float u = rng::uniform_value(top << 9);
    const float mirror = rng::uniform_value(((1u << 23) - 1u - top) << 9);
    asymmetric += u == -mirror ? 0 : 1;
    hi = std::fmax(hi, u);
  }
  PCHECK_MSG(asymmetric == 0, "%zu values without their negative", asymmetric);
  PCHECK(hi < rng::kSqrt3 && hi > 1.7320f);
  PCHECK(rng::uniform_value(0x80000000u) ==
         static_cast<float>(0x1p-23) * rng::kSqrt3);  // v = 2^23 + 1 -> 2u - 1 = 2^-23
  PCHECK(rng::rademacher_value(0u, 5) == 1.0f);
  PCHECK(rng::rademacher_value(1u << 5, 5) == -1.0f);
  PCHECK(rng::rademacher_value(0x80000000u, 31) == -1.0f);
}

// ------------------------------------------------------------------ kernels
template <typename T>
using Compute = typename cpu::Compute<T>::type;

struct Layout {
  std::vector<int64_t> sizes;
  std::vector<int64_t> offsets;
};

std::vector<Layout> layouts() {
  return {
      {{1}, {0}},
      {{5, 1, 3}, {0, 5, 6}},
      {{1000, 37, 2049}, {3, 2000, 100}},          // unaligned, gaps, overlap in index
      {{4096 + 7}, {1021}},                        // crosses tiles
      {{70000}, {32760}},                          // crosses kernel chunks
      // the high counter word: Gaussian blocks 2^32 - 1 / 2^32, Rademacher 2^32 - 1 / 2^32
      {{129, 127, 0, 255, 300}, {127, 1, 500, (int64_t(1) << 34) - 7, (int64_t(1) << 39) - 100}},
  };
}

template <typename T>
std::vector<T> initial_values(int64_t n, uint32_t seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<double> nd;
  std::vector<T> v(static_cast<size_t>(n));
  for (auto& x : v) x = cpu::store<T>(static_cast<Compute<T>>(nd(gen)));
  return v;
}

// The scalar definition: acc = w0 z0, acc = acc + wk zk; out = (acc ? out : 0) + acc.
template <typename T>
std::vector<T> reference(int32_t dist, rng::Key key, const std::vector<uint32_t>& samples,
                         const std::vector<double>& weights, bool accumulate, int64_t offset,
                         std::vector<T> out) {
  using C = Compute<T>;
  for (size_t e = 0; e < out.size(); ++e) {
    C acc = C(0);
    for (size_t k = 0; k < samples.size(); ++k) {
      const C z = static_cast<C>(rng::direction_value(dist, key, samples[k],
                                                      static_cast<uint64_t>(offset) + e));
      const C term = static_cast<C>(weights[k]) * z;
      acc = k == 0 ? term : acc + term;
    }
    out[e] = cpu::store<T>(accumulate ? cpu::load(out[e]) + acc : acc);
  }
  return out;
}

template <typename T>
cpu::DType dtype_of();
template <>
cpu::DType dtype_of<float>() { return cpu::DType::Float32; }
template <>
cpu::DType dtype_of<double>() { return cpu::DType::Float64; }
template <>
cpu::DType dtype_of<cpu::f16>() { return cpu::DType::Float16; }
template <>
cpu::DType dtype_of<cpu::bf16>() { return cpu::DType::BFloat16; }

template <typename T>
bool same(const T& a, const T& b) {
  return std::memcmp(&a, &b, sizeof(T)) == 0;
}

// Runs one call through a kernel table, one piece per tensor (the op splits further; the
// result must not depend on it).
template <typename T>
std::vector<std::vector<T>> run_table(const cpu::PerturbTable& table, int32_t dist,
                                      rng::Key key, const std::vector<uint32_t>& samples,
                                      const std::vector<double>& weights, bool accumulate,
                                      const Layout& layout, uint32_t seed) {
  std::vector<std::vector<T>> outs;
  std::vector<cpu::DirectionPiece> pieces;
  for (size_t j = 0; j < layout.sizes.size(); ++j) {
    outs.push_back(initial_values<T>(layout.sizes[j], seed + uint32_t(j)));
  }
  for (size_t j = 0; j < layout.sizes.size(); ++j) {
    if (layout.sizes[j] > 0) {
      pieces.push_back(cpu::DirectionPiece{outs[j].data(), layout.sizes[j], layout.offsets[j]});
    }
  }
  const cpu::DirectionsCall c{dtype_of<T>(), dist, key.k0, key.k1, samples.data(),
                              weights.data(), int64_t(samples.size()), accumulate};
  table.accumulate_directions(c, pieces.data(), int64_t(pieces.size()));
  return outs;
}

template <typename T>
void check_table_against_reference(const cpu::PerturbTable& table) {
  const rng::Key key = rng::key_of_seed(0x0123456789abcdefll);
  for (int32_t dist = 0; dist < rng::kNumDistributions; ++dist) {
    for (int nk : {1, 3, 20}) {  // 20 > the Rademacher kernel's group of 16
      std::vector<uint32_t> samples;
      std::vector<double> weights;
      for (int k = 0; k < nk; ++k) {
        samples.push_back(uint32_t(k * 7 + 1));
        weights.push_back(0.37 * (k + 1) * (k % 2 ? -1.0 : 1.0));
      }
      for (bool acc : {false, true}) {
        for (const Layout& layout : layouts()) {
          const auto got = run_table<T>(table, dist, key, samples, weights, acc, layout, 99);
          for (size_t j = 0; j < layout.sizes.size(); ++j) {
            const auto want = reference<T>(dist, key, samples, weights, acc, layout.offsets[j],
                                           initial_values<T>(layout.sizes[j], 99 + uint32_t(j)));
            size_t bad = 0;
            for (size_t e = 0; e < want.size(); ++e) bad += same(got[j][e], want[e]) ? 0 : 1;
            PCHECK_MSG(bad == 0, "%s dist %d K %d acc %d tensor %zu: %zu of %zu differ",
                       table.name, dist, nk, int(acc), j, bad, want.size());
          }
        }
      }
    }
  }
}

template <typename T>
void check_levels_identical(const cpu::PerturbTable& a, const cpu::PerturbTable& b) {
  const rng::Key key = rng::key_of_seed(-77);
  for (int32_t dist = 0; dist < rng::kNumDistributions; ++dist) {
    const std::vector<uint32_t> samples = {0, 1, 4000000000u, 5};
    const std::vector<double> weights = {1.0, -0.25, 3.5, 1e-3};
    for (const Layout& layout : layouts()) {
      const auto x = run_table<T>(a, dist, key, samples, weights, true, layout, 7);
      const auto y = run_table<T>(b, dist, key, samples, weights, true, layout, 7);
      size_t bad = 0;
      for (size_t j = 0; j < x.size(); ++j) {
        for (size_t e = 0; e < x[j].size(); ++e) bad += same(x[j][e], y[j][e]) ? 0 : 1;
      }
      PCHECK_MSG(bad == 0, "%s vs %s, dist %d: %zu values differ", a.name, b.name, dist, bad);
    }
  }
}

// The sum of squares in its defined order (random.h: kSqNormBlock, kSqNormLanes).
double sq_norm_reference(int32_t dist, rng::Key key, uint32_t sample, int64_t numel) {
  double total = 0.0;
  for (int64_t b0 = 0; b0 < numel; b0 += rng::kSqNormBlock) {
    double s[rng::kSqNormLanes] = {};
    for (int64_t i = b0; i < std::min(numel, b0 + rng::kSqNormBlock); ++i) {
      const double z = rng::direction_value(dist, key, sample, static_cast<uint64_t>(i));
      s[i % rng::kSqNormLanes] = s[i % rng::kSqNormLanes] + z * z;
    }
    total += ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
  }
  return total;
}

void check_sq_norm(const cpu::PerturbTable& table) {
  const rng::Key key = rng::key_of_seed(31337);
  for (int32_t dist = 0; dist < rng::kNumDistributions; ++dist) {
    for (int64_t numel : {int64_t(1), int64_t(13), int64_t(4096), int64_t(10000)}) {
      const int64_t blocks = (numel + rng::kSqNormBlock - 1) / rng::kSqNormBlock;
      const cpu::SqNormCall c{dist, key.k0, key.k1, 3u, numel};
      std::vector<double> values(static_cast<size_t>(blocks));
      table.sq_norm_blocks(c, 0, blocks, values.data());
      double total = 0.0;
      for (double v : values) total += v;
      const double want = sq_norm_reference(dist, key, 3u, numel);
      PCHECK_MSG(bits_of(total) == bits_of(want), "%s dist %d numel %lld: %.17g vs %.17g",
                 table.name, dist, static_cast<long long>(numel), total, want);
      // blocks computed one at a time give the same values
      if (blocks > 1) {
        double last = 0.0;
        table.sq_norm_blocks(c, blocks - 1, 1, &last);
        PCHECK(bits_of(last) == bits_of(values.back()));
      }
    }
  }
}

void test_perturb_kernel_tables() {
  for (const char* const* level = cpu::simd_compiled(); *level != nullptr; ++level) {
    const cpu::PerturbTable* t = cpu::perturb_kernels_by_name(*level);
    PCHECK_MSG(t != nullptr, "level %s has no perturb table", *level);
    if (t == nullptr || !cpu::simd_supported(*level)) continue;
    check_table_against_reference<float>(*t);
    check_table_against_reference<double>(*t);
    check_table_against_reference<cpu::f16>(*t);
    check_table_against_reference<cpu::bf16>(*t);
    check_sq_norm(*t);
  }
  const cpu::PerturbTable* base = cpu::perturb_kernels_by_name("baseline");
  for (const char* const* level = cpu::simd_compiled(); *level != nullptr; ++level) {
    const cpu::PerturbTable* t = cpu::perturb_kernels_by_name(*level);
    if (t == nullptr || t == base || !cpu::simd_supported(*level)) continue;
    check_levels_identical<float>(*base, *t);
    check_levels_identical<double>(*base, *t);
    check_levels_identical<cpu::f16>(*base, *t);
  }
  PCHECK(std::strcmp(cpu::perturb_kernels().name, cpu::kernels().name) == 0);
}

}  // namespace

int run_perturb_tests() {
  struct {
    const char* name;
    void (*fn)();
  } tests[] = {{"Philox4x32-10 known answers", test_philox_known_answers},
               {"log (exhaustive)", test_log_exhaustive},
               {"sincos (exhaustive)", test_sincos_exhaustive},
               {"Box-Muller", test_box_muller},
               {"uniform and Rademacher values", test_uniform_and_rademacher},
               {"perturbation kernel tables", test_perturb_kernel_tables}};
  int failed_tests = 0;
  for (auto& t : tests) {
    const int before = g_failures;
    std::printf("[ RUN  ] %s\n", t.name);
    t.fn();
    const bool ok = g_failures == before;
    failed_tests += ok ? 0 : 1;
    std::printf("[ %s ] %s\n", ok ? " OK " : "FAIL", t.name);
  }
  std::printf("perturbation: %d checks, %d failed; %d tests failed\n", g_checks, g_failures,
              failed_tests);
  return g_failures;
}
