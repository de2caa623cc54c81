// The L-BFGS ops (docs/lbfgs.md): schemas, argument checks and the CPU implementation.
//
//   lbfgs_pair_(Tensor[] params, Tensor[] grads, Tensor? prev, Tensor(a!) next,
//               Tensor(b!)? pair) -> Tensor
//   lbfgs_direction_(Tensor(a!)[] out, Tensor[] x, Tensor hist, Tensor(b!) gram, int[] order,
//                    int new_slot, float[] sy, int method=0) -> Tensor
//
// The history lives in `hist`, a contiguous [2 * slots, n] tensor: slot t holds s_t in row 2t
// and y_t in row 2t + 1. `gram` (float64, CPU, [2, slots, slots]) holds s_i . y_j in gram[0][i][j]
// and y_i . y_j in gram[1][i][j] for the slots in use. A direction is two passes over the
// history: one computes h . x for every history row h (and, when a pair was just stored, the
// new pair's Gram entries, from the same read), the other forms the result; between them the
// two-loop recursion runs on the Gram entries (O(m^2) scalar work).

#ifndef TORCH_ASSERT_ONLY_METHOD_OPERATORS
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#endif
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "../kernels/lbfgs_kernels.h"
#include "lbfgs_common.h"
#include "tzfast/lbfgs.h"

namespace tzfast {
namespace ops {

namespace {

using cpu::FlatList;
using cpu::FlatRun;
using cpu::kLbfgsBlock;

cpu::DType lbfgs_dtype(const char* op, const std::string& what, at::ScalarType t) {
  TORCH_CHECK(t == at::kFloat || t == at::kDouble, "tzfast::", op, ": expected ", what,
              " to be float32 or float64 but got ", t);
  return t == at::kDouble ? cpu::DType::Float64 : cpu::DType::Float32;
}

// A list argument as runs over one flat index: every tensor contiguous, CPU, of `dtype`, in
// list order; the runs cover [0, total).
struct Runs {
  std::vector<FlatRun> runs;
  int64_t total = 0;
  FlatList list() const { return FlatList{runs.data(), int64_t(runs.size())}; }
};

Runs runs_of(const char* op, const char* name, at::TensorList ts, at::ScalarType dtype) {
  Runs r;
  for (size_t j = 0; j < ts.size(); ++j) {
    const at::Tensor& t = ts[j];
    TORCH_CHECK(t.defined(), "tzfast::", op, ": expected ", name, "[", j,
                "] to be a tensor but got an undefined tensor");
    TORCH_CHECK(t.device().is_cpu(), "tzfast::", op, ": expected ", name, "[", j,
                "] on the CPU but got ", t.device());
    TORCH_CHECK(t.scalar_type() == dtype, "tzfast::", op, ": expected ", name, "[", j,
                "] to have dtype ", dtype, " but got ", t.scalar_type());
    TORCH_CHECK(t.is_contiguous(), "tzfast::", op, ": expected ", name, "[", j,
                "] to be contiguous but it has strides ", t.strides());
    if (t.numel() == 0) continue;
    r.runs.push_back(FlatRun{t.data_ptr(), t.numel(), r.total});
    r.total += t.numel();
  }
  return r;
}

void check_matrix(const char* op, const char* name, const at::Tensor& t, int64_t rows, int64_t n,
                  at::ScalarType dtype) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == dtype && t.is_contiguous() &&
                  t.dim() == 2 && t.size(1) == n && (rows < 0 || t.size(0) == rows),
              "tzfast::", op, ": expected ", name, " to be a contiguous CPU ", dtype, " tensor of shape [",
              rows < 0 ? std::string("*") : std::to_string(rows), ", ", n, "] but got ",
              t.scalar_type(), " ", t.sizes(), " on ", t.device(),
              t.is_contiguous() ? "" : " (not contiguous)");
}

int64_t blocks_of(int64_t n) { return (n + kLbfgsBlock - 1) / kLbfgsBlock; }

// Runs f(first_block, end_block, scratch) over the blocks of [0, n), in parallel when big
// enough; scratch is cpu::kLbfgsScratchBytes of the calling thread's own memory (allocated
// here, touched only when a block spans tensors).
template <typename F>
void over_blocks(int64_t n, int64_t work_per_element, F&& f) {
  const int64_t nb = blocks_of(n);
  const bool serial = nb <= 1 || n * work_per_element < (int64_t(1) << 17);
  const int64_t threads = serial ? 1 : at::get_num_threads();
  // uninitialised (new[] of a trivial type): pages are only touched where used
  const std::unique_ptr<double[]> scratch(new double[size_t(threads * cpu::kLbfgsScratchBytes / 8)]);
  if (serial) {
    f(int64_t(0), nb, static_cast<void*>(scratch.get()));
  } else {
    at::parallel_for(0, nb, 1, [&](int64_t b0, int64_t b1) {
      const int64_t t = std::min<int64_t>(at::get_thread_num(), threads - 1);
      f(b0, b1, static_cast<void*>(scratch.get() + t * (cpu::kLbfgsScratchBytes / 8)));
    });
  }
}


}  // namespace

at::Tensor lbfgs_pair_cpu(at::TensorList params, at::TensorList grads,
                          const std::optional<at::Tensor>& prev, const at::Tensor& next,
                          const std::optional<at::Tensor>& pair) {
  const char* op = "lbfgs_pair_";
  TORCH_CHECK(!params.empty(), "tzfast::", op, ": expected at least one parameter but got none");
  const at::ScalarType dtype = params[0].scalar_type();
  const cpu::DType dt = lbfgs_dtype(op, "params[0]", dtype);
  TORCH_CHECK(params.size() == grads.size(), "tzfast::", op, ": expected grads to have ",
              params.size(), " tensors (one per parameter) but got ", grads.size());
  Runs p = runs_of(op, "params", params, dtype);
  Runs g = runs_of(op, "grads", grads, dtype);
  for (size_t j = 0; j < params.size(); ++j) {
    TORCH_CHECK(params[j].numel() == grads[j].numel(), "tzfast::", op, ": expected grads[", j,
                "] to have ", params[j].numel(), " elements (like params[", j, "]) but got ",
                grads[j].numel());
  }
  const int64_t n = p.total;
  check_matrix(op, "next", next, 2, n, dtype);
  const bool first = !prev.has_value() || !prev->defined();
  if (!first) check_matrix(op, "prev", *prev, 2, n, dtype);
  TORCH_CHECK(first || (pair.has_value() && pair->defined()), "tzfast::", op,
              ": expected `pair` (the [2, n] slot for s and y) when `prev` is given");
  if (!first) check_matrix(op, "pair", *pair, 2, n, dtype);
  const cpu::LbfgsPairCall c{dt,
                             n,
                             p.list(),
                             g.list(),
                             first ? nullptr : prev->data_ptr(),
                             next.data_ptr(),
                             first ? nullptr : pair->data_ptr()};
  const int64_t nb = blocks_of(n);
  std::vector<double> partial(size_t(nb) * 4, 0.0);
  const cpu::LbfgsTable& k = cpu::lbfgs_kernels();
  over_blocks(n, 1, [&](int64_t b0, int64_t b1, void*) {
    for (int64_t b = b0; b < b1; ++b) {
      k.pair(c, b * kLbfgsBlock, std::min(n, (b + 1) * kLbfgsBlock), partial.data() + 4 * b);
    }
  });
  at::Tensor stats = at::zeros({4}, at::TensorOptions().dtype(at::kDouble));
  double* st = stats.data_ptr<double>();
  for (int64_t b = 0; b < nb; ++b) {  // block order: the same for any thread count
    st[0] += partial[4 * b];
    st[1] = std::max(st[1], partial[4 * b + 1]);
    st[2] = std::max(st[2], partial[4 * b + 2]);
    st[3] += partial[4 * b + 3];
  }
  for (const at::Tensor* t : {&next}) t->unsafeGetTensorImpl()->bump_version();
  if (!first) pair->unsafeGetTensorImpl()->bump_version();
  return stats;
}

at::Tensor lbfgs_direction_cpu(at::TensorList out, at::TensorList x, const at::Tensor& hist,
                               const at::Tensor& gram, at::IntArrayRef order, int64_t new_slot,
                               at::ArrayRef<double> sy, int64_t method) {
  const char* op = "lbfgs_direction_";
  TORCH_CHECK(method == lbfgs::kLbfgs || method == lbfgs::kLsr1 || method == lbfgs::kLsr1Compact, "tzfast::", op,
              ": expected method 0 (L-BFGS), 1 (L-SR1) or 2 (compact L-SR1) but got ", method);
  TORCH_CHECK(!x.empty(), "tzfast::", op, ": expected at least one tensor in x but got none");
  const at::ScalarType dtype = x[0].scalar_type();
  const cpu::DType dt = lbfgs_dtype(op, "x[0]", dtype);
  TORCH_CHECK(out.size() == x.size(), "tzfast::", op, ": expected out to have ", x.size(),
              " tensors (like x) but got ", out.size());
  Runs xr = runs_of(op, "x", x, dtype);
  Runs orr = runs_of(op, "out", out, dtype);
  TORCH_CHECK(orr.total == xr.total, "tzfast::", op, ": expected out to have ", xr.total,
              " elements in all (like x) but got ", orr.total);
  const int64_t n = xr.total;
  check_matrix(op, "hist", hist, -1, n, dtype);
  const int64_t slots = hist.size(0) / 2;
  TORCH_CHECK(hist.size(0) == 2 * slots, "tzfast::", op,
              ": expected hist to have an even number of rows (s and y per slot) but got ",
              hist.size(0));
  TORCH_CHECK(gram.device().is_cpu() && gram.scalar_type() == at::kDouble && gram.is_contiguous() &&
                  gram.dim() == 3 && gram.size(0) == 2 && gram.size(1) == slots &&
                  gram.size(2) == slots,
              "tzfast::", op, ": expected gram to be a contiguous CPU float64 tensor of shape [2, ",
              slots, ", ", slots, "] but got ", gram.scalar_type(), " ", gram.sizes(), " on ",
              gram.device());
  const int64_t m = int64_t(order.size());
  TORCH_CHECK(int64_t(sy.size()) == m, "tzfast::", op, ": expected sy to have ", m,
              " values (one per slot in order) but got ", sy.size());
  for (int64_t i = 0; i < m; ++i) {
    TORCH_CHECK(order[i] >= 0 && order[i] < slots, "tzfast::", op, ": expected order[", i,
                "] in [0, ", slots, ") but got ", order[i]);
  }
  TORCH_CHECK(new_slot < 0 || (m > 0 && order[m - 1] == new_slot), "tzfast::", op,
              ": expected new_slot (", new_slot, ") to be the last slot of order or -1");

  at::Tensor result = at::zeros({2}, at::TensorOptions().dtype(at::kDouble));  // gamma, terms
  const cpu::LbfgsTable& k = cpu::lbfgs_kernels();
  std::vector<int64_t> row;
  std::vector<double> coef;
  double gamma = 1.0;
  if (m > 0) {
    // pass 1: every history row against x (and, for a new pair, against s_new and y_new)
    row.resize(size_t(2 * m));
    for (int64_t i = 0; i < m; ++i) {
      row[size_t(2 * i)] = 2 * order[i];
      row[size_t(2 * i + 1)] = 2 * order[i] + 1;
    }
    const int64_t rows = 2 * m;
    const cpu::LbfgsDotsCall dc{dt,          n,    hist.data_ptr(),
                                row.data(),  rows, xr.list(),
                                new_slot >= 0 ? 2 * new_slot : -1,
                                new_slot >= 0 ? 2 * new_slot + 1 : -1};
    const int64_t nb = blocks_of(n);
    std::vector<double> partial(size_t(nb * rows * 3), 0.0);
    over_blocks(n, rows, [&](int64_t b0, int64_t b1, void* scratch) {
      for (int64_t b = b0; b < b1; b += cpu::kLbfgsSuper) {
        const int64_t e = std::min(b1, b + cpu::kLbfgsSuper);
        k.dots(dc, b * kLbfgsBlock, std::min(n, e * kLbfgsBlock), partial.data() + b * rows * 3,
               scratch);
      }
    });
    std::vector<double> d(size_t(rows * 3), 0.0);
    for (int64_t b = 0; b < nb; ++b) {
      for (int64_t j = 0; j < rows * 3; ++j) d[size_t(j)] += partial[size_t(b * rows * 3 + j)];
    }
    auto D = [&](int64_t r, int c) { return d[size_t(3 * r + c)]; };
    double* SY = gram.data_ptr<double>();
    double* YY = SY + slots * slots;
    const lbfgs::Gram gv{SY, YY, slots, order.data()};
    if (new_slot >= 0) {
      std::vector<double> sy_t(size_t(m), 0.0), ys_t(size_t(m), 0.0), yy_t(size_t(m), 0.0);
      for (int64_t i = 0; i < m; ++i) {
        sy_t[size_t(i)] = D(2 * i, 2);      // s_i . y_t
        ys_t[size_t(i)] = D(2 * i + 1, 1);  // y_i . s_t
        yy_t[size_t(i)] = D(2 * i + 1, 2);  // y_i . y_t
      }
      lbfgs::update_gram(gv, m, sy_t.data(), ys_t.data(), yy_t.data());
    }
    std::vector<double> Sx(size_t(m), 0.0);
    std::vector<double> Yx(size_t(m), 0.0);
    for (int64_t i = 0; i < m; ++i) {
      Sx[size_t(i)] = D(2 * i, 0);
      Yx[size_t(i)] = D(2 * i + 1, 0);
    }
    coef.assign(size_t(2 * m), 0.0);
    std::vector<double> scratch(size_t(lbfgs::scratch_size(m)), 0.0);
    const double tiny = 2.0 * (dtype == at::kDouble ? std::numeric_limits<double>::min()
                                                     : double(std::numeric_limits<float>::min()));
    gamma = lbfgs::coefficients(method, gv, Sx.data(), Yx.data(), sy.data(), m, tiny, coef.data(),
                                scratch.data());
  }
  const cpu::LbfgsCombineCall cc{dt,    n,     hist.data_ptr(), xr.list(),     orr.list(),
                                 gamma, row.data(), coef.data(), int64_t(row.size())};
  over_blocks(n, int64_t(row.size()) + 1, [&](int64_t b0, int64_t b1, void* scratch) {
    for (int64_t b = b0; b < b1; b += cpu::kLbfgsSuper) {
      const int64_t e = std::min(b1, b + cpu::kLbfgsSuper);
      k.combine(cc, b * kLbfgsBlock, std::min(n, e * kLbfgsBlock), scratch);
    }
  });
  for (const at::Tensor& o : out) o.unsafeGetTensorImpl()->bump_version();
  gram.unsafeGetTensorImpl()->bump_version();
  result.data_ptr<double>()[0] = gamma;
  result.data_ptr<double>()[1] = static_cast<double>(row.size());
  return result;
}

TORCH_LIBRARY_FRAGMENT(tzfast, m) {
  m.def(
      "lbfgs_pair_(Tensor[] params, Tensor[] grads, Tensor? prev, Tensor(a!) next, "
      "Tensor(b!)? pair) -> Tensor");
  m.def(
      "lbfgs_direction_(Tensor(a!)[] out, Tensor[] x, Tensor hist, Tensor(b!) gram, int[] order, "
      "int new_slot, float[] sy, int method=0) -> Tensor");
}

TORCH_LIBRARY_IMPL(tzfast, CPU, m) {
  m.impl("lbfgs_pair_", &lbfgs_pair_cpu);
  m.impl("lbfgs_direction_", &lbfgs_direction_cpu);
}

}  // namespace ops
}  // namespace tzfast
