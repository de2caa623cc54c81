// CUDA implementations of the native elementwise ops (docs/native-ops.md): the thin glue
// between tensors and the torch-free launchers in cuda/elementwise.cu.
//
// Built only with -DTZFAST_CUDA=ON against a CUDA build of torch (cmake/cuda.cmake); the
// schemas are defined by TORCH_LIBRARY(tzfast, m) in csrc/ops/elementwise.cpp, this file
// registers TORCH_LIBRARY_IMPL(tzfast, CUDA, m) for every op.
//
// Per call:
//   1. ops::prepare_call (csrc/ops/elementwise_common.h), shared with the CPU backend so both
//      accept and reject exactly the same calls with the same messages: list lengths,
//      shapes, one dtype and one device, state buffers; it also makes inputs contiguous and
//      gives non-contiguous outputs a contiguous stand-in, copied back by finish();
//   2. the segment table (pointer, numel, global offset) goes to pinned host memory and is
//      copied to the device on the current stream (the caching host allocator keeps the
//      pinned block alive until that copy has run);
//   3. one launch on the current stream, C10_CUDA_KERNEL_LAUNCH_CHECK(), then finish().
// Temporaries are freed on return; the caching allocator reuses their memory only for work
// queued later on the same stream, so the kernel still sees them.
//
// Headers: only c10/cuda for the stream, guard and error checks. ATen/cuda/CUDAContext.h
// would give at::cuda::getCurrentCUDAStream too, but it pulls in the cuBLAS/cuSPARSE
// headers; c10::cuda::getCurrentCUDAStream is the same function.
#ifdef TZFAST_WITH_CUDA

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cstdint>
#include <optional>

#include "cuda/launchers.h"
#include "elementwise_common.h"

namespace tzfast {
namespace {

using cuda::DType;
using cuda::Epilogue;
using cuda::Segment;
using cuda::SegmentTable;

DType to_dtype(at::ScalarType t) {
  switch (t) {
    case at::kDouble:
      return DType::Float64;
    case at::kHalf:
      return DType::Float16;
    case at::kBFloat16:
      return DType::BFloat16;
    default:
      return DType::Float32;  // prepare_call admits only the four floating types
  }
}

// Checks the call with the shared rules, then that it really is a CUDA call (the dispatcher
// picks this kernel when any tensor argument is on CUDA; prepare_call has already checked
// that all of them share one device).
ops::PreparedCall prepare(const char* op, at::TensorList tensors, at::TensorList params,
                          bool with_params, at::TensorList out, bool accumulate,
                          std::initializer_list<ops::NamedState> states, at::Device* device) {
  ops::PreparedCall call =
      ops::prepare_call(op, tensors, params, with_params, out, accumulate, states);
  const at::Tensor* first = tensors.empty() ? nullptr : &tensors[0];
  for (const ops::NamedState& s : states) {
    if (first == nullptr && s.tensor != nullptr && s.tensor->defined()) first = s.tensor;
  }
  if (first != nullptr) {
    TORCH_CHECK(first->is_cuda(), "tzfast::", op,
                ": the CUDA kernel got tensors on device ", first->device(),
                "; expected every tensor of the call on one CUDA device");
    *device = first->device();
  }
  return call;
}

// Copies the table to the device and calls `launcher(table, stream)` once; then the launch
// check and the copy-back of non-contiguous outputs.
template <typename Launcher>
void run(const char* op, ops::PreparedCall& call, at::Device device, Launcher&& launcher) {
  if (call.total == 0) return;
  const c10::cuda::CUDAGuard guard(device);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(device.index()).stream();

  const auto count = static_cast<int64_t>(call.segments.size());
  const int64_t bytes = count * static_cast<int64_t>(sizeof(Segment));
  at::Tensor host = at::empty({bytes}, at::TensorOptions().dtype(at::kByte).pinned_memory(true));
  auto* host_segments = static_cast<Segment*>(host.mutable_data_ptr());
  for (int64_t i = 0; i < count; ++i) {
    const ops::SegmentInfo& s = call.segments[static_cast<size_t>(i)];
    host_segments[i] = Segment{s.x, s.p, s.out, s.numel, s.offset};
  }
  at::Tensor table_dev = at::empty({bytes}, at::TensorOptions().dtype(at::kByte).device(device));
  table_dev.copy_(host, /*non_blocking=*/true);

  const SegmentTable table{static_cast<const Segment*>(table_dev.const_data_ptr()), count,
                           call.total};
  const cudaError_t err = launcher(to_dtype(call.dtype), table, stream);
  TORCH_CHECK(err == cudaSuccess, "tzfast::", op,
              ": the CUDA launcher rejected its arguments: ", cudaGetErrorString(err));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  call.finish();
}

void* data_or_null(const std::optional<at::Tensor>& t) {
  return t.has_value() && t->defined() ? t->mutable_data_ptr() : nullptr;
}

const at::Tensor* ptr_or_null(const std::optional<at::Tensor>& t) {
  return t.has_value() && t->defined() ? &*t : nullptr;
}

// ---------------------------------------------------------------------------------------------
// Ops.
// ---------------------------------------------------------------------------------------------

void adam_cuda(at::TensorList tensors, const at::Tensor& exp_avg, const at::Tensor& exp_avg_sq,
               const std::optional<at::Tensor>& max_exp_avg_sq, at::TensorList out, double beta1,
               double beta2, double eps, double step_size, double pow, double out_scale,
               bool accumulate) {
  const char* op = "adam_";
  at::Device device(at::kCUDA);
  ops::PreparedCall call = prepare(op, tensors, {}, false, out, accumulate,
                                   {{"exp_avg", &exp_avg},
                                    {"exp_avg_sq", &exp_avg_sq},
                                    {"max_exp_avg_sq", ptr_or_null(max_exp_avg_sq)}},
                                   &device);
  run(op, call, device, [&](DType dtype, const SegmentTable& table, cudaStream_t stream) {
    return cuda::launch_adam(dtype, table, exp_avg.mutable_data_ptr(),
                             exp_avg_sq.mutable_data_ptr(), data_or_null(max_exp_avg_sq), beta1,
                             beta2, eps, step_size, pow, Epilogue{out_scale, accumulate},
                             stream);
  });
}

void ema_cuda(at::TensorList tensors, const at::Tensor& exp_avg, at::TensorList out,
              double momentum, double dampening, bool lerp, double out_scale, bool accumulate) {
  const char* op = "ema_";
  at::Device device(at::kCUDA);
  ops::PreparedCall call =
      prepare(op, tensors, {}, false, out, accumulate, {{"exp_avg", &exp_avg}}, &device);
  run(op, call, device, [&](DType dtype, const SegmentTable& table, cudaStream_t stream) {
    return cuda::launch_ema(dtype, table, exp_avg.mutable_data_ptr(), momentum, dampening, lerp,
                            Epilogue{out_scale, accumulate}, stream);
  });
}

void nag_cuda(at::TensorList tensors, const at::Tensor& velocity, at::TensorList out,
              double momentum, double dampening, bool lerp, double out_scale, bool accumulate) {
  const char* op = "nag_";
  at::Device device(at::kCUDA);
  ops::PreparedCall call =
      prepare(op, tensors, {}, false, out, accumulate, {{"velocity", &velocity}}, &device);
  run(op, call, device, [&](DType dtype, const SegmentTable& table, cudaStream_t stream) {
    return cuda::launch_nag(dtype, table, velocity.mutable_data_ptr(), momentum, dampening, lerp,
                            Epilogue{out_scale, accumulate}, stream);
  });
}

void ema_sq_cuda(at::TensorList tensors, const at::Tensor& exp_avg_sq,
                 const std::optional<at::Tensor>& max_exp_avg_sq, at::TensorList out,
                 double beta, double pow, bool take_root, double out_scale, bool accumulate) {
  const char* op = "ema_sq_";
  at::Device device(at::kCUDA);
  ops::PreparedCall call = prepare(
      op, tensors, {}, false, out, accumulate,
      {{"exp_avg_sq", &exp_avg_sq}, {"max_exp_avg_sq", ptr_or_null(max_exp_avg_sq)}}, &device);
  run(op, call, device, [&](DType dtype, const SegmentTable& table, cudaStream_t stream) {
    return cuda::launch_ema_sq(dtype, table, exp_avg_sq.mutable_data_ptr(),
                               data_or_null(max_exp_avg_sq), beta, pow, take_root,
                               Epilogue{out_scale, accumulate}, stream);
  });
}

void unary_cuda(at::TensorList tensors, at::TensorList out, int64_t op_code, double a, double b,
                double out_scale, bool accumulate) {
  const char* op = "unary_";
  TORCH_CHECK(op_code >= 0 && op_code < 5, "tzfast::", op, ": unknown op code ", op_code,
              "; accepted codes: ", ops::unary_codes_text());
  at::Device device(at::kCUDA);
  ops::PreparedCall call = prepare(op, tensors, {}, false, out, accumulate, {}, &device);
  run(op, call, device, [&](DType dtype, const SegmentTable& table, cudaStream_t stream) {
    return cuda::launch_unary(dtype, table, op_code, a, b, Epilogue{out_scale, accumulate},
                              stream);
  });
}

void weight_decay_cuda(at::TensorList tensors, at::TensorList params, at::TensorList out,
                       double weight_decay, int64_t ord, double out_scale, bool accumulate) {
  const char* op = "weight_decay_";
  at::Device device(at::kCUDA);
  ops::PreparedCall call = prepare(op, tensors, params, true, out, accumulate, {}, &device);
  run(op, call, device, [&](DType dtype, const SegmentTable& table, cudaStream_t stream) {
    return cuda::launch_weight_decay(dtype, table, weight_decay, ord,
                                     Epilogue{out_scale, accumulate}, stream);
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(tzfast, CUDA, m) {
  m.impl("adam_", &adam_cuda);
  m.impl("ema_", &ema_cuda);
  m.impl("nag_", &nag_cuda);
  m.impl("ema_sq_", &ema_sq_cuda);
  m.impl("unary_", &unary_cuda);
  m.impl("weight_decay_", &weight_decay_cuda);
}

}  // namespace tzfast

#endif  // TZFAST_WITH_CUDA
