// The CPU L-BFGS ops (csrc/ops/lbfgs.cpp), declared for tzfast._C's direct calls
// (csrc/direct_calls.cpp), which call them without the dispatcher.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>

namespace tzfast {
namespace ops {

at::Tensor lbfgs_pair_cpu(at::TensorList params, at::TensorList grads,
                          const std::optional<at::Tensor>& prev, const at::Tensor& next,
                          const std::optional<at::Tensor>& pair);

at::Tensor lbfgs_direction_cpu(at::TensorList out, at::TensorList x, const at::Tensor& hist,
                               const at::Tensor& gram, at::IntArrayRef order, int64_t new_slot,
                               at::ArrayRef<double> sy, int64_t method);

}  // namespace ops
}  // namespace tzfast
