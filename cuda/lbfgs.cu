// CUDA kernel of the scalar half of the L-BFGS direction (see cuda/lbfgs.h): one thread runs
// the Gram update and the coefficient recursion of csrc/include/tzfast/lbfgs.h, the code the
// CPU op runs on the host, on O(m^2) (L-SR1: O(m^3)) numbers in global memory. The
// vector passes are cuBLAS calls made by the glue.
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/lbfgs.h"
#include "tzfast/lbfgs.h"

namespace tzfast {
namespace cuda {
namespace {

namespace lb = ::tzfast::lbfgs;

__global__ void lbfgs_coefficients_kernel(LbfgsCoefficientsCall c) {
  if (blockIdx.x != 0 || threadIdx.x != 0) return;
  for (int64_t r = 0; r < 2 * c.slots; ++r) c.coef_rows[r] = 0.0;
  const int64_t m = c.m;
  if (m == 0) {
    c.gamma[0] = 1.0;
    return;
  }
  double* Sx = c.scratch;
  double* Yx = Sx + m;
  double* t0 = Yx + m;
  double* t1 = t0 + m;
  double* t2 = t1 + m;
  double* coef = t2 + m;
  double* work = coef + 2 * m;
  const int64_t k = c.rcols;
  for (int64_t i = 0; i < m; ++i) {
    const int64_t rs = 2 * c.order[i];
    Sx[i] = c.R[rs * k];
    Yx[i] = c.R[(rs + 1) * k];
  }
  const lb::Gram g{c.gram, c.gram + c.slots * c.slots, c.slots, c.order};
  if (c.new_slot >= 0) {
    for (int64_t i = 0; i < m; ++i) {
      const int64_t rs = 2 * c.order[i];
      t0[i] = c.R[rs * k + 2];        // s_i . y_t
      t1[i] = c.R[(rs + 1) * k + 1];  // y_i . s_t
      t2[i] = c.R[(rs + 1) * k + 2];  // y_i . y_t
    }
    lb::update_gram(g, m, t0, t1, t2);
  }
  c.gamma[0] = lb::coefficients(c.method, g, Sx, Yx, c.sy, m, c.tiny, coef, work);
  for (int64_t i = 0; i < m; ++i) {
    c.coef_rows[2 * c.order[i]] = coef[2 * i];
    c.coef_rows[2 * c.order[i] + 1] = coef[2 * i + 1];
  }
}

}  // namespace

int64_t lbfgs_scratch_doubles(int64_t m) { return 7 * m + lbfgs::scratch_size(m); }

cudaError_t launch_lbfgs_coefficients(const LbfgsCoefficientsCall& call, cudaStream_t stream) {
  if (call.m < 0 || call.slots <= 0 || call.R == nullptr || call.gram == nullptr ||
      call.coef_rows == nullptr || call.gamma == nullptr ||
      (call.m > 0 && (call.order == nullptr || call.sy == nullptr || call.scratch == nullptr)) ||
      (call.new_slot >= 0 && call.rcols < 3)) {
    return cudaErrorInvalidValue;
  }
  lbfgs_coefficients_kernel<<<1, 1, 0, stream>>>(call);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace tzfast
