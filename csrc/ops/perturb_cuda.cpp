// CUDA implementation of accumulate_directions_ (docs/perturbation.md): the thin glue between
// tensors and the torch-free launcher in cuda/perturb.cu.
//
// Built only with -DTZFAST_CUDA=ON against a CUDA build of torch (cmake/cuda.cmake); the schema
// is defined in csrc/ops/perturb.cpp. Per call:
//   1. ops::prepare_directions (csrc/ops/perturb_common.h), shared with the CPU backend, so both
//      accept and reject exactly the same calls with the same messages; it gives non-contiguous
//      outputs a contiguous stand-in, copied back by finish();
//   2. the segment table (pointer, numel, global offset, first quad), the weights and the
//      samples go to one pinned host buffer and are copied to the device on the current stream;
//   3. one launch on the current stream, C10_CUDA_KERNEL_LAUNCH_CHECK(), then finish().
// direction_sq_norm has no tensor argument and runs on the CPU for every device (its value is
// folded into the host-side coefficient list).
#ifdef TZFAST_WITH_CUDA

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cstdint>
#include <cstring>

#include "cuda/perturb.h"
#include "perturb_common.h"

namespace tzfast {
namespace {

cuda::DType to_dtype(at::ScalarType t) {
  switch (t) {
    case at::kDouble:
      return cuda::DType::Float64;
    case at::kHalf:
      return cuda::DType::Float16;
    case at::kBFloat16:
      return cuda::DType::BFloat16;
    default:
      return cuda::DType::Float32;  // prepare_directions admits only the four floating types
  }
}

void accumulate_directions_cuda(at::TensorList out, at::IntArrayRef offsets, int64_t seed,
                                at::IntArrayRef samples, at::ArrayRef<double> coeffs,
                                int64_t dist, double out_scale, bool accumulate) {
  const char* op = "accumulate_directions_";
  ops::PreparedDirections call = ops::prepare_directions(op, out, offsets, seed, samples, coeffs,
                                                         dist, out_scale, accumulate);
  if (out.empty()) return;
  TORCH_CHECK(out[0].is_cuda(), "tzfast::", op, ": the CUDA kernel got tensors on device ",
              out[0].device(), "; expected every tensor of the call on one CUDA device");
  if (call.total == 0) return;
  const at::Device device = out[0].device();
  const c10::cuda::CUDAGuard guard(device);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(device.index()).stream();

  const auto count = static_cast<int64_t>(call.segments.size());
  const auto k = static_cast<int64_t>(call.samples.size());
  const int64_t seg_bytes = count * static_cast<int64_t>(sizeof(cuda::DirectionSegment));
  const int64_t w_bytes = k * static_cast<int64_t>(sizeof(double));
  const int64_t s_bytes = k * static_cast<int64_t>(sizeof(uint32_t));
  const int64_t bytes = seg_bytes + w_bytes + s_bytes;
  at::Tensor host = at::empty({bytes}, at::TensorOptions().dtype(at::kByte).pinned_memory(true));
  auto* base = static_cast<char*>(host.mutable_data_ptr());
  auto* segs = reinterpret_cast<cuda::DirectionSegment*>(base);
  int64_t quads = 0;
  for (int64_t i = 0; i < count; ++i) {
    const ops::DirectionSegment& s = call.segments[static_cast<size_t>(i)];
    segs[i] = cuda::DirectionSegment{s.out, s.numel, s.offset, quads};
    quads += ((s.offset + s.numel - 1) >> 2) - (s.offset >> 2) + 1;
  }
  std::memcpy(base + seg_bytes, call.weights.data(), static_cast<size_t>(w_bytes));
  std::memcpy(base + seg_bytes + w_bytes, call.samples.data(), static_cast<size_t>(s_bytes));
  at::Tensor dev = at::empty({bytes}, at::TensorOptions().dtype(at::kByte).device(device));
  dev.copy_(host, /*non_blocking=*/true);

  const auto* dbase = static_cast<const char*>(dev.const_data_ptr());
  const cuda::DirectionTable table{
      reinterpret_cast<const cuda::DirectionSegment*>(dbase), count, quads,
      reinterpret_cast<const uint32_t*>(dbase + seg_bytes + w_bytes),
      reinterpret_cast<const double*>(dbase + seg_bytes), k};
  const cudaError_t err = cuda::launch_accumulate_directions(
      to_dtype(call.dtype), table, static_cast<int32_t>(dist), call.k0, call.k1, accumulate,
      stream);
  TORCH_CHECK(err == cudaSuccess, "tzfast::", op, ": the CUDA launcher rejected its arguments: ",
              cudaGetErrorString(err));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  call.finish();
}

}  // namespace

TORCH_LIBRARY_IMPL(tzfast, CUDA, m) {
  m.impl("accumulate_directions_", &accumulate_directions_cuda);
}

}  // namespace tzfast

#endif  // TZFAST_WITH_CUDA
