// Device-independent half of the perturbation ops (docs/perturbation.md): argument checks and
// the segment list. Implemented in csrc/ops/perturb.cpp; used there by the CPU kernels and by
// the CUDA glue (csrc/ops/perturb_cuda.cpp), so both backends accept and reject exactly the
// same calls with the same messages.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <utility>
#include <vector>

namespace tzfast {
namespace ops {

// One non-empty output tensor after preparation: contiguous memory (out[j] itself or a
// contiguous temporary copied back by finish()), its element count and its global offset.
struct DirectionSegment {
  void* out;
  int64_t numel;
  int64_t offset;
};

struct PreparedDirections {
  std::vector<DirectionSegment> segments;  // non-empty tensors only, in list order
  int64_t total = 0;                       // sum of their numel
  at::ScalarType dtype = at::kFloat;       // common dtype (meaningful when out is not empty)
  uint32_t k0 = 0, k1 = 0;                 // Philox key of the seed
  std::vector<uint32_t> samples;           // counter word 2 of each direction
  std::vector<double> weights;             // out_scale * coeffs[k], in double

  // Copies contiguous temporaries back into non-contiguous out tensors (after the kernel ran;
  // on CUDA, enqueued on the current stream).
  void finish();

  std::vector<std::pair<at::Tensor, at::Tensor>> write_back;
};

// Checks everything docs/perturbation.md requires of an accumulate_directions_ call, in this
// order: the distribution code; samples and coeffs of one length >= 1; every sample in
// [0, 2^32); offsets as long as out; every offset >= 0 (and offset + numel representable);
// one floating dtype (float32/float64/float16/bfloat16) and one device for every tensor (those
// of out[0]); no internal overlap in any out[j]. Every failure is a TORCH_CHECK naming the op,
// the argument, the expected and the actual value.
PreparedDirections prepare_directions(const char* op, at::TensorList out, at::IntArrayRef offsets,
                                      int64_t seed, at::IntArrayRef samples,
                                      at::ArrayRef<double> coeffs, int64_t dist,
                                      double out_scale, bool accumulate);

// The checks of direction_sq_norm's scalars (distribution code, sample, numel >= 0).
void check_sq_norm_args(const char* op, int64_t sample, int64_t dist, int64_t numel);

// The CPU kernel of accumulate_directions_ called without the dispatcher (the same checks,
// kernels and results; every out[j] must be a CPU tensor; version counters bumped as the
// dispatcher would). For tzfast._C's direct calls, where the dispatcher's ~3 us per call is
// most of the cost of a step on a small problem.
void accumulate_directions_cpu_direct(at::TensorList out, at::IntArrayRef offsets, int64_t seed,
                                      at::IntArrayRef samples, at::ArrayRef<double> coeffs,
                                      int64_t dist, double out_scale, bool accumulate);

// "0 (gaussian, normal), 1 (rademacher), 2 (uniform), 3 (sphere)", for error messages.
const char* distribution_codes_text();

}  // namespace ops
}  // namespace tzfast
