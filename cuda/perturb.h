// Launcher of the CUDA kernel of accumulate_directions_ (docs/perturbation.md).
//
// Torch-free, like launchers.h: included by cuda/perturb.cu (plain nvcc, also in the
// torch-free `cuda_compile_check`) and by the tensor glue csrc/ops/perturb_cuda.cpp. Only raw
// device pointers, counts and a cudaStream_t cross this boundary. The per-element math is
// csrc/include/tzfast/random.h, the code the CPU kernels run.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "cuda/launchers.h"  // DType

namespace tzfast {
namespace cuda {

// One non-empty output tensor. A quad is four consecutive global element indices starting at a
// multiple of 4; the segment touches quads offset/4 .. (offset + numel - 1)/4, and `first_quad`
// is the number of quads touched by the segments before it (the segment's position in the
// call's sequence of quads).
struct DirectionSegment {
  void* out;           // contiguous, `numel` elements
  int64_t numel;       // > 0
  int64_t offset;      // global element index of out[0], >= 0
  int64_t first_quad;  // prefix sum of the quads of the earlier segments
};
static_assert(sizeof(DirectionSegment) == 32, "DirectionSegment must be four 8-byte fields");

// Everything the kernel reads, in device memory.
struct DirectionTable {
  const DirectionSegment* segments;  // `count` entries, first_quad increasing
  int64_t count;
  int64_t total_quads;               // sum of every segment's quads
  const uint32_t* samples;           // counter word 2 of each direction
  const double* weights;             // out_scale * coeffs[k] (converted to the compute type
                                     // in the kernel, as on the CPU)
  int64_t num_directions;            // >= 1
};

// out[e] = (accumulate ? out[e] : 0) + sum_k weights[k] * z(key, samples[k], offset + e), the
// sum from k = 0 in order, in float (double for Float64), one launch on `stream`. Returns
// cudaErrorInvalidValue for arguments it cannot handle (unknown dtype or distribution, a null
// table with work to do); launch errors are left to cudaGetLastError.
cudaError_t launch_accumulate_directions(DType dtype, const DirectionTable& table, int32_t dist,
                                         uint32_t k0, uint32_t k1, bool accumulate,
                                         cudaStream_t stream);

}  // namespace cuda
}  // namespace tzfast
