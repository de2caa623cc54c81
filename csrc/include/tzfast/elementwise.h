// Header-only per-element math of the native elementwise ops (docs/native-ops.md).
//
// Shared by the CPU kernels (csrc/kernels/, compiled once per SIMD level) and the CUDA
// kernels (cuda/*.cu). Rules:
//   * no torch headers, only <cmath>/<cstdint>; every function is TZ_HOST_DEVICE;
//   * everything lives in an anonymous namespace, so each translation unit gets its own
//     copy (internal linkage). The CPU kernels compile this header under different ISA
//     flags; with ordinary inline linkage the linker could pick the AVX2 copy for the
//     baseline code (an ODR violation that shows up as an illegal instruction);
//   * `C` is the compute type (float for float32/float16/bfloat16, double for float64);
//     scalars arrive from the schema as double and are converted ONCE on the host, in the
//     `make_*_args` helpers, exactly like torch converts a Python scalar for a float tensor
//     (derived scalars such as 1 - beta are computed in double first, as Python would);
//   * the association order of every expression is part of the contract: the pure-torch
//     reference twins in tzfast/ops/elementwise.py evaluate the same operations in the same
//     order, and the CPU build uses -ffp-contract=off, so results are bitwise equal to
//     the twins wherever only + - * / sqrt are involved.
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

#if defined(__CUDACC__) || defined(__HIPCC__)
#define TZ_INLINE __forceinline__
#else
#define TZ_INLINE inline __attribute__((always_inline))
#endif

namespace tzfast {
namespace ew {
namespace {

// ---------------------------------------------------------------------------------------
// Small scalar helpers.
// ---------------------------------------------------------------------------------------

template <typename C>
TZ_HOST_DEVICE TZ_INLINE C abs_(C x) {
  return std::fabs(x);  // |-0| = +0, NaN stays NaN
}

// sign(x): -1, 0 or +1; 0 for +-0; NaN stays NaN.
template <typename C>
TZ_HOST_DEVICE TZ_INLINE C sign_(C x) {
  return x > C(0) ? C(1) : (x < C(0) ? C(-1) : (x == C(0) ? C(0) : x));
}

// NaN-propagating maximum (torch.maximum semantics).
template <typename C>
TZ_HOST_DEVICE TZ_INLINE C max_nan(C a, C b) {
  return (a > b || a != a) ? a : b;
}

// min(max(x, lo), hi) with NaN in x propagated (torch.clamp semantics for finite bounds).
template <typename C>
TZ_HOST_DEVICE TZ_INLINE C clamp_(C x, C lo, C hi) {
  C t = x < lo ? lo : x;
  return t > hi ? hi : t;
}

template <typename C>
TZ_HOST_DEVICE TZ_INLINE C sqrt_(C x) {
  return std::sqrt(x);
}

template <typename C>
TZ_HOST_DEVICE TZ_INLINE C pow_(C x, C p) {
  return std::pow(x, p);
}

// x^e for an integer exponent by repeated squaring (x*x, x*(x*x), ...); negative
// exponents give 1 / x^|e|. Exact operation order matches torch.pow for |e| <= 3.
template <typename C>
TZ_HOST_DEVICE TZ_INLINE C ipow(C x, int64_t e) {
  uint64_t n = e < 0 ? uint64_t(0) - uint64_t(e) : uint64_t(e);
  C r = C(1);
  bool first = true;
  C base = x;
  while (n) {
    if (n & 1u) {
      r = first ? base : r * base;
      first = false;
    }
    n >>= 1u;
    if (n) base = base * base;
  }
  return e < 0 ? C(1) / r : r;
}

// ---------------------------------------------------------------------------------------
// lerp: torch's two-sided formula. The weight and 1 - weight are prepared on the host
// (in double, then converted), and which side is used is decided there too.
//   w < 0.5 ? a + w*(b - a) : b - (b - a)*(1 - w)
// ---------------------------------------------------------------------------------------

template <typename C>
struct LerpWeight {
  C w;     // weight
  C omw;   // 1 - weight
  bool small;  // weight < 0.5
};

template <typename C>
TZ_HOST_DEVICE inline LerpWeight<C> make_lerp_weight(double w) {
  LerpWeight<C> r;
  r.w = C(w);
  r.omw = C(1.0 - w);
  r.small = w < 0.5;
  return r;
}

template <typename C>
TZ_HOST_DEVICE TZ_INLINE C lerp(C a, C b, const LerpWeight<C>& w) {
  C d = b - a;
  return w.small ? a + w.w * d : b - d * w.omw;
}

// ---------------------------------------------------------------------------------------
// powabs and root, specialised on a power mode chosen on the host.
//   powabs(x, p): p == 2 -> x*x; p == 1 -> |x|; p even integer -> x^p; else |x^p|
//   root(d, p):   p == 2 -> sqrt(d); p == 1 -> |d|; else d^(1/p)
// ---------------------------------------------------------------------------------------

enum PowMode : int { POW2 = 0, POW1 = 1, POWG = 2 };

TZ_HOST_DEVICE inline int pow_mode(double p) {
  return p == 2.0 ? POW2 : (p == 1.0 ? POW1 : POWG);
}

TZ_HOST_DEVICE inline bool is_even_integer(double p) {
  return std::floor(p) == p && std::fmod(p, 2.0) == 0.0;
}

template <typename C>
struct PowArgs {
  C p;       // the power
  C inv_p;   // 1 / p (computed in double)
  bool even;  // p is an even integer
};

template <typename C>
TZ_HOST_DEVICE inline PowArgs<C> make_pow_args(double p) {
  PowArgs<C> r;
  r.p = C(p);
  r.inv_p = C(1.0 / p);
  r.even = is_even_integer(p);
  return r;
}

template <int PM, typename C>
TZ_HOST_DEVICE TZ_INLINE C powabs(C x, const PowArgs<C>& a) {
  if (PM == POW2) return x * x;
  if (PM == POW1) return abs_(x);
  C y = pow_(x, a.p);
  return a.even ? y : abs_(y);
}

template <int PM, typename C>
TZ_HOST_DEVICE TZ_INLINE C root(C d, const PowArgs<C>& a) {
  if (PM == POW2) return sqrt_(d);
  if (PM == POW1) return abs_(d);
  return pow_(d, a.inv_p);
}

// Second-moment update shared by adam_ and ema_sq_:
//   pow == 2: v = beta*v + ((1 - beta)*x)*x      (the order of torch's addcmul)
//   else:     v = lerp(v, powabs(x, pow), 1 - beta)
template <typename C>
struct SecondMomentArgs {
  C beta;
  C omb;  // 1 - beta
  LerpWeight<C> w;  // lerp weight 1 - beta
  PowArgs<C> pw;
};

template <typename C>
TZ_HOST_DEVICE inline SecondMomentArgs<C> make_second_moment_args(double beta, double pow) {
  SecondMomentArgs<C> r;
  r.beta = C(beta);
  r.omb = C(1.0 - beta);
  r.w = make_lerp_weight<C>(1.0 - beta);
  r.pw = make_pow_args<C>(pow);
  return r;
}

template <int PM, typename C>
TZ_HOST_DEVICE TZ_INLINE C second_moment(C v, C x, const SecondMomentArgs<C>& a) {
  if (PM == POW2) return a.beta * v + (a.omb * x) * x;
  return lerp(v, powabs<PM>(x, a.pw), a.w);
}

// ---------------------------------------------------------------------------------------
// Epilogue, identical for every op:
//   accumulate ? out + out_scale*u : out_scale*u
// ---------------------------------------------------------------------------------------

template <bool ACC, typename C>
TZ_HOST_DEVICE TZ_INLINE C epilogue(C out_old, C u, C out_scale) {
  return ACC ? out_old + out_scale * u : out_scale * u;
}

// ---------------------------------------------------------------------------------------
// adam_
//   m = lerp(m, x, 1 - beta1)
//   v = second_moment(v, x; beta2, pow)
//   d = amsgrad ? (vmax = max(vmax, v)) : v
//   u = (m * step_size) / (root(d, pow) + eps)
// ---------------------------------------------------------------------------------------

template <typename C>
struct AdamArgs {
  LerpWeight<C> w1;  // 1 - beta1
  SecondMomentArgs<C> sm;
  C eps;
  C step_size;
  C out_scale;
};

template <typename C>
TZ_HOST_DEVICE inline AdamArgs<C> make_adam_args(double beta1, double beta2, double eps,
                                                double step_size, double pow,
                                                double out_scale) {
  AdamArgs<C> r;
  r.w1 = make_lerp_weight<C>(1.0 - beta1);
  r.sm = make_second_moment_args<C>(beta2, pow);
  r.eps = C(eps);
  r.step_size = C(step_size);
  r.out_scale = C(out_scale);
  return r;
}

// Updates m, v (and vmax when AMS) in place and returns u.
template <int PM, bool AMS, typename C>
TZ_HOST_DEVICE TZ_INLINE C adam_rule(C x, C& m, C& v, C& vmax, const AdamArgs<C>& a) {
  m = lerp(m, x, a.w1);
  v = second_moment<PM>(v, x, a.sm);
  C d = v;
  if (AMS) {
    vmax = max_nan(vmax, v);
    d = vmax;
  }
  return (m * a.step_size) / (root<PM>(d, a.sm.pw) + a.eps);
}

// ---------------------------------------------------------------------------------------
// ema_
//   xd = dampening != 0 ? x*(1 - dampening) : x
//   m  = lerp ? lerp(m, xd, 1 - momentum) : m*momentum + xd
//   u  = m
// ---------------------------------------------------------------------------------------

template <typename C>
struct EmaArgs {
  C momentum;
  C omd;  // 1 - dampening
  LerpWeight<C> w;  // 1 - momentum
  C out_scale;
};

template <typename C>
TZ_HOST_DEVICE inline EmaArgs<C> make_ema_args(double momentum, double dampening,
                                              double out_scale) {
  EmaArgs<C> r;
  r.momentum = C(momentum);
  r.omd = C(1.0 - dampening);
  r.w = make_lerp_weight<C>(1.0 - momentum);
  r.out_scale = C(out_scale);
  return r;
}

template <bool LERP, bool DAMP, typename C>
TZ_HOST_DEVICE TZ_INLINE C ema_rule(C x, C& m, const EmaArgs<C>& a) {
  C xd = DAMP ? x * a.omd : x;
  m = LERP ? lerp(m, xd, a.w) : m * a.momentum + xd;
  return m;
}

// ---------------------------------------------------------------------------------------
// nag_
//   vel = lerp ? lerp(vel, x, 1 - momentum) : (vel + x)*momentum
//   u   = x + vel*(1 - dampening)
// ---------------------------------------------------------------------------------------

template <typename C>
using NagArgs = EmaArgs<C>;

template <typename C>
TZ_HOST_DEVICE inline NagArgs<C> make_nag_args(double momentum, double dampening,
                                              double out_scale) {
  return make_ema_args<C>(momentum, dampening, out_scale);
}

template <bool LERP, typename C>
TZ_HOST_DEVICE TZ_INLINE C nag_rule(C x, C& vel, const NagArgs<C>& a) {
  vel = LERP ? lerp(vel, x, a.w) : (vel + x) * a.momentum;
  return x + vel * a.omd;
}

// ---------------------------------------------------------------------------------------
// ema_sq_
//   v = second_moment(v, x; beta, pow)
//   d = amsgrad ? (vmax = max(vmax, v)) : v
//   u = take_root ? root(d, pow) : d
// ---------------------------------------------------------------------------------------

template <typename C>
struct EmaSqArgs {
  SecondMomentArgs<C> sm;
  C out_scale;
};

template <typename C>
TZ_HOST_DEVICE inline EmaSqArgs<C> make_ema_sq_args(double beta, double pow, double out_scale) {
  EmaSqArgs<C> r;
  r.sm = make_second_moment_args<C>(beta, pow);
  r.out_scale = C(out_scale);
  return r;
}

template <int PM, bool AMS, bool ROOT, typename C>
TZ_HOST_DEVICE TZ_INLINE C ema_sq_rule(C x, C& v, C& vmax, const EmaSqArgs<C>& a) {
  v = second_moment<PM>(v, x, a.sm);
  C d = v;
  if (AMS) {
    vmax = max_nan(vmax, v);
    d = vmax;
  }
  return ROOT ? root<PM>(d, a.sm.pw) : d;
}

// ---------------------------------------------------------------------------------------
// unary_
//   0 affine: a*x + b   1 abs: |x|   2 sign: sign(x)   3 sqrt: sqrt(x)
//   4 clamp: min(max(x, a), b)
// ---------------------------------------------------------------------------------------

enum UnaryOp : int { UNARY_AFFINE = 0, UNARY_ABS = 1, UNARY_SIGN = 2, UNARY_SQRT = 3,
                     UNARY_CLAMP = 4, UNARY_COUNT = 5 };

template <typename C>
struct UnaryArgs {
  C a;
  C b;
  C out_scale;
};

template <typename C>
TZ_HOST_DEVICE inline UnaryArgs<C> make_unary_args(double a, double b, double out_scale) {
  UnaryArgs<C> r;
  r.a = C(a);
  r.b = C(b);
  r.out_scale = C(out_scale);
  return r;
}

template <int OP, typename C>
TZ_HOST_DEVICE TZ_INLINE C unary_rule(C x, const UnaryArgs<C>& a) {
  if (OP == UNARY_AFFINE) return a.a * x + a.b;
  if (OP == UNARY_ABS) return abs_(x);
  if (OP == UNARY_SIGN) return sign_(x);
  if (OP == UNARY_SQRT) return sqrt_(x);
  return clamp_(x, a.a, a.b);
}

// ---------------------------------------------------------------------------------------
// weight_decay_
//   ord == 1: u = x + wd*sign(p)
//   ord == 2: u = x + wd*p
//   else:     u = x + wd*p^(ord - 1)      (torchzero 0.4.4 behaviour)
// ---------------------------------------------------------------------------------------

enum DecayMode : int { DECAY_L1 = 1, DECAY_L2 = 2, DECAY_POW = 0 };

TZ_HOST_DEVICE inline int decay_mode(int64_t ord) {
  return ord == 1 ? DECAY_L1 : (ord == 2 ? DECAY_L2 : DECAY_POW);
}

template <typename C>
struct WeightDecayArgs {
  C wd;
  int64_t e;  // ord - 1
  C out_scale;
};

template <typename C>
TZ_HOST_DEVICE inline WeightDecayArgs<C> make_weight_decay_args(double weight_decay,
                                                               int64_t ord, double out_scale) {
  WeightDecayArgs<C> r;
  r.wd = C(weight_decay);
  r.e = ord - 1;
  r.out_scale = C(out_scale);
  return r;
}

template <int DM, typename C>
TZ_HOST_DEVICE TZ_INLINE C weight_decay_rule(C x, C p, const WeightDecayArgs<C>& a) {
  if (DM == DECAY_L1) return x + a.wd * sign_(p);
  if (DM == DECAY_L2) return x + a.wd * p;
  return x + a.wd * ipow(p, a.e);
}

}  // namespace
}  // namespace ew
}  // namespace tzfast
