// Native elementwise ops (docs/native-ops.md): schemas, argument checks, and the CPU
// implementation (multi-tensor apply over a chunk table, parallel over chunks).
//
// This file owns `TORCH_LIBRARY(tzfast, m)`; other op families add their schemas with
// `TORCH_LIBRARY_FRAGMENT(tzfast, m)`. The CUDA kernels are registered by
// csrc/ops/elementwise_cuda.cpp (built with TZFAST_CUDA=ON) and reuse prepare_call().

// Only the method operators and the few functions used here (not all of ATen/ATen.h): this is
// the one translation unit of the CPU build that includes torch, keep it light.
#ifndef TORCH_ASSERT_ONLY_METHOD_OPERATORS
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#endif
#include <ATen/MemoryOverlap.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "../kernels/cpu_kernels.h"
#include "elementwise_common.h"

namespace tzfast {
namespace ops {

namespace {

std::string sizes_str(at::IntArrayRef s) {
  std::ostringstream os;
  os << s;
  return os.str();
}

bool supported_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

// The dtype and device every tensor of a call must have, and where they came from.
struct Reference {
  const at::Tensor* tensor = nullptr;
  std::string name;
};

void check_like(const char* op, const std::string& name, const at::Tensor& t,
                const Reference& ref) {
  TORCH_CHECK(t.defined(), "tzfast::", op, ": expected ", name,
              " to be a tensor but got an undefined tensor");
  TORCH_CHECK(t.scalar_type() == ref.tensor->scalar_type(), "tzfast::", op, ": expected ", name,
              " to have dtype ", ref.tensor->scalar_type(), " (the dtype of ", ref.name,
              ") but got ", t.scalar_type());
  TORCH_CHECK(t.device() == ref.tensor->device(), "tzfast::", op, ": expected ", name,
              " on device ", ref.tensor->device(), " (the device of ", ref.name, ") but got ",
              t.device());
}

std::string indexed(const char* list, size_t i) {
  return std::string(list) + "[" + std::to_string(i) + "]";
}

}  // namespace

void PreparedCall::finish() {
  for (auto& wb : write_back) wb.first.copy_(wb.second);
  write_back.clear();
}

PreparedCall prepare_call(const char* op, at::TensorList tensors, at::TensorList params,
                          bool with_params, at::TensorList out, bool accumulate,
                          std::initializer_list<NamedState> states) {
  const size_t n = tensors.size();
  TORCH_CHECK(out.size() == n, "tzfast::", op, ": expected out to be a list of ", n,
              " tensors (one per entry of tensors) but got ", out.size());
  TORCH_CHECK(!with_params || params.size() == n, "tzfast::", op,
              ": expected params to be a list of ", n,
              " tensors (one per entry of tensors) but got ", params.size());

  Reference ref;
  if (n > 0) {
    ref.tensor = &tensors[0];
    ref.name = "tensors[0]";
  } else {
    for (const auto& s : states) {
      if (s.tensor != nullptr) {
        ref.tensor = s.tensor;
        ref.name = s.name;
        break;
      }
    }
  }

  PreparedCall call;
  if (ref.tensor == nullptr) return call;  // nothing at all to check or do
  TORCH_CHECK(ref.tensor->defined(), "tzfast::", op, ": expected ", ref.name,
              " to be a tensor but got an undefined tensor");
  TORCH_CHECK(supported_dtype(ref.tensor->scalar_type()), "tzfast::", op,
              ": expected a floating dtype (Float, Double, Half or BFloat16) but ", ref.name,
              " has dtype ", ref.tensor->scalar_type());
  call.dtype = ref.tensor->scalar_type();
  call.has_dtype = true;

  int64_t total = 0;
  for (size_t i = 0; i < n; ++i) {
    const at::Tensor& x = tensors[i];
    const at::Tensor& o = out[i];
    check_like(op, indexed("tensors", i), x, ref);
    check_like(op, indexed("out", i), o, ref);
    TORCH_CHECK(o.sizes() == x.sizes(), "tzfast::", op, ": expected out[", i,
                "] to have the sizes of tensors[", i, "], ", sizes_str(x.sizes()), ", but got ",
                sizes_str(o.sizes()));
    if (with_params) {
      const at::Tensor& p = params[i];
      check_like(op, indexed("params", i), p, ref);
      TORCH_CHECK(p.sizes() == x.sizes(), "tzfast::", op, ": expected params[", i,
                  "] to have the sizes of tensors[", i, "], ", sizes_str(x.sizes()),
                  ", but got ", sizes_str(p.sizes()));
    }
    TORCH_CHECK(at::has_internal_overlap(o) != at::MemOverlap::Yes, "tzfast::", op,
                ": expected out[", i,
                "] to have no internal overlap (each element its own memory) but it has strides ",
                sizes_str(o.strides()));

    const int64_t numel = x.numel();
    if (numel > 0) {
      at::Tensor xc = x.contiguous();
      at::Tensor pc = with_params ? params[i].contiguous() : at::Tensor();
      at::Tensor oc = o;
      if (!o.is_contiguous()) {
        oc = accumulate ? o.contiguous() : at::empty_like(o, at::MemoryFormat::Contiguous);
        call.write_back.emplace_back(o, oc);
      }
      // out may be the very tensor read (in place) but must not partially overlap it.
      if (at::get_overlap_status(oc, xc) == at::MemOverlapStatus::Partial) xc = xc.clone();
      if (with_params && at::get_overlap_status(oc, pc) == at::MemOverlapStatus::Partial) {
        pc = pc.clone();
      }
      SegmentInfo seg;
      seg.x = xc.const_data_ptr();
      seg.p = with_params ? pc.const_data_ptr() : nullptr;
      seg.out = oc.data_ptr();
      seg.numel = numel;
      seg.offset = total;
      call.segments.push_back(seg);
      if (!xc.is_same(x)) call.keep_alive.push_back(xc);
      if (with_params && !pc.is_same(params[i])) call.keep_alive.push_back(pc);
    }
    total += numel;
  }
  call.total = total;

  std::vector<const NamedState*> present;
  for (const auto& s : states) {
    if (s.tensor == nullptr) continue;
    const at::Tensor& t = *s.tensor;
    check_like(op, s.name, t, ref);
    TORCH_CHECK(t.dim() == 1, "tzfast::", op, ": expected ", s.name,
                " to be a 1-D flat buffer but got a ", t.dim(), "-D tensor with sizes ",
                sizes_str(t.sizes()));
    TORCH_CHECK(t.numel() == total, "tzfast::", op, ": expected ", s.name, " to have ", total,
                " elements (the total numel of tensors) but got ", t.numel());
    TORCH_CHECK(t.is_contiguous(), "tzfast::", op, ": expected ", s.name,
                " to be contiguous but it has strides ", sizes_str(t.strides()));
    for (const NamedState* other : present) {
      TORCH_CHECK(at::get_overlap_status(t, *other->tensor) == at::MemOverlapStatus::No,
                  "tzfast::", op, ": expected ", s.name, " and ", other->name,
                  " to be separate buffers but they share memory");
    }
    present.push_back(&s);
  }
  return call;
}

const char* unary_codes_text() {
  return "0 (affine), 1 (abs), 2 (sign), 3 (sqrt), 4 (clamp)";
}

namespace {

// ---------------------------------------------------------------------------------------
// CPU: the chunk table and the parallel loop.
// ---------------------------------------------------------------------------------------

constexpr int64_t kChunk = int64_t(1) << 16;  // elements per piece of work

cpu::DType cpu_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return cpu::DType::Float32;
    case at::kDouble: return cpu::DType::Float64;
    case at::kHalf: return cpu::DType::Float16;
    default: return cpu::DType::BFloat16;  // prepare_call admitted only these four
  }
}

void* state_ptr(const at::Tensor* t) { return t != nullptr ? t->data_ptr() : nullptr; }

// Splits the segments into pieces of at most kChunk elements and runs `kernel` over them,
// in parallel when there is enough work. state0..2 are the flat buffers (or nullptr).
template <typename Kernel>
void run_cpu(PreparedCall& call, std::array<void*, 3> state, const Kernel& kernel) {
  if (call.total == 0) return;
  const int64_t es = int64_t(at::elementSize(call.dtype));
  std::vector<cpu::Piece> pieces;
  pieces.reserve(call.segments.size() + size_t(call.total / kChunk));
  for (const SegmentInfo& s : call.segments) {
    for (int64_t a = 0; a < s.numel; a += kChunk) {
      const int64_t len = std::min(kChunk, s.numel - a);
      cpu::Piece pc;
      pc.x = static_cast<const char*>(s.x) + a * es;
      pc.p = s.p != nullptr ? static_cast<const char*>(s.p) + a * es : nullptr;
      pc.out = static_cast<char*>(s.out) + a * es;
      const int64_t g = (s.offset + a) * es;
      pc.s0 = state[0] != nullptr ? static_cast<char*>(state[0]) + g : nullptr;
      pc.s1 = state[1] != nullptr ? static_cast<char*>(state[1]) + g : nullptr;
      pc.s2 = state[2] != nullptr ? static_cast<char*>(state[2]) + g : nullptr;
      pc.n = len;
      pieces.push_back(pc);
    }
  }
  const int64_t count = int64_t(pieces.size());
  if (call.total <= 2 * kChunk || count == 1) {
    kernel(pieces.data(), count);
  } else {
    at::parallel_for(0, count, 1, [&](int64_t begin, int64_t end) {
      kernel(pieces.data() + begin, end - begin);
    });
  }
  call.finish();
}

// ---------------------------------------------------------------------------------------
// The ops.
// ---------------------------------------------------------------------------------------

void adam_cpu(at::TensorList tensors, const at::Tensor& exp_avg, const at::Tensor& exp_avg_sq,
              const std::optional<at::Tensor>& max_exp_avg_sq, at::TensorList out, double beta1,
              double beta2, double eps, double step_size, double pow, double out_scale,
              bool accumulate) {
  const at::Tensor* vmax = max_exp_avg_sq.has_value() ? &*max_exp_avg_sq : nullptr;
  PreparedCall call = prepare_call(
      "adam_", tensors, {}, false, out, accumulate,
      {{"exp_avg", &exp_avg}, {"exp_avg_sq", &exp_avg_sq}, {"max_exp_avg_sq", vmax}});
  cpu::AdamCall c{cpu_dtype(call.dtype), beta1, beta2, eps, step_size, pow, out_scale,
                  vmax != nullptr, accumulate};
  const auto& k = cpu::kernels();
  run_cpu(call, {exp_avg.data_ptr(), exp_avg_sq.data_ptr(), state_ptr(vmax)},
          [&](const cpu::Piece* p, int64_t n) { k.adam(c, p, n); });
}

void ema_cpu(at::TensorList tensors, const at::Tensor& exp_avg, at::TensorList out,
             double momentum, double dampening, bool lerp, double out_scale, bool accumulate) {
  PreparedCall call =
      prepare_call("ema_", tensors, {}, false, out, accumulate, {{"exp_avg", &exp_avg}});
  cpu::MomentumCall c{cpu_dtype(call.dtype), momentum, dampening, out_scale, lerp, accumulate};
  const auto& k = cpu::kernels();
  run_cpu(call, {exp_avg.data_ptr(), nullptr, nullptr},
          [&](const cpu::Piece* p, int64_t n) { k.ema(c, p, n); });
}

void nag_cpu(at::TensorList tensors, const at::Tensor& velocity, at::TensorList out,
             double momentum, double dampening, bool lerp, double out_scale, bool accumulate) {
  PreparedCall call =
      prepare_call("nag_", tensors, {}, false, out, accumulate, {{"velocity", &velocity}});
  cpu::MomentumCall c{cpu_dtype(call.dtype), momentum, dampening, out_scale, lerp, accumulate};
  const auto& k = cpu::kernels();
  run_cpu(call, {velocity.data_ptr(), nullptr, nullptr},
          [&](const cpu::Piece* p, int64_t n) { k.nag(c, p, n); });
}

void ema_sq_cpu(at::TensorList tensors, const at::Tensor& exp_avg_sq,
                const std::optional<at::Tensor>& max_exp_avg_sq, at::TensorList out,
                double beta, double pow, bool take_root, double out_scale, bool accumulate) {
  const at::Tensor* vmax = max_exp_avg_sq.has_value() ? &*max_exp_avg_sq : nullptr;
  PreparedCall call =
      prepare_call("ema_sq_", tensors, {}, false, out, accumulate,
                   {{"exp_avg_sq", &exp_avg_sq}, {"max_exp_avg_sq", vmax}});
  cpu::EmaSqCall c{cpu_dtype(call.dtype), beta, pow, out_scale, take_root, vmax != nullptr,
                   accumulate};
  const auto& k = cpu::kernels();
  run_cpu(call, {exp_avg_sq.data_ptr(), state_ptr(vmax), nullptr},
          [&](const cpu::Piece* p, int64_t n) { k.ema_sq(c, p, n); });
}

void check_unary_op(int64_t op) {
  TORCH_CHECK(op >= 0 && op < 5, "tzfast::unary_: unknown op code ", op, "; accepted codes: ",
              unary_codes_text());
}

void unary_cpu(at::TensorList tensors, at::TensorList out, int64_t op, double a, double b,
               double out_scale, bool accumulate) {
  check_unary_op(op);
  PreparedCall call = prepare_call("unary_", tensors, {}, false, out, accumulate, {});
  cpu::UnaryCall c{cpu_dtype(call.dtype), op, a, b, out_scale, accumulate};
  const auto& k = cpu::kernels();
  run_cpu(call, {nullptr, nullptr, nullptr},
          [&](const cpu::Piece* p, int64_t n) { k.unary(c, p, n); });
}

void weight_decay_cpu(at::TensorList tensors, at::TensorList params, at::TensorList out,
                      double weight_decay, int64_t ord, double out_scale, bool accumulate) {
  PreparedCall call = prepare_call("weight_decay_", tensors, params, true, out, accumulate, {});
  cpu::WeightDecayCall c{cpu_dtype(call.dtype), weight_decay, ord, out_scale, accumulate};
  const auto& k = cpu::kernels();
  run_cpu(call, {nullptr, nullptr, nullptr},
          [&](const cpu::Piece* p, int64_t n) { k.weight_decay(c, p, n); });
}

// With every list empty (unary_, weight_decay_) the call has no tensor and so no dispatch
// key; the dispatcher then uses the CompositeExplicitAutograd kernel. It checks the call
// and, having nothing to do, returns. It is never reached with tensors of a device that has
// a kernel; for any other device it says so.
void no_device(const char* op, at::TensorList tensors) {
  TORCH_CHECK(tensors.empty(), "tzfast::", op, ": no kernel for device ",
              tensors[0].device(), " in this build (", tensors[0].device().type() == at::kCUDA
                  ? "built without TZFAST_CUDA" : "unsupported device",
              ")");
}

void unary_empty(at::TensorList tensors, at::TensorList out, int64_t op, double, double, double,
                 bool accumulate) {
  check_unary_op(op);
  no_device("unary_", tensors.empty() ? out : tensors);
  prepare_call("unary_", tensors, {}, false, out, accumulate, {});
}

void weight_decay_empty(at::TensorList tensors, at::TensorList params, at::TensorList out,
                        double, int64_t, double, bool accumulate) {
  no_device("weight_decay_", !tensors.empty() ? tensors : (!params.empty() ? params : out));
  prepare_call("weight_decay_", tensors, params, true, out, accumulate, {});
}

}  // namespace

TORCH_LIBRARY(tzfast, m) {
  m.def(
      "adam_(Tensor[] tensors, Tensor(a!) exp_avg, Tensor(b!) exp_avg_sq, Tensor(c!)? "
      "max_exp_avg_sq, Tensor(d!)[] out, float beta1, float beta2, float eps, float step_size, "
      "float pow, float out_scale, bool accumulate) -> ()");
  m.def(
      "ema_(Tensor[] tensors, Tensor(a!) exp_avg, Tensor(b!)[] out, float momentum, "
      "float dampening, bool lerp, float out_scale, bool accumulate) -> ()");
  m.def(
      "nag_(Tensor[] tensors, Tensor(a!) velocity, Tensor(b!)[] out, float momentum, "
      "float dampening, bool lerp, float out_scale, bool accumulate) -> ()");
  m.def(
      "ema_sq_(Tensor[] tensors, Tensor(a!) exp_avg_sq, Tensor(b!)? max_exp_avg_sq, "
      "Tensor(c!)[] out, float beta, float pow, bool take_root, float out_scale, "
      "bool accumulate) -> ()");
  m.def(
      "unary_(Tensor[] tensors, Tensor(a!)[] out, int op, float a, float b, float out_scale, "
      "bool accumulate) -> ()");
  m.def(
      "weight_decay_(Tensor[] tensors, Tensor[] params, Tensor(a!)[] out, float weight_decay, "
      "int ord, float out_scale, bool accumulate) -> ()");
}

TORCH_LIBRARY_IMPL(tzfast, CPU, m) {
  m.impl("adam_", &adam_cpu);
  m.impl("ema_", &ema_cpu);
  m.impl("nag_", &nag_cpu);
  m.impl("ema_sq_", &ema_sq_cpu);
  m.impl("unary_", &unary_cpu);
  m.impl("weight_decay_", &weight_decay_cpu);
}

TORCH_LIBRARY_IMPL(tzfast, CompositeExplicitAutograd, m) {
  m.impl("unary_", &unary_empty);
  m.impl("weight_decay_", &weight_decay_empty);
}

}  // namespace ops
}  // namespace tzfast
