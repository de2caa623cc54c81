// Run-time choice of the SIMD level of the CPU kernels. Compiled with baseline flags.
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "cpu_kernels.h"
#include "lbfgs_kernels.h"
#include "perturb_kernels.h"

namespace tzfast {
namespace cpu {

namespace baseline {
const KernelTable& table();
const PerturbTable& perturb_table();
const LbfgsTable& lbfgs_table();
}
#ifdef TZFAST_HAVE_AVX2
namespace avx2 {
const KernelTable& table();
const PerturbTable& perturb_table();
const LbfgsTable& lbfgs_table();
}
#endif

namespace {

const char* const kCompiled[] = {
    "baseline",
#ifdef TZFAST_HAVE_AVX2
    "avx2",
#endif
    nullptr};

bool cpu_has_avx2_fma() {
#if defined(TZFAST_HAVE_AVX2) && (defined(__x86_64__) || defined(__i386__))
  __builtin_cpu_init();
  // libgcc also checks that the OS saves the YMM state (XCR0) before reporting avx2.
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
         __builtin_cpu_supports("f16c");
#else
  return false;
#endif
}

const KernelTable& select() {
  const char* env = std::getenv("TZFAST_SIMD");
  const bool avx2_ok = cpu_has_avx2_fma();
  if (env != nullptr && *env != '\0' && std::strcmp(env, "auto") != 0) {
    if (std::strcmp(env, "baseline") == 0) return baseline::table();
    if (std::strcmp(env, "avx2") != 0) {
      std::fprintf(stderr,
                   "tzfast: ignoring TZFAST_SIMD=%s (accepted: auto, baseline, avx2)\n", env);
    } else if (!avx2_ok) {
      std::fprintf(stderr, "tzfast: TZFAST_SIMD=avx2 but %s; using baseline\n",
#ifdef TZFAST_HAVE_AVX2
                   "this CPU lacks AVX2/FMA/F16C"
#else
                   "this build has no AVX2 kernels"
#endif
      );
    }
  }
#ifdef TZFAST_HAVE_AVX2
  if (avx2_ok) return avx2::table();
#endif
  return baseline::table();
}

}  // namespace

const KernelTable& kernels() {
  static const KernelTable& chosen = select();
  return chosen;
}

const char* const* simd_compiled() { return kCompiled; }

bool simd_supported(const char* name) {
  if (std::strcmp(name, "baseline") == 0) return true;
  if (std::strcmp(name, "avx2") == 0) return cpu_has_avx2_fma();
  return false;
}

const KernelTable* kernels_by_name(const char* name) {
  if (std::strcmp(name, "baseline") == 0) return &baseline::table();
#ifdef TZFAST_HAVE_AVX2
  if (std::strcmp(name, "avx2") == 0) return &avx2::table();
#endif
  return nullptr;
}

const PerturbTable* perturb_kernels_by_name(const char* name) {
  if (std::strcmp(name, "baseline") == 0) return &baseline::perturb_table();
#ifdef TZFAST_HAVE_AVX2
  if (std::strcmp(name, "avx2") == 0) return &avx2::perturb_table();
#endif
  return nullptr;
}

// The level kernels() chose (its name is one of the compiled levels).
const PerturbTable& perturb_kernels() {
  static const PerturbTable& chosen = *perturb_kernels_by_name(kernels().name);
  return chosen;
}

const LbfgsTable* lbfgs_kernels_by_name(const char* name) {
  if (std::strcmp(name, "baseline") == 0) return &baseline::lbfgs_table();
#ifdef TZFAST_HAVE_AVX2
  if (std::strcmp(name, "avx2") == 0) return &avx2::lbfgs_table();
#endif
  return nullptr;
}

const LbfgsTable& lbfgs_kernels() {
  static const LbfgsTable& chosen = *lbfgs_kernels_by_name(kernels().name);
  return chosen;
}

}  // namespace cpu
}  // namespace tzfast
