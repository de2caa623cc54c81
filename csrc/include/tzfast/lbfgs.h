// The scalar half of the L-BFGS / L-SR1 direction (docs/lbfgs.md): the Gram update for a new
// curvature pair and the coefficients of the direction, from inner products only.
//
// Shared by the CPU op (csrc/ops/lbfgs.cpp, on the host) and the CUDA kernel (cuda/lbfgs.cu,
// one thread on the device, so a direction needs no host sync). Rules as in elementwise.h: no
// torch; every function TZ_HOST_DEVICE; internal linkage; scratch memory is the caller's.
//
// Notation: the history slots in use are order[0..m) (oldest first); Sx[i] = s_i . x and
// Yx[i] = y_i . x; SY and YY are [slots, slots] row-major with SY[a][b] = s_a . y_b and
// YY[a][b] = y_a . y_b by slot. The direction is gamma x + sum_i coef[2i] s_i + coef[2i+1] y_i.
#pragma once

#include <cmath>
#include <cstdint>

#ifndef TZ_HOST_DEVICE
#if defined(__CUDACC__) || defined(__HIPCC__)
#define TZ_HOST_DEVICE __host__ __device__
#else
#define TZ_HOST_DEVICE
#endif
#endif

namespace tzfast {
namespace lbfgs {
namespace {

constexpr int64_t kLbfgs = 0, kLsr1 = 1, kLsr1Compact = 2;

// Finite (not inf, not NaN) without <cmath>'s host/device overload differences.
TZ_HOST_DEVICE inline bool finite(double v) { return v - v == 0.0; }

struct Gram {
  double* SY;
  double* YY;
  int64_t slots;
  const int64_t* order;
  TZ_HOST_DEVICE double sy(int64_t i, int64_t j) const { return SY[order[i] * slots + order[j]]; }
  TZ_HOST_DEVICE double yy(int64_t i, int64_t j) const { return YY[order[i] * slots + order[j]]; }
};

// Scratch doubles the coefficient functions need for m pairs.
TZ_HOST_DEVICE inline int64_t scratch_size(int64_t m) { return 3 * m * m + 3 * m; }

// Stores the Gram entries of the pair in slot t = order[m - 1] from its inner products with
// every pair of the history: sy_t[i] = s_i . y_t, ys_t[i] = y_i . s_t, yy_t[i] = y_i . y_t.
TZ_HOST_DEVICE inline void update_gram(Gram g, int64_t m, const double* sy_t, const double* ys_t,
                                       const double* yy_t) {
  const int64_t t = g.order[m - 1];
  for (int64_t i = 0; i < m; ++i) {
    const int64_t o = g.order[i];
    g.SY[o * g.slots + t] = sy_t[i];
    g.SY[t * g.slots + o] = ys_t[i];
    g.YY[o * g.slots + t] = yy_t[i];
    g.YY[t * g.slots + o] = yy_t[i];
  }
}

// The two-loop recursion (Nocedal and Wright, Algorithm 7.4) with H_0 = (s.y / y.y) I of the
// newest pair, on inner products: q = x - sum_j alpha_j y_j, r = gamma q + sum_j c_j s_j.
// Returns gamma.
TZ_HOST_DEVICE inline double lbfgs_coefficients(const Gram& g, const double* Sx, const double* Yx,
                                                const double* sy, int64_t m, double* coef,
                                                double* scratch) {
  double* alpha = scratch;
  double* c = scratch + m;
  for (int64_t i = m - 1; i >= 0; --i) {
    double sq = Sx[i];  // s_i . q
    for (int64_t j = i + 1; j < m; ++j) sq -= alpha[j] * g.sy(i, j);
    alpha[i] = sq / sy[i];
  }
  const double gamma = sy[m - 1] / g.yy(m - 1, m - 1);
  for (int64_t i = 0; i < m; ++i) {
    double yq = Yx[i];  // y_i . q
    for (int64_t j = 0; j < m; ++j) yq -= alpha[j] * g.yy(i, j);
    double yr = gamma * yq;  // y_i . r
    for (int64_t j = 0; j < i; ++j) yr += c[j] * g.sy(j, i);
    c[i] = alpha[i] - yr / sy[i];
  }
  for (int64_t i = 0; i < m; ++i) {
    coef[2 * i] = c[i];
    coef[2 * i + 1] = -gamma * alpha[i];
  }
  return gamma;
}

// Limited-memory SR1 with H_0 = I: w_k = s_k - H_{k-1} y_k, H x = x + sum_k w_k (w_k . x) /
// (w_k . y_k), a term skipped when |w_k . y_k| < tiny; each w_k kept as coefficients P, Q on
// the s_i and y_i. (The module runs this recursion on explicit vectors, which cancels less;
// this form serves the op's method 1.)
TZ_HOST_DEVICE inline void lsr1_coefficients(const Gram& g, const double* Sx, const double* Yx,
                                             int64_t m, double tiny, double* coef, double* scratch) {
  double* P = scratch;
  double* Q = scratch + m * m;
  double* wy = scratch + 2 * m * m;
  for (int64_t i = 0; i < 2 * m * m; ++i) scratch[i] = 0.0;
  for (int64_t i = 0; i < 2 * m; ++i) coef[i] = 0.0;
  for (int64_t k = 0; k < m; ++k) {
    P[k * m + k] = 1.0;
    Q[k * m + k] = -1.0;
    for (int64_t j = 0; j < k; ++j) {
      if (fabs(wy[j]) < tiny) continue;
      double wyk = 0.0;  // w_j . y_k
      for (int64_t i = 0; i <= j; ++i) wyk += P[j * m + i] * g.sy(i, k) + Q[j * m + i] * g.yy(i, k);
      const double a = wyk / wy[j];
      for (int64_t i = 0; i <= j; ++i) {
        P[k * m + i] -= a * P[j * m + i];
        Q[k * m + i] -= a * Q[j * m + i];
      }
    }
    double w = 0.0;  // w_k . y_k
    for (int64_t i = 0; i <= k; ++i) w += P[k * m + i] * g.sy(i, k) + Q[k * m + i] * g.yy(i, k);
    wy[k] = w;
  }
  for (int64_t k = 0; k < m; ++k) {
    if (fabs(wy[k]) < tiny) continue;
    double wx = 0.0;
    for (int64_t i = 0; i <= k; ++i) wx += P[k * m + i] * Sx[i] + Q[k * m + i] * Yx[i];
    const double b = wx / wy[k];
    for (int64_t i = 0; i <= k; ++i) {
      coef[2 * i] += b * P[k * m + i];
      coef[2 * i + 1] += b * Q[k * m + i];
    }
  }
}

// The compact form of L-SR1 (Byrd, Nocedal and Schnabel 1994, H_0 = I): H x = x + W^T M^-1 W x,
// W = S - Y, M = R + R^T - D - Y Y^T (R the upper triangle of S Y^T with its diagonal D), solved
// by Gaussian elimination with partial pivoting. False when M is singular (then use the loop).
TZ_HOST_DEVICE inline bool lsr1_compact_coefficients(const Gram& g, const double* Sx, const double* Yx,
                                                     int64_t m, double* coef, double* scratch) {
  double* M = scratch;
  double* u = scratch + m * m;
  for (int64_t i = 0; i < m; ++i) {
    u[i] = Sx[i] - Yx[i];
    for (int64_t j = 0; j < m; ++j) M[i * m + j] = (i <= j ? g.sy(i, j) : g.sy(j, i)) - g.yy(i, j);
  }
  for (int64_t col = 0; col < m; ++col) {
    int64_t piv = col;
    for (int64_t r = col + 1; r < m; ++r) {
      if (fabs(M[r * m + col]) > fabs(M[piv * m + col])) piv = r;
    }
    const double pv = M[piv * m + col];
    if (!(fabs(pv) > 0.0) || !finite(pv)) return false;
    if (piv != col) {
      for (int64_t j = 0; j < m; ++j) {
        const double tmp = M[col * m + j];
        M[col * m + j] = M[piv * m + j];
        M[piv * m + j] = tmp;
      }
      const double tu = u[col];
      u[col] = u[piv];
      u[piv] = tu;
    }
    for (int64_t r = col + 1; r < m; ++r) {
      const double f = M[r * m + col] / pv;
      for (int64_t j = col; j < m; ++j) M[r * m + j] -= f * M[col * m + j];
      u[r] -= f * u[col];
    }
  }
  for (int64_t i = m - 1; i >= 0; --i) {
    double v = u[i];
    for (int64_t j = i + 1; j < m; ++j) v -= M[i * m + j] * u[j];
    u[i] = v / M[i * m + i];
  }
  for (int64_t i = 0; i < m; ++i) {
    if (!finite(u[i])) return false;
    coef[2 * i] = u[i];
    coef[2 * i + 1] = -u[i];
  }
  return true;
}

// The coefficients for `method`; returns gamma (1 for L-SR1).
TZ_HOST_DEVICE inline double coefficients(int64_t method, const Gram& g, const double* Sx,
                                          const double* Yx, const double* sy, int64_t m, double tiny,
                                          double* coef, double* scratch) {
  if (method == kLbfgs) return lbfgs_coefficients(g, Sx, Yx, sy, m, coef, scratch);
  if (method != kLsr1Compact || !lsr1_compact_coefficients(g, Sx, Yx, m, coef, scratch)) {
    lsr1_coefficients(g, Sx, Yx, m, tiny, coef, scratch);
  }
  return 1.0;
}

}  // namespace
}  // namespace lbfgs
}  // namespace tzfast
