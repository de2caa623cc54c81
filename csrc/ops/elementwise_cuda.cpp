// CUDA implementations of the native elementwise ops (docs/native-ops.md): the thin glue
// between tensors and the torch-free launchers in cuda/elementwise.cu.
//
// Built only with -DTZFAST_CUDA=ON against a CUDA build of torch (cmake/cuda.cmake); the
// schemas are defined by TORCH_LIBRARY(tzfast, m) in the CPU op files, this file registers
// TORCH_LIBRARY_IMPL(tzfast, CUDA, m) for every op.
//
// Per call:
//   1. TORCH_CHECK every precondition (list lengths, devices, dtypes, shapes, state buffers);
//   2. make non-contiguous inputs contiguous, and give non-contiguous outputs a contiguous
//      stand-in (holding the old values when accumulating) that is copied back afterwards;
//   3. build the segment table (pointer, numel, global offset) in pinned host memory and copy
//      it to the device on the current stream (the caching host allocator keeps the pinned
//      block alive until that copy has run);
//   4. one launch on the current stream, then C10_CUDA_KERNEL_LAUNCH_CHECK().
// Temporaries are freed on return; the caching allocator reuses their memory only for work
// queued later on the same stream, so the kernel still sees them.
//
// Headers: only c10/cuda (stream, guard, error checks). ATen/cuda/CUDAContext.h would give
// at::cuda::getCurrentCUDAStream too, but it pulls in cuBLAS/cuSPARSE headers;
// c10::cuda::getCurrentCUDAStream is the same function.
#ifdef TZFAST_WITH_CUDA

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cstdint>
#include <cstring>
#include <optional>
#include <utility>
#include <vector>

#include "cuda/launchers.h"

namespace tzfast {
namespace {

using cuda::DType;
using cuda::Epilogue;
using cuda::Segment;
using cuda::SegmentTable;

DType to_dtype(const char* op, at::ScalarType t) {
  switch (t) {
    case at::kFloat:
      return DType::Float32;
    case at::kDouble:
      return DType::Float64;
    case at::kHalf:
      return DType::Float16;
    case at::kBFloat16:
      return DType::BFloat16;
    default:
      TORCH_CHECK(false, "tzfast::", op,
                  ": expected dtype float32, float64, float16 or bfloat16, got ", t);
  }
  return DType::Float32;  // not reached
}

// Device and dtype every tensor of a call must share: those of the first input tensor, or of
// the first state buffer when the list is empty.
struct CallKey {
  at::Device device;
  at::ScalarType dtype;
};

void check_tensor(const char* op, const char* what, int64_t index, const at::Tensor& t,
                  const CallKey& key) {
  TORCH_CHECK(t.defined(), "tzfast::", op, ": ", what, "[", index, "] is an undefined tensor");
  TORCH_CHECK(t.is_cuda(), "tzfast::", op, ": expected ", what, "[", index,
              "] on a CUDA device, got device ", t.device());
  TORCH_CHECK(t.device() == key.device, "tzfast::", op, ": expected ", what, "[", index,
              "] on ", key.device, " (the device of the call), got ", t.device());
  TORCH_CHECK(t.scalar_type() == key.dtype, "tzfast::", op, ": expected ", what, "[", index,
              "] of dtype ", key.dtype, " (the dtype of the call), got ", t.scalar_type());
}

void check_state(const char* op, const char* what, const at::Tensor& t, const CallKey& key,
                 int64_t total) {
  TORCH_CHECK(t.defined(), "tzfast::", op, ": ", what, " is an undefined tensor");
  TORCH_CHECK(t.is_cuda(), "tzfast::", op, ": expected ", what,
              " on a CUDA device, got device ", t.device());
  TORCH_CHECK(t.device() == key.device, "tzfast::", op, ": expected ", what, " on ",
              key.device, " (the device of the call), got ", t.device());
  TORCH_CHECK(t.scalar_type() == key.dtype, "tzfast::", op, ": expected ", what, " of dtype ",
              key.dtype, " (the dtype of the call), got ", t.scalar_type());
  TORCH_CHECK(t.dim() == 1, "tzfast::", op, ": expected ", what,
              " to be a 1-D flat state buffer, got ", t.dim(), " dimensions (shape ", t.sizes(),
              ")");
  TORCH_CHECK(t.is_contiguous(), "tzfast::", op, ": expected ", what,
              " to be contiguous, got stride ", t.strides());
  TORCH_CHECK(t.numel() == total, "tzfast::", op, ": expected ", what, " of length ", total,
              " (the total numel of tensors), got ", t.numel());
}

// The per-call work: checked operands, contiguous stand-ins, the device table.
class Call {
 public:
  // `with_params`: weight_decay_, whose `params` list pairs with `tensors`; other ops pass an
  // empty list. `states` are the flat state buffers (nullptr for an optional one not given);
  // they only decide the call key when `tensors` is empty.
  Call(const char* op, at::TensorList tensors, bool with_params, at::TensorList params,
       at::TensorList out, std::initializer_list<const at::Tensor*> states, bool accumulate)
      : op_(op), key_(call_key(op, tensors, params, out, with_params, states)) {
    const int64_t n = static_cast<int64_t>(tensors.size());
    for (int64_t i = 0; i < n; ++i) {
      check_tensor(op, "tensors", i, tensors[i], key_);
      check_tensor(op, "out", i, out[i], key_);
      TORCH_CHECK(out[i].sizes() == tensors[i].sizes(), "tzfast::", op, ": expected out[", i,
                  "] of shape ", tensors[i].sizes(), " (the shape of tensors[", i, "]), got ",
                  out[i].sizes());
      if (with_params) {
        check_tensor(op, "params", i, params[i], key_);
        TORCH_CHECK(params[i].sizes() == tensors[i].sizes(), "tzfast::", op,
                    ": expected params[", i, "] of shape ", tensors[i].sizes(),
                    " (the shape of tensors[", i, "]), got ", params[i].sizes());
      }
    }
    dtype_ = to_dtype(op, key_.dtype);

    // Operands and the host copy of the table.
    std::vector<Segment> segments;
    segments.reserve(tensors.size());
    int64_t offset = 0;
    for (int64_t i = 0; i < n; ++i) {
      const int64_t numel = tensors[i].numel();
      if (numel == 0) continue;
      at::Tensor x = keep(tensors[i].contiguous());
      at::Tensor p = with_params ? keep(params[i].contiguous()) : at::Tensor();
      at::Tensor o = out[i];
      if (!o.is_contiguous()) {
        at::Tensor stand_in = accumulate ? o.contiguous() : at::empty(o.sizes(), o.options());
        writeback_.emplace_back(o, stand_in);
        o = stand_in;
      }
      Segment s{};
      s.x = x.const_data_ptr();
      s.p = p.defined() ? p.const_data_ptr() : nullptr;
      s.out = o.mutable_data_ptr();
      s.numel = numel;
      s.offset = offset;
      segments.push_back(s);
      offset += numel;
    }
    total_ = offset;
    table_.segments = nullptr;
    table_.count = static_cast<int64_t>(segments.size());
    table_.total = total_;
    host_segments_ = std::move(segments);
  }

  const CallKey& key() const { return key_; }
  DType dtype() const { return dtype_; }
  int64_t total() const { return total_; }

  void check_state_buffer(const char* what, const at::Tensor& t) const {
    check_state(op_, what, t, key_, total_);
  }

  // Copies the table to the device and calls `launcher(table, stream)` once; then the launch
  // check and the copy-back of non-contiguous outputs.
  template <typename Launcher>
  void run(Launcher&& launcher) {
    if (total_ == 0) return;
    const c10::cuda::CUDAGuard guard(key_.device);
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(key_.device.index()).stream();

    const int64_t bytes = table_.count * static_cast<int64_t>(sizeof(Segment));
    at::Tensor host =
        at::empty({bytes}, at::TensorOptions().dtype(at::kByte).pinned_memory(true));
    std::memcpy(host.mutable_data_ptr(), host_segments_.data(), static_cast<size_t>(bytes));
    at::Tensor device_table =
        at::empty({bytes}, at::TensorOptions().dtype(at::kByte).device(key_.device));
    device_table.copy_(host, /*non_blocking=*/true);
    table_.segments = static_cast<const Segment*>(device_table.const_data_ptr());

    const cudaError_t err = launcher(table_, stream);
    TORCH_CHECK(err == cudaSuccess, "tzfast::", op_,
                ": the CUDA launcher rejected its arguments: ", cudaGetErrorString(err));
    C10_CUDA_KERNEL_LAUNCH_CHECK();

    for (auto& [original, stand_in] : writeback_) original.copy_(stand_in);
  }

 private:
  // Checks the list lengths, then picks the call key.
  static CallKey call_key(const char* op, at::TensorList tensors, at::TensorList params,
                          at::TensorList out, bool with_params,
                          std::initializer_list<const at::Tensor*> states) {
    const size_t n = tensors.size();
    TORCH_CHECK(out.size() == n, "tzfast::", op, ": expected out to have the length of tensors (",
                n, "), got ", out.size());
    if (with_params) {
      TORCH_CHECK(params.size() == n, "tzfast::", op,
                  ": expected params to have the length of tensors (", n, "), got ",
                  params.size());
    }
    if (!tensors.empty()) {
      TORCH_CHECK(tensors[0].defined(), "tzfast::", op, ": tensors[0] is an undefined tensor");
      return CallKey{tensors[0].device(), tensors[0].scalar_type()};
    }
    for (const at::Tensor* s : states) {
      if (s != nullptr && s->defined()) return CallKey{s->device(), s->scalar_type()};
    }
    TORCH_CHECK(false, "tzfast::", op, ": no tensor to take the device and dtype from");
    return CallKey{at::Device(at::kCUDA), at::kFloat};  // not reached
  }

  at::Tensor keep(at::Tensor t) {
    kept_.push_back(t);
    return t;
  }

  const char* op_;
  CallKey key_;
  DType dtype_ = DType::Float32;
  int64_t total_ = 0;
  SegmentTable table_{};
  std::vector<Segment> host_segments_;
  std::vector<at::Tensor> kept_;
  std::vector<std::pair<at::Tensor, at::Tensor>> writeback_;
};

const at::Tensor* opt_ptr(const std::optional<at::Tensor>& t) {
  return t.has_value() && t->defined() ? &*t : nullptr;
}

void* opt_data(const std::optional<at::Tensor>& t) {
  return t.has_value() && t->defined() ? t->mutable_data_ptr() : nullptr;
}

// ---------------------------------------------------------------------------------------------
// Ops.
// ---------------------------------------------------------------------------------------------

void adam_cuda(at::TensorList tensors, const at::Tensor& exp_avg, const at::Tensor& exp_avg_sq,
               const std::optional<at::Tensor>& max_exp_avg_sq, at::TensorList out, double beta1,
               double beta2, double eps, double step_size, double pow, double out_scale,
               bool accumulate) {
  const char* op = "adam_";
  Call call(op, tensors, false, {}, out, {&exp_avg, &exp_avg_sq, opt_ptr(max_exp_avg_sq)},
            accumulate);
  call.check_state_buffer("exp_avg", exp_avg);
  call.check_state_buffer("exp_avg_sq", exp_avg_sq);
  if (opt_ptr(max_exp_avg_sq)) call.check_state_buffer("max_exp_avg_sq", *max_exp_avg_sq);
  call.run([&](const SegmentTable& table, cudaStream_t stream) {
    return cuda::launch_adam(call.dtype(), table, exp_avg.mutable_data_ptr(),
                             exp_avg_sq.mutable_data_ptr(), opt_data(max_exp_avg_sq), beta1,
                             beta2, eps, step_size, pow, Epilogue{out_scale, accumulate},
                             stream);
  });
}

void ema_cuda(at::TensorList tensors, const at::Tensor& exp_avg, at::TensorList out,
              double momentum, double dampening, bool lerp, double out_scale, bool accumulate) {
  const char* op = "ema_";
  Call call(op, tensors, false, {}, out, {&exp_avg}, accumulate);
  call.check_state_buffer("exp_avg", exp_avg);
  call.run([&](const SegmentTable& table, cudaStream_t stream) {
    return cuda::launch_ema(call.dtype(), table, exp_avg.mutable_data_ptr(), momentum,
                            dampening, lerp, Epilogue{out_scale, accumulate}, stream);
  });
}

void nag_cuda(at::TensorList tensors, const at::Tensor& velocity, at::TensorList out,
              double momentum, double dampening, bool lerp, double out_scale, bool accumulate) {
  const char* op = "nag_";
  Call call(op, tensors, false, {}, out, {&velocity}, accumulate);
  call.check_state_buffer("velocity", velocity);
  call.run([&](const SegmentTable& table, cudaStream_t stream) {
    return cuda::launch_nag(call.dtype(), table, velocity.mutable_data_ptr(), momentum,
                            dampening, lerp, Epilogue{out_scale, accumulate}, stream);
  });
}

void ema_sq_cuda(at::TensorList tensors, const at::Tensor& exp_avg_sq,
                 const std::optional<at::Tensor>& max_exp_avg_sq, at::TensorList out,
                 double beta, double pow, bool take_root, double out_scale, bool accumulate) {
  const char* op = "ema_sq_";
  Call call(op, tensors, false, {}, out, {&exp_avg_sq, opt_ptr(max_exp_avg_sq)}, accumulate);
  call.check_state_buffer("exp_avg_sq", exp_avg_sq);
  if (opt_ptr(max_exp_avg_sq)) call.check_state_buffer("max_exp_avg_sq", *max_exp_avg_sq);
  call.run([&](const SegmentTable& table, cudaStream_t stream) {
    return cuda::launch_ema_sq(call.dtype(), table, exp_avg_sq.mutable_data_ptr(),
                               opt_data(max_exp_avg_sq), beta, pow, take_root,
                               Epilogue{out_scale, accumulate}, stream);
  });
}

void unary_cuda(at::TensorList tensors, at::TensorList out, int64_t op_code, double a, double b,
                double out_scale, bool accumulate) {
  const char* op = "unary_";
  TORCH_CHECK(op_code >= 0 && op_code <= 4, "tzfast::", op,
              ": expected op 0 (affine), 1 (abs), 2 (sign), 3 (sqrt) or 4 (clamp), got ",
              op_code);
  if (tensors.empty() && out.empty()) return;  // nothing to do
  Call call(op, tensors, false, {}, out, {}, accumulate);
  call.run([&](const SegmentTable& table, cudaStream_t stream) {
    return cuda::launch_unary(call.dtype(), table, op_code, a, b,
                              Epilogue{out_scale, accumulate}, stream);
  });
}

void weight_decay_cuda(at::TensorList tensors, at::TensorList params, at::TensorList out,
                       double weight_decay, int64_t ord, double out_scale, bool accumulate) {
  const char* op = "weight_decay_";
  if (tensors.empty() && params.empty() && out.empty()) return;  // nothing to do
  Call call(op, tensors, true, params, out, {}, accumulate);
  call.run([&](const SegmentTable& table, cudaStream_t stream) {
    return cuda::launch_weight_decay(call.dtype(), table, weight_decay, ord,
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
