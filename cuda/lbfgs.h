// Launcher of the CUDA half of the L-BFGS direction (docs/lbfgs.md): the Gram update and the
// coefficients, one thread on the device, so a direction never waits for the host.
//
// Torch-free, like launchers.h: included by cuda/lbfgs.cu (plain nvcc, also in the torch-free
// `cuda_compile_check`) and by the tensor glue csrc/ops/lbfgs_cuda.cpp, which runs the two
// passes over the history with cuBLAS through ATen (mm, then mv).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace tzfast {
namespace cuda {

// Inputs, all in device memory:
//   R       [2 * slots, rcols] float64, row-major: history row r against x (column 0) and, when
//           new_slot >= 0 (rcols == 3), against s_new (column 1) and y_new (column 2);
//   gram    [2, slots, slots] float64 (s_a . y_b, y_a . y_b by slot), updated in place for
//           new_slot;
//   order   m slots, oldest first (new_slot, when >= 0, is order[m - 1]); sy: their s . y;
//   scratch at least lbfgs_scratch_doubles(m) doubles.
// Outputs (device): coef_rows [2 * slots] (the coefficient of every history row, 0 for unused
// rows) and gamma [1]. m may be 0 (coef_rows all 0, gamma 1).
struct LbfgsCoefficientsCall {
  const double* R;
  int64_t rcols;
  double* gram;
  int64_t slots;
  const int64_t* order;
  const double* sy;
  int64_t m;
  int64_t new_slot;
  int64_t method;  // 0 L-BFGS, 1 L-SR1, 2 compact L-SR1
  double tiny;     // L-SR1's skip threshold
  double* scratch;
  double* coef_rows;
  double* gamma;
};

int64_t lbfgs_scratch_doubles(int64_t m);

cudaError_t launch_lbfgs_coefficients(const LbfgsCoefficientsCall& call, cudaStream_t stream);

}  // namespace cuda
}  // namespace tzfast
