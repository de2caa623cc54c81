// Interface between the ATen-facing op code (csrc/ops/) and the CPU kernels
// (csrc/kernels/elementwise_kernels.cpp, compiled once per SIMD level).
//
// Only plain data crosses this boundary: raw pointers, element counts and doubles. No ATen
// and no type from elementwise.h appears here, so the ISA-specific translation units stay
// free of anything with external linkage that could be shared (ODR) between SIMD levels.
#pragma once

#include <cstdint>

namespace tzfast {
namespace cpu {

// Element type of every tensor of one call. Half types compute in float.
enum class DType : int32_t { Float32 = 0, Float64 = 1, Float16 = 2, BFloat16 = 3 };

// A contiguous run of elements of one tensor. All pointers already point at the first
// element of the run. `out` may alias `x` or `p` exactly (same address), never partially.
// `s0..s2` point into the flat state buffers (which ones depends on the op; nullptr when
// absent).
struct Piece {
  const void* x;
  const void* p;  // weight_decay_ only
  void* out;
  void* s0;
  void* s1;
  void* s2;
  int64_t n;
};

struct AdamCall {
  DType dtype;
  double beta1, beta2, eps, step_size, pow, out_scale;
  bool amsgrad;  // s2 = max_exp_avg_sq
  bool accumulate;
};  // s0 = exp_avg, s1 = exp_avg_sq

struct MomentumCall {  // ema_ and nag_
  DType dtype;
  double momentum, dampening, out_scale;
  bool lerp;
  bool accumulate;
};  // s0 = exp_avg / velocity

struct EmaSqCall {
  DType dtype;
  double beta, pow, out_scale;
  bool take_root;
  bool amsgrad;  // s1 = max_exp_avg_sq
  bool accumulate;
};  // s0 = exp_avg_sq

struct UnaryCall {
  DType dtype;
  int64_t op;  // validated by the caller
  double a, b, out_scale;
  bool accumulate;
};

struct WeightDecayCall {
  DType dtype;
  double weight_decay;
  int64_t ord;
  double out_scale;
  bool accumulate;
};

// One SIMD level's kernels. Each runs over `count` pieces serially; the caller
// parallelises over pieces.
struct KernelTable {
  const char* name;
  void (*adam)(const AdamCall&, const Piece*, int64_t count);
  void (*ema)(const MomentumCall&, const Piece*, int64_t count);
  void (*nag)(const MomentumCall&, const Piece*, int64_t count);
  void (*ema_sq)(const EmaSqCall&, const Piece*, int64_t count);
  void (*unary)(const UnaryCall&, const Piece*, int64_t count);
  void (*weight_decay)(const WeightDecayCall&, const Piece*, int64_t count);
};

// The table chosen at run time: AVX2+FMA+F16C when compiled in and the CPU (and OS) support it,
// else baseline. Environment TZFAST_SIMD=baseline forces the baseline level; TZFAST_SIMD=avx2
// asks for AVX2 (still only when supported). Chosen once, on first use.
const KernelTable& kernels();

// Every level compiled into this build, in increasing order; nullptr-terminated.
const char* const* simd_compiled();

// A specific compiled level by name (nullptr when not compiled in); for tests and benchmarks.
const KernelTable* kernels_by_name(const char* name);

// Whether this CPU can run a level ("baseline" always can).
bool simd_supported(const char* name);

}  // namespace cpu
}  // namespace tzfast
