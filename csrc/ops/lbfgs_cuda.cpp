// CUDA implementation of the L-BFGS ops (docs/lbfgs.md): the two passes over the history are
// cuBLAS calls through ATen (one mm of the [2 * slots, n] history against [x, s_new, y_new], one
// mv of its transpose against the coefficients); the scalar recursion between them runs in one
// device thread (cuda/lbfgs.cu), so a direction makes no host sync. The slot order and the s.y
// values travel host -> device through a pinned buffer on the current stream.
//
// Built only with -DTZFAST_CUDA=ON against a CUDA build of torch (cmake/cuda.cmake); the schemas
// are defined in csrc/ops/lbfgs.cpp.
#ifdef TZFAST_WITH_CUDA

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <vector>

#include "cuda/lbfgs.h"

namespace tzfast {
namespace {

void check_list(const char* op, const char* name, at::TensorList ts, const at::Device& device,
                at::ScalarType dtype) {
  for (size_t j = 0; j < ts.size(); ++j) {
    TORCH_CHECK(ts[j].defined() && ts[j].device() == device && ts[j].scalar_type() == dtype, "tzfast::", op,
                ": expected ", name, "[", j, "] to be a ", dtype, " tensor on ", device, " but got ",
                ts[j].defined() ? ts[j].toString() : std::string("an undefined tensor"),
                ts[j].defined() ? " on " + ts[j].device().str() : std::string());
  }
}

at::Tensor flat_of(at::TensorList ts) {
  std::vector<at::Tensor> parts;
  parts.reserve(ts.size());
  for (const at::Tensor& t : ts) parts.push_back(t.reshape({-1}));
  return parts.size() == 1 ? parts[0].contiguous() : at::cat(parts);
}

void check_matrix(const char* op, const char* name, const at::Tensor& t, int64_t rows, int64_t n,
                  const at::Device& device, at::ScalarType dtype) {
  TORCH_CHECK(t.defined() && t.device() == device && t.scalar_type() == dtype && t.is_contiguous() &&
                  t.dim() == 2 && t.size(1) == n && (rows < 0 || t.size(0) == rows),
              "tzfast::", op, ": expected ", name, " to be a contiguous ", dtype, " tensor on ", device,
              " of shape [", rows < 0 ? std::string("*") : std::to_string(rows), ", ", n, "]");
}

at::Tensor lbfgs_pair_cuda(at::TensorList params, at::TensorList grads,
                           const std::optional<at::Tensor>& prev, const at::Tensor& next,
                           const std::optional<at::Tensor>& pair) {
  const char* op = "lbfgs_pair_";
  TORCH_CHECK(!params.empty(), "tzfast::", op, ": expected at least one parameter but got none");
  const at::Device device = params[0].device();
  const at::ScalarType dtype = params[0].scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble, "tzfast::", op,
              ": expected params[0] to be float32 or float64 but got ", dtype);
  TORCH_CHECK(grads.size() == params.size(), "tzfast::", op, ": expected grads to have ", params.size(),
              " tensors (one per parameter) but got ", grads.size());
  check_list(op, "params", params, device, dtype);
  check_list(op, "grads", grads, device, dtype);
  const c10::cuda::CUDAGuard guard(device);
  const at::Tensor p = flat_of(params);
  const at::Tensor g = flat_of(grads);
  const int64_t n = p.numel();
  TORCH_CHECK(g.numel() == n, "tzfast::", op, ": expected grads to have ", n, " elements in all but got ",
              g.numel());
  check_matrix(op, "next", next, 2, n, device, dtype);
  const bool first = !prev.has_value() || !prev->defined();
  const auto dopts = at::TensorOptions().dtype(at::kDouble).device(device);
  if (first) {
    next.select(0, 0).copy_(p);
    next.select(0, 1).copy_(g);
    return at::zeros({4}, dopts);
  }
  check_matrix(op, "prev", *prev, 2, n, device, dtype);
  TORCH_CHECK(pair.has_value() && pair->defined(), "tzfast::", op,
              ": expected `pair` (the [2, n] slot for s and y) when `prev` is given");
  check_matrix(op, "pair", *pair, 2, n, device, dtype);
  at::Tensor s = pair->select(0, 0);
  at::Tensor y = pair->select(0, 1);
  at::sub_out(s, p, prev->select(0, 0));
  at::sub_out(y, g, prev->select(0, 1));
  next.select(0, 0).copy_(p);
  next.select(0, 1).copy_(g);
  const at::Tensor sd = s.to(at::kDouble);
  const at::Tensor yd = y.to(at::kDouble);
  return at::stack({at::dot(sd, yd), at::nan_to_num(sd.abs(), 0.0).max(), at::nan_to_num(yd.abs(), 0.0).max(),
                    (sd.isnan().sum() + yd.isnan().sum()).to(at::kDouble)});
}

at::Tensor lbfgs_direction_cuda(at::TensorList out, at::TensorList x, const at::Tensor& hist,
                                const at::Tensor& gram, at::IntArrayRef order, int64_t new_slot,
                                at::ArrayRef<double> sy, int64_t method) {
  const char* op = "lbfgs_direction_";
  TORCH_CHECK(!x.empty(), "tzfast::", op, ": expected at least one tensor in x but got none");
  TORCH_CHECK(method >= 0 && method <= 2, "tzfast::", op,
              ": expected method 0 (L-BFGS), 1 (L-SR1) or 2 (compact L-SR1) but got ", method);
  const at::Device device = x[0].device();
  const at::ScalarType dtype = x[0].scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble, "tzfast::", op,
              ": expected x[0] to be float32 or float64 but got ", dtype);
  TORCH_CHECK(out.size() == x.size(), "tzfast::", op, ": expected out to have ", x.size(),
              " tensors (like x) but got ", out.size());
  check_list(op, "x", x, device, dtype);
  check_list(op, "out", out, device, dtype);
  const c10::cuda::CUDAGuard guard(device);
  const at::Tensor xf = flat_of(x);
  const int64_t n = xf.numel();
  check_matrix(op, "hist", hist, -1, n, device, dtype);
  const int64_t slots = hist.size(0) / 2;
  TORCH_CHECK(hist.size(0) == 2 * slots && slots > 0, "tzfast::", op,
              ": expected hist to have a positive even number of rows but got ", hist.size(0));
  TORCH_CHECK(gram.device() == device && gram.scalar_type() == at::kDouble && gram.is_contiguous() &&
                  gram.dim() == 3 && gram.size(0) == 2 && gram.size(1) == slots && gram.size(2) == slots,
              "tzfast::", op, ": expected gram to be a contiguous float64 tensor on ", device, " of shape [2, ",
              slots, ", ", slots, "]");
  const auto m = static_cast<int64_t>(order.size());
  TORCH_CHECK(static_cast<int64_t>(sy.size()) == m, "tzfast::", op, ": expected sy to have ", m,
              " values (one per slot in order) but got ", sy.size());
  for (int64_t i = 0; i < m; ++i) {
    TORCH_CHECK(order[i] >= 0 && order[i] < slots, "tzfast::", op, ": expected order[", i, "] in [0, ", slots,
                ") but got ", order[i]);
  }
  TORCH_CHECK(new_slot < 0 || (m > 0 && order[m - 1] == new_slot), "tzfast::", op, ": expected new_slot (",
              new_slot, ") to be the last slot of order or -1");
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(device.index()).stream();

  at::Tensor d;
  at::Tensor result;
  if (m == 0) {
    d = xf;
    result = at::ones({2}, at::TensorOptions().dtype(at::kDouble).device(device));
    result.select(0, 1).zero_();
  } else {
    // pass 1: every history row against x (and the new pair)
    const at::Tensor V = new_slot >= 0 ? at::stack({xf, hist.select(0, 2 * new_slot), hist.select(0, 2 * new_slot + 1)}, 1)
                                       : xf.unsqueeze(1);
    const at::Tensor R = at::mm(hist, V).to(at::kDouble).contiguous();
    // the slot order and s.y: one pinned buffer, copied on the stream
    at::Tensor host = at::empty({2 * m}, at::TensorOptions().dtype(at::kLong).pinned_memory(true));
    auto* h = host.mutable_data_ptr<int64_t>();
    std::memcpy(h, order.data(), static_cast<size_t>(m) * sizeof(int64_t));
    std::memcpy(h + m, sy.data(), static_cast<size_t>(m) * sizeof(double));
    const at::Tensor meta = host.to(device, /*non_blocking=*/true);
    const int64_t scratch = cuda::lbfgs_scratch_doubles(m);
    at::Tensor work = at::empty({scratch + 2 * slots + 1}, at::TensorOptions().dtype(at::kDouble).device(device));
    double* wp = work.mutable_data_ptr<double>();
    const double tiny = 2.0 * (dtype == at::kDouble ? std::numeric_limits<double>::min()
                                                     : static_cast<double>(std::numeric_limits<float>::min()));
    const cuda::LbfgsCoefficientsCall call{R.const_data_ptr<double>(),
                                           R.size(1),
                                           gram.mutable_data_ptr<double>(),
                                           slots,
                                           meta.const_data_ptr<int64_t>(),
                                           reinterpret_cast<const double*>(meta.const_data_ptr<int64_t>() + m),
                                           m,
                                           new_slot,
                                           method,
                                           tiny,
                                           wp,
                                           wp + scratch,
                                           wp + scratch + 2 * slots};
    const cudaError_t err = cuda::launch_lbfgs_coefficients(call, stream);
    TORCH_CHECK(err == cudaSuccess, "tzfast::", op, ": the CUDA launcher rejected its arguments: ",
                cudaGetErrorString(err));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const at::Tensor coef = work.narrow(0, scratch, 2 * slots).to(dtype);
    const at::Tensor gamma = work.narrow(0, scratch + 2 * slots, 1);
    // pass 2: d = gamma x + hist^T coef
    d = at::mv(hist.t(), coef);
    d.add_(xf * gamma.to(dtype));
    result = at::cat({gamma, at::full({1}, static_cast<double>(2 * m), gamma.options())});
  }
  int64_t off = 0;
  for (const at::Tensor& o : out) {
    const int64_t k = o.numel();
    if (k > 0) o.copy_(d.narrow(0, off, k).view(o.sizes()));
    off += k;
  }
  return result;
}

}  // namespace

TORCH_LIBRARY_IMPL(tzfast, CUDA, m) {
  m.impl("lbfgs_pair_", &lbfgs_pair_cuda);
  m.impl("lbfgs_direction_", &lbfgs_direction_cuda);
}

}  // namespace tzfast

#endif  // TZFAST_WITH_CUDA
