// Newton-Schulz orthogonalization (Muon's "zeroth power"): schemas and the ATen implementation.
//
//   newton_schulz(Tensor G, float[] coeffs, float norm_scale=1.0, float eps=0.0, int gram=-1,
//                 ScalarType? dtype=None) -> Tensor
//   newton_schulz_(Tensor(a!) G, float[] coeffs, float norm_scale=1.0, float eps=0.0,
//                  int gram=-1, ScalarType? dtype=None) -> Tensor(a!)
//
// G is one matrix [m, n] or a batch [..., m, n] of same-shape matrices; every matrix is
// orthogonalized independently. `coeffs` is the schedule, three numbers (a, b, c) per step.
// Per matrix:
//   1. orientation: work on the wide side (X = G^T when m > n), so A = X X^T is the small
//      r x r Gram matrix, r = min(m, n), c = max(m, n);
//   2. normalisation: X <- X / max(||X||_F * norm_scale + eps, 2 * tiny(dtype)); a zero matrix
//      stays zero (no NaN);
//   3. each step (a, b, c): A = X X^T, B = b A + c A A, X <- a X + B X.
//
// Plain variant: per step one bmm and two baddbmm with the scalars folded into the GEMM
// epilogue (beta * self + alpha * batch1 @ batch2), into preallocated buffers reused across steps
// (X ping-pongs between two buffers). Cost per step 2 r^2 c + r^3 multiply-adds.
//
// Gram variant (iterate on the r x r side): X_k = Q_k X_0 with Q_k a polynomial in A_0, so
//   P = a I + B (B = b A + c A^2),  Q <- P Q = a Q + B Q,  A <- P A P = a T + T B with T = a A + B A
// (P commutes with A). Only the first Gram matrix and the final X = Q X_0 touch the long side:
// 2 r^2 c + (4 steps - 3) r^3 multiply-adds in all, against steps (2 r^2 c + r^3). `gram`: 0 plain,
// 1 Gram, -1 chosen by shape (Gram when c >= 2 r and the compute dtype is float32/float64; half
// types stay on the plain iteration, whose errors do not compound through Q).
//
// `dtype` is the compute dtype (default: G's dtype); the result has G's dtype. With bfloat16 on
// CUDA, cuBLAS accumulates the products in float32. The norms are taken in float32 at least.
// The code is ATen only, so the same function serves the CPU and CUDA dispatch keys; the fake
// (meta) kernel is registered from Python (tzfast/ops/newton_schulz.py).

#ifndef TORCH_ASSERT_ONLY_METHOD_OPERATORS
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#endif
#include <ATen/core/Tensor.h>
#include <ATen/ops/baddbmm.h>
#include <ATen/ops/bmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/linalg_vector_norm.h>
#include <c10/util/irange.h>
#include <torch/library.h>

#include <cstdint>
#include <limits>
#include <optional>
#include <utility>

namespace tzfast {
namespace ops {

namespace {

bool is_floating(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

double tiny_of(at::ScalarType t) {
  switch (t) {
    case at::kDouble:
      return std::numeric_limits<double>::min();
    case at::kHalf:
      return 6.103515625e-05;  // smallest normal float16
    default:
      return static_cast<double>(std::numeric_limits<float>::min());  // float32 and bfloat16
  }
}

void check_args(const char* op, const at::Tensor& G, at::ArrayRef<double> coeffs, double norm_scale,
                double eps, int64_t gram, const std::optional<at::ScalarType>& dtype) {
  TORCH_CHECK(G.defined(), "tzfast::", op, ": expected G to be a tensor but got an undefined tensor");
  TORCH_CHECK(G.dim() >= 2, "tzfast::", op,
              ": expected G to have at least 2 dimensions ([..., m, n]) but got shape ", G.sizes());
  TORCH_CHECK(is_floating(G.scalar_type()), "tzfast::", op,
              ": expected G to be Float, Double, Half or BFloat16 but got ", G.scalar_type());
  TORCH_CHECK(!coeffs.empty() && coeffs.size() % 3 == 0, "tzfast::", op,
              ": expected coeffs to hold (a, b, c) per step (a non-empty multiple of 3 numbers) but got ",
              coeffs.size(), " numbers");
  TORCH_CHECK(norm_scale > 0, "tzfast::", op, ": expected norm_scale > 0 but got ", norm_scale);
  TORCH_CHECK(eps >= 0, "tzfast::", op, ": expected eps >= 0 but got ", eps);
  TORCH_CHECK(gram >= -1 && gram <= 1, "tzfast::", op,
              ": expected gram to be -1 (by shape), 0 (plain) or 1 (Gram) but got ", gram);
  if (dtype.has_value()) {
    TORCH_CHECK(is_floating(*dtype), "tzfast::", op,
                ": expected dtype to be Float, Double, Half or BFloat16 but got ", *dtype);
  }
}

// The orthogonalized matrices, in the compute dtype, wide orientation, shape [B, r, c].
at::Tensor iterate(const at::Tensor& G, at::ArrayRef<double> coeffs, double norm_scale, double eps,
                   int64_t gram, at::ScalarType ct) {
  const int64_t m = G.size(-2), n = G.size(-1);
  const bool tall = m > n;
  const int64_t r = tall ? n : m, c = tall ? m : n;
  const int64_t B = G.numel() / (m * n);
  const int64_t steps = static_cast<int64_t>(coeffs.size() / 3);

  // X0: normalised copy in the wide orientation (one pass: gather + cast, then scale in place)
  at::Tensor Gb = G.reshape({B, m, n});
  if (tall) Gb = Gb.transpose(-2, -1);
  at::Tensor X = at::empty({B, r, c}, G.options().dtype(ct));
  X.copy_(Gb);
  const at::ScalarType norm_dtype = (ct == at::kDouble) ? at::kDouble : at::kFloat;
  at::Tensor denom = at::linalg_vector_norm(X, 2, at::IntArrayRef({-2, -1}), /*keepdim=*/true, norm_dtype);
  if (norm_scale != 1.0) denom.mul_(norm_scale);
  if (eps != 0.0) denom.add_(eps);
  denom.clamp_min_(2.0 * tiny_of(ct));
  X.div_(denom.to(ct));

  bool use_gram;
  if (gram < 0) {
    use_gram = (ct == at::kFloat || ct == at::kDouble) && c >= 2 * r && steps >= 2;
  } else {
    use_gram = gram == 1;
  }

  at::Tensor A = at::empty({B, r, r}, X.options());
  at::Tensor Bm = at::empty({B, r, r}, X.options());

  if (!use_gram) {
    at::Tensor Y = at::empty_like(X);
    for (const auto k : c10::irange(steps)) {
      const double a = coeffs[3 * k], b = coeffs[3 * k + 1], cc = coeffs[3 * k + 2];
      at::bmm_out(A, X, X.transpose(-2, -1));
      at::baddbmm_out(Bm, A, A, A, /*beta=*/b, /*alpha=*/cc);
      at::baddbmm_out(Y, X, Bm, X, /*beta=*/a, /*alpha=*/1.0);
      std::swap(X, Y);
    }
    return X;
  }

  // Gram variant
  at::Tensor Q = at::empty({B, r, r}, X.options());
  at::Tensor Qn = at::empty({B, r, r}, X.options());
  at::Tensor T = at::empty({B, r, r}, X.options());
  at::bmm_out(A, X, X.transpose(-2, -1));
  for (const auto k : c10::irange(steps)) {
    const double a = coeffs[3 * k], b = coeffs[3 * k + 1], cc = coeffs[3 * k + 2];
    at::baddbmm_out(Bm, A, A, A, /*beta=*/b, /*alpha=*/cc);
    if (k == 0) {
      Q.copy_(Bm);
      Q.diagonal(0, -2, -1).add_(a);
    } else {
      at::baddbmm_out(Qn, Q, Bm, Q, /*beta=*/a, /*alpha=*/1.0);
      std::swap(Q, Qn);
    }
    if (k + 1 < steps) {
      at::baddbmm_out(T, A, Bm, A, /*beta=*/a, /*alpha=*/1.0);
      at::baddbmm_out(A, T, T, Bm, /*beta=*/a, /*alpha=*/1.0);
    }
  }
  at::Tensor out = at::empty_like(X);
  at::bmm_out(out, Q, X);
  return out;
}

at::Tensor newton_schulz_impl(const at::Tensor& G, at::ArrayRef<double> coeffs, double norm_scale,
                              double eps, int64_t gram, std::optional<at::ScalarType> dtype) {
  check_args("newton_schulz", G, coeffs, norm_scale, eps, gram, dtype);
  if (G.numel() == 0) return at::empty(G.sizes(), G.options());
  const at::ScalarType ct = dtype.value_or(G.scalar_type());
  at::Tensor X = iterate(G, coeffs, norm_scale, eps, gram, ct);
  if (G.size(-2) > G.size(-1)) X = X.transpose(-2, -1);
  at::Tensor out = at::empty(G.sizes(), G.options());
  out.view(X.sizes()).copy_(X);  // out is contiguous: its [B, m, n] view matches X's shape
  return out;
}

at::Tensor& newton_schulz_inplace_impl(at::Tensor& G, at::ArrayRef<double> coeffs, double norm_scale,
                                       double eps, int64_t gram, std::optional<at::ScalarType> dtype) {
  check_args("newton_schulz_", G, coeffs, norm_scale, eps, gram, dtype);
  if (G.numel() == 0) return G;
  const at::ScalarType ct = dtype.value_or(G.scalar_type());
  at::Tensor X = iterate(G, coeffs, norm_scale, eps, gram, ct);
  const int64_t m = G.size(-2), n = G.size(-1);
  if (m > n) X = X.transpose(-2, -1);
  if (G.is_contiguous()) {
    G.view({X.size(0), m, n}).copy_(X);
  } else {
    G.copy_(X.reshape(G.sizes()));
  }
  return G;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(tzfast, m) {
  m.def(
      "newton_schulz(Tensor G, float[] coeffs, float norm_scale=1.0, float eps=0.0, int gram=-1, "
      "ScalarType? dtype=None) -> Tensor");
  m.def(
      "newton_schulz_(Tensor(a!) G, float[] coeffs, float norm_scale=1.0, float eps=0.0, "
      "int gram=-1, ScalarType? dtype=None) -> Tensor(a!)");
}

TORCH_LIBRARY_IMPL(tzfast, CPU, m) {
  m.impl("newton_schulz", &newton_schulz_impl);
  m.impl("newton_schulz_", &newton_schulz_inplace_impl);
}

// The same ATen code on CUDA tensors (cuBLAS batched GEMMs); registering a CUDA kernel needs no
// CUDA headers, so this also builds (and is inert) in a CPU-only build.
TORCH_LIBRARY_IMPL(tzfast, CUDA, m) {
  m.impl("newton_schulz", &newton_schulz_impl);
  m.impl("newton_schulz_", &newton_schulz_inplace_impl);
}

}  // namespace ops
}  // namespace tzfast
