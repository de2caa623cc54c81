// Direct calls: CPU kernels bound straight into tzfast._C, without the dispatcher.
//
// A call through torch.ops.tzfast.* costs ~4 us of dispatch (boxing the arguments, the
// dispatch-key walk, the autograd and view layers) before the kernel runs. On a small problem,
// a zeroth-order step is three such calls around two closure evaluations, and that dispatch is
// most of the optimizer's time. The Python layer calls these bindings instead when every
// tensor is on the CPU and nothing traces the call (torch.compile, fake tensors, functorch), and
// the registered ops otherwise; both run the same kernel with the same checks, so the results
// are the same bits (tests/test_perturb_ops.py checks it).
#include <torch/python.h>

#include <cstdint>
#include <vector>

#include "direct_calls.h"
#include "ops/lbfgs_common.h"
#include "ops/perturb_common.h"

namespace tzfast {

void register_direct_calls(pybind11::module_& m) {
  m.def(
      "_accumulate_directions_cpu",
      [](const std::vector<at::Tensor>& out, const std::vector<int64_t>& offsets, int64_t seed,
         const std::vector<int64_t>& samples, const std::vector<double>& coeffs, int64_t dist,
         double out_scale, bool accumulate) {
        pybind11::gil_scoped_release no_gil;
        ops::accumulate_directions_cpu_direct(out, offsets, seed, samples, coeffs, dist,
                                              out_scale, accumulate);
      },
      "accumulate_directions_ on CPU tensors without the dispatcher (same kernel and checks).");
  m.def(
      "_lbfgs_pair_cpu",
      [](const std::vector<at::Tensor>& params, const std::vector<at::Tensor>& grads,
         const std::optional<at::Tensor>& prev, const at::Tensor& next,
         const std::optional<at::Tensor>& pair) {
        pybind11::gil_scoped_release no_gil;
        return ops::lbfgs_pair_cpu(params, grads, prev, next, pair);
      },
      "lbfgs_pair_ on CPU tensors without the dispatcher.");
  m.def(
      "_lbfgs_direction_cpu",
      [](const std::vector<at::Tensor>& out, const std::vector<at::Tensor>& x,
         const at::Tensor& hist, const at::Tensor& gram, const std::vector<int64_t>& order,
         int64_t new_slot, const std::vector<double>& sy, int64_t method) {
        pybind11::gil_scoped_release no_gil;
        return ops::lbfgs_direction_cpu(out, x, hist, gram, order, new_slot, sy, method);
      },
      "lbfgs_direction_ on CPU tensors without the dispatcher.");
}

}  // namespace tzfast
