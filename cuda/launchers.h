// Launchers for tzfast's CUDA kernels.
//
// This header is torch-free on purpose: it is included by cuda/*.cu (compiled by plain nvcc,
// also in the torch-free `cuda_compile_check`) and by the tensor glue in
// csrc/ops/*_cuda.cpp (compiled by the host compiler against a CUDA build of torch). Only
// raw device pointers, element counts and a cudaStream_t cross this boundary.
//
// Multi-tensor apply: one launch per call. The caller passes a device-resident table of
// segments, one per non-empty input tensor, in the order of the op's `tensors` list. Segment
// i covers the global element range [offset, offset + numel) of the flat state buffers
// (offset = sum of the numel of the tensors before it), and its own contiguous memory for
// the per-tensor operands (x, p, out). The kernels walk the global range in tiles and find
// the segments overlapping each tile by binary search on `offset`.
//
// Semantics of every op: docs/native-ops.md. The per-element math is shared with the CPU
// kernels through csrc/include/tzfast/elementwise.h.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace tzfast {
namespace cuda {

// Element type of every tensor of one call (state buffers included). Half types compute in
// float; double computes in double.
enum class DType : int32_t { Float32 = 0, Float64 = 1, Float16 = 2, BFloat16 = 3 };

// One entry of the device-side segment table. Plain data of five 8-byte fields so the glue
// can fill it in a byte buffer and copy it to the device as is.
struct Segment {
  const void* x;    // tensors[i], contiguous, `numel` elements
  const void* p;    // params[i] (weight_decay_ only), contiguous; nullptr otherwise
  void* out;        // out[i], contiguous, `numel` elements; may alias x or p
  int64_t numel;    // > 0
  int64_t offset;   // global element offset into the flat state buffers
};
static_assert(sizeof(Segment) == 40, "Segment must be five 8-byte fields");

// The table as the kernels see it. `segments` is device memory holding `count` entries
// sorted by strictly increasing `offset`, with offsets contiguous (offset[i+1] = offset[i] +
// numel[i]) and `total` = offset[count-1] + numel[count-1]. total == 0 launches nothing.
struct SegmentTable {
  const Segment* segments;
  int64_t count;
  int64_t total;
};

// The epilogue shared by all ops: out = out_scale * u, or out += out_scale * u.
struct Epilogue {
  double out_scale;
  bool accumulate;
};

// Every launcher enqueues at most one kernel on `stream` and returns cudaSuccess, or
// cudaErrorInvalidValue for arguments it cannot handle (unknown dtype or op code, negative
// sizes, a null table with work to do). Launch errors are left for the caller to collect
// with cudaGetLastError (C10_CUDA_KERNEL_LAUNCH_CHECK in the glue).

// adam_: exp_avg, exp_avg_sq are flat buffers of `table.total` elements; max_exp_avg_sq may
// be nullptr (no AMSGrad).
cudaError_t launch_adam(DType dtype, const SegmentTable& table, void* exp_avg, void* exp_avg_sq,
                        void* max_exp_avg_sq, double beta1, double beta2, double eps,
                        double step_size, double pow, Epilogue epilogue, cudaStream_t stream);

// ema_: exp_avg is a flat buffer.
cudaError_t launch_ema(DType dtype, const SegmentTable& table, void* exp_avg, double momentum,
                       double dampening, bool lerp, Epilogue epilogue, cudaStream_t stream);

// nag_: velocity is a flat buffer.
cudaError_t launch_nag(DType dtype, const SegmentTable& table, void* velocity, double momentum,
                       double dampening, bool lerp, Epilogue epilogue, cudaStream_t stream);

// ema_sq_: exp_avg_sq is a flat buffer; max_exp_avg_sq may be nullptr.
cudaError_t launch_ema_sq(DType dtype, const SegmentTable& table, void* exp_avg_sq,
                          void* max_exp_avg_sq, double beta, double pow, bool take_root,
                          Epilogue epilogue, cudaStream_t stream);

// unary_: op codes as in docs/native-ops.md (0 affine, 1 abs, 2 sign, 3 sqrt, 4 clamp).
cudaError_t launch_unary(DType dtype, const SegmentTable& table, int64_t op, double a, double b,
                         Epilogue epilogue, cudaStream_t stream);

// weight_decay_: every segment carries `p`.
cudaError_t launch_weight_decay(DType dtype, const SegmentTable& table, double weight_decay,
                                int64_t ord, Epilogue epilogue, cudaStream_t stream);

}  // namespace cuda
}  // namespace tzfast
