// Device-independent half of the native elementwise ops (docs/native-ops.md): argument
// checks and the segment table. Implemented in csrc/ops/elementwise.cpp; used there by the
// CPU kernels and available to the CUDA glue (csrc/ops/elementwise_cuda.cpp), so both
// backends accept and reject exactly the same calls with the same messages.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <initializer_list>
#include <optional>
#include <utility>
#include <vector>

namespace tzfast {
namespace ops {

// One non-empty input tensor after preparation: contiguous memory for x (and p), and for
// out (either out[i] itself or a contiguous temporary copied back by finish()).
// `offset` is the tensor's first element in the flat state buffers.
struct SegmentInfo {
  const void* x;
  const void* p;  // params[i] for weight_decay_, else nullptr
  void* out;
  int64_t numel;
  int64_t offset;
};

class PreparedCall {
 public:
  std::vector<SegmentInfo> segments;  // non-empty tensors only, in list order
  int64_t total = 0;                  // total numel of `tensors`
  at::ScalarType dtype = at::kFloat;  // common dtype (meaningful when any tensor is given)
  bool has_dtype = false;

  // Copies contiguous temporaries back into non-contiguous `out` tensors. Call once, after
  // the kernel has run (on CUDA: enqueued on the current stream, which copy_ also uses).
  void finish();

  // Keeps temporaries alive and records (user tensor, temporary) pairs for finish().
  std::vector<at::Tensor> keep_alive;
  std::vector<std::pair<at::Tensor, at::Tensor>> write_back;
};

// A flat state buffer of the call, by schema name; `tensor` is nullptr for an absent
// optional buffer (max_exp_avg_sq = None).
struct NamedState {
  const char* name;
  const at::Tensor* tensor;
};

// Checks everything docs/native-ops.md requires of a call and prepares the segments:
//   * list lengths: out (and params, when given) as long as tensors;
//   * out[i] and params[i] have the sizes of tensors[i]; out[i] has no internal overlap;
//   * one floating dtype (float32/float64/float16/bfloat16) and one device for every tensor
//     of the call: those of tensors[0], or of the first state buffer when the lists are empty;
//   * state buffers 1-D, contiguous, of the total numel of tensors, pairwise disjoint.
// Every failure is a TORCH_CHECK naming the op, the argument, the expected and the actual
// value. `params` is empty except for weight_decay_. `accumulate` decides whether the
// temporary that stands in for a non-contiguous out[i] starts as a copy of it.
PreparedCall prepare_call(const char* op, at::TensorList tensors, at::TensorList params,
                          bool with_params, at::TensorList out, bool accumulate,
                          std::initializer_list<NamedState> states);

// The accepted unary op codes, as text for error messages.
const char* unary_codes_text();

}  // namespace ops
}  // namespace tzfast
