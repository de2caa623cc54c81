// Interface between the ATen-facing perturbation ops (csrc/ops/perturb.cpp) and their CPU
// kernels (csrc/kernels/perturb_kernels.cpp, compiled once per SIMD level like the elementwise
// kernels; docs/perturbation.md has the math).
//
// Plain data only (raw pointers, counts, doubles), as in cpu_kernels.h.
#pragma once

#include <cstdint>

#include "cpu_kernels.h"

namespace tzfast {
namespace cpu {

// A contiguous run of one output tensor: `n` elements starting at `out`, whose first element
// has global element index `offset`.
struct DirectionPiece {
  void* out;
  int64_t n;
  int64_t offset;
};

// accumulate_directions_: out[e] = (accumulate ? out[e] : 0) + sum_k weights[k] * z_k[offset + e]
// with weights[k] = out_scale * coeffs[k] (computed in double by the caller, converted once to
// the compute type in the kernel) and z_k the direction (seed, samples[k]) of distribution
// `dist`. The sum runs over k in order, starting from weights[0] * z_0.
struct DirectionsCall {
  DType dtype;
  int32_t dist;  // validated by the caller
  uint32_t k0, k1;
  const uint32_t* samples;
  const double* weights;
  int64_t count;  // number of directions, >= 1
  bool accumulate;
};

// direction_sq_norm: the float64 value of blocks [first, first + count) (tzfast/random.h,
// kSqNormBlock) of sum_i z_i^2 over i < numel, written to block_values[0 .. count).
struct SqNormCall {
  int32_t dist;
  uint32_t k0, k1;
  uint32_t sample;
  int64_t numel;
};

struct PerturbTable {
  const char* name;
  void (*accumulate_directions)(const DirectionsCall&, const DirectionPiece*, int64_t count);
  void (*sq_norm_blocks)(const SqNormCall&, int64_t first, int64_t count, double* block_values);
};

// The table of the SIMD level kernels() runs (the same choice, TZFAST_SIMD included).
const PerturbTable& perturb_kernels();

// A compiled level by name (nullptr when not compiled in); for tests and benchmarks.
const PerturbTable* perturb_kernels_by_name(const char* name);

}  // namespace cpu
}  // namespace tzfast
