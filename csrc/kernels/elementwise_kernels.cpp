// CPU loops of the native elementwise ops. This file is compiled once per SIMD level, with
// -DTZ_ISA=<level> and that level's -m flags (see CMakeLists.txt); csrc/kernels/
// simd_dispatch.cpp picks one at run time.
//
// ODR rule: everything here has internal linkage (anonymous namespace) except the single
// entry point tzfast::cpu::<level>::table(). No ATen, no other library code with inline
// external linkage beyond what <cmath>/<cstring> inline away; the ctest `kernels_odr`
// checks that the compiled objects define no weak (COMDAT) symbols.
//
// Each loop is a plain indexed loop over raw pointers with every mode flag a template
// parameter, so GCC vectorises it (-fno-math-errno lets sqrt vectorise; -ffp-contract=off
// keeps every element's result independent of SIMD width). `out` may alias `x` or `p`
// exactly; GCC's run-time alias check accepts equal addresses and falls back to the scalar
// loop only for partial overlap.

#include <cstdint>
#include <type_traits>

#include "cpu_kernels.h"
#include "half_bits.h"
#include "tzfast/elementwise.h"

#ifndef TZ_ISA
#error "compile with -DTZ_ISA=<simd level>"
#endif

#define TZ_STR2(x) #x
#define TZ_STR(x) TZ_STR2(x)

namespace tzfast {
namespace cpu {
namespace TZ_ISA {
namespace {

namespace ew = ::tzfast::ew;

template <typename T>
struct Tag {
  using type = T;
};

template <typename F>
void with_dtype(DType d, F&& f) {
  switch (d) {
    case DType::Float32: f(Tag<float>{}); break;
    case DType::Float64: f(Tag<double>{}); break;
    case DType::Float16: f(Tag<f16>{}); break;
    case DType::BFloat16: f(Tag<bf16>{}); break;
  }
}

template <typename F>
void with_bool(bool b, F&& f) {
  if (b) {
    f(std::true_type{});
  } else {
    f(std::false_type{});
  }
}

template <typename F>
void with_pow_mode(double pow, F&& f) {
  switch (ew::pow_mode(pow)) {
    case ew::POW2: f(std::integral_constant<int, ew::POW2>{}); break;
    case ew::POW1: f(std::integral_constant<int, ew::POW1>{}); break;
    default: f(std::integral_constant<int, ew::POWG>{}); break;
  }
}

template <typename T>
using C_t = typename Compute<T>::type;

// ---------------------------------------------------------------------------- adam_
template <typename T, int PM, bool AMS, bool ACC>
void adam_loop(const Piece* pcs, int64_t count, const ew::AdamArgs<C_t<T>>& a) {
  using C = C_t<T>;
  for (int64_t k = 0; k < count; ++k) {
    const T* x = static_cast<const T*>(pcs[k].x);
    T* out = static_cast<T*>(pcs[k].out);
    T* m = static_cast<T*>(pcs[k].s0);
    T* v = static_cast<T*>(pcs[k].s1);
    T* vmax = static_cast<T*>(pcs[k].s2);
    const int64_t n = pcs[k].n;
    for (int64_t i = 0; i < n; ++i) {
      C mi = load(m[i]);
      C vi = load(v[i]);
      C vmi = AMS ? load(vmax[i]) : C(0);
      C u = ew::adam_rule<PM, AMS>(load(x[i]), mi, vi, vmi, a);
      m[i] = store<T>(mi);
      v[i] = store<T>(vi);
      if (AMS) vmax[i] = store<T>(vmi);
      out[i] = store<T>(ew::epilogue<ACC>(ACC ? load(out[i]) : C(0), u, a.out_scale));
    }
  }
}

void adam(const AdamCall& c, const Piece* pcs, int64_t count) {
  with_dtype(c.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const auto a =
        ew::make_adam_args<C_t<T>>(c.beta1, c.beta2, c.eps, c.step_size, c.pow, c.out_scale);
    with_pow_mode(c.pow, [&](auto pm) {
      with_bool(c.amsgrad, [&](auto ams) {
        with_bool(c.accumulate, [&](auto acc) {
          adam_loop<T, decltype(pm)::value, decltype(ams)::value, decltype(acc)::value>(pcs, count,
                                                                                       a);
        });
      });
    });
  });
}

// ---------------------------------------------------------------------------- ema_
template <typename T, bool LERP, bool DAMP, bool ACC>
void ema_loop(const Piece* pcs, int64_t count, const ew::EmaArgs<C_t<T>>& a) {
  using C = C_t<T>;
  for (int64_t k = 0; k < count; ++k) {
    const T* x = static_cast<const T*>(pcs[k].x);
    T* out = static_cast<T*>(pcs[k].out);
    T* m = static_cast<T*>(pcs[k].s0);
    const int64_t n = pcs[k].n;
    for (int64_t i = 0; i < n; ++i) {
      C mi = load(m[i]);
      C u = ew::ema_rule<LERP, DAMP>(load(x[i]), mi, a);
      m[i] = store<T>(mi);
      out[i] = store<T>(ew::epilogue<ACC>(ACC ? load(out[i]) : C(0), u, a.out_scale));
    }
  }
}

void ema(const MomentumCall& c, const Piece* pcs, int64_t count) {
  with_dtype(c.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const auto a = ew::make_ema_args<C_t<T>>(c.momentum, c.dampening, c.out_scale);
    with_bool(c.lerp, [&](auto lerp) {
      with_bool(c.dampening != 0.0, [&](auto damp) {
        with_bool(c.accumulate, [&](auto acc) {
          ema_loop<T, decltype(lerp)::value, decltype(damp)::value, decltype(acc)::value>(
              pcs, count, a);
        });
      });
    });
  });
}

// ---------------------------------------------------------------------------- nag_
template <typename T, bool LERP, bool ACC>
void nag_loop(const Piece* pcs, int64_t count, const ew::NagArgs<C_t<T>>& a) {
  using C = C_t<T>;
  for (int64_t k = 0; k < count; ++k) {
    const T* x = static_cast<const T*>(pcs[k].x);
    T* out = static_cast<T*>(pcs[k].out);
    T* vel = static_cast<T*>(pcs[k].s0);
    const int64_t n = pcs[k].n;
    for (int64_t i = 0; i < n; ++i) {
      C vi = load(vel[i]);
      C u = ew::nag_rule<LERP>(load(x[i]), vi, a);
      vel[i] = store<T>(vi);
      out[i] = store<T>(ew::epilogue<ACC>(ACC ? load(out[i]) : C(0), u, a.out_scale));
    }
  }
}

void nag(const MomentumCall& c, const Piece* pcs, int64_t count) {
  with_dtype(c.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const auto a = ew::make_nag_args<C_t<T>>(c.momentum, c.dampening, c.out_scale);
    with_bool(c.lerp, [&](auto lerp) {
      with_bool(c.accumulate, [&](auto acc) {
        nag_loop<T, decltype(lerp)::value, decltype(acc)::value>(pcs, count, a);
      });
    });
  });
}

// ---------------------------------------------------------------------------- ema_sq_
template <typename T, int PM, bool AMS, bool ROOT, bool ACC>
void ema_sq_loop(const Piece* pcs, int64_t count, const ew::EmaSqArgs<C_t<T>>& a) {
  using C = C_t<T>;
  for (int64_t k = 0; k < count; ++k) {
    const T* x = static_cast<const T*>(pcs[k].x);
    T* out = static_cast<T*>(pcs[k].out);
    T* v = static_cast<T*>(pcs[k].s0);
    T* vmax = static_cast<T*>(pcs[k].s1);
    const int64_t n = pcs[k].n;
    for (int64_t i = 0; i < n; ++i) {
      C vi = load(v[i]);
      C vmi = AMS ? load(vmax[i]) : C(0);
      C u = ew::ema_sq_rule<PM, AMS, ROOT>(load(x[i]), vi, vmi, a);
      v[i] = store<T>(vi);
      if (AMS) vmax[i] = store<T>(vmi);
      out[i] = store<T>(ew::epilogue<ACC>(ACC ? load(out[i]) : C(0), u, a.out_scale));
    }
  }
}

void ema_sq(const EmaSqCall& c, const Piece* pcs, int64_t count) {
  with_dtype(c.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const auto a = ew::make_ema_sq_args<C_t<T>>(c.beta, c.pow, c.out_scale);
    with_pow_mode(c.pow, [&](auto pm) {
      with_bool(c.amsgrad, [&](auto ams) {
        with_bool(c.take_root, [&](auto root) {
          with_bool(c.accumulate, [&](auto acc) {
            ema_sq_loop<T, decltype(pm)::value, decltype(ams)::value, decltype(root)::value,
                        decltype(acc)::value>(pcs, count, a);
          });
        });
      });
    });
  });
}

// ---------------------------------------------------------------------------- unary_
template <typename T, int OP, bool ACC>
void unary_loop(const Piece* pcs, int64_t count, const ew::UnaryArgs<C_t<T>>& a) {
  using C = C_t<T>;
  for (int64_t k = 0; k < count; ++k) {
    const T* x = static_cast<const T*>(pcs[k].x);
    T* out = static_cast<T*>(pcs[k].out);
    const int64_t n = pcs[k].n;
    for (int64_t i = 0; i < n; ++i) {
      C u = ew::unary_rule<OP>(load(x[i]), a);
      out[i] = store<T>(ew::epilogue<ACC>(ACC ? load(out[i]) : C(0), u, a.out_scale));
    }
  }
}

template <typename F>
void with_unary_op(int64_t op, F&& f) {
  switch (op) {
    case ew::UNARY_AFFINE: f(std::integral_constant<int, ew::UNARY_AFFINE>{}); break;
    case ew::UNARY_ABS: f(std::integral_constant<int, ew::UNARY_ABS>{}); break;
    case ew::UNARY_SIGN: f(std::integral_constant<int, ew::UNARY_SIGN>{}); break;
    case ew::UNARY_SQRT: f(std::integral_constant<int, ew::UNARY_SQRT>{}); break;
    case ew::UNARY_CLAMP: f(std::integral_constant<int, ew::UNARY_CLAMP>{}); break;
    default: break;  // validated by the caller
  }
}

void unary(const UnaryCall& c, const Piece* pcs, int64_t count) {
  with_dtype(c.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const auto a = ew::make_unary_args<C_t<T>>(c.a, c.b, c.out_scale);
    with_unary_op(c.op, [&](auto op) {
      with_bool(c.accumulate, [&](auto acc) {
        unary_loop<T, decltype(op)::value, decltype(acc)::value>(pcs, count, a);
      });
    });
  });
}

// ---------------------------------------------------------------------------- weight_decay_
template <typename T, int DM, bool ACC>
void weight_decay_loop(const Piece* pcs, int64_t count, const ew::WeightDecayArgs<C_t<T>>& a) {
  using C = C_t<T>;
  for (int64_t k = 0; k < count; ++k) {
    const T* x = static_cast<const T*>(pcs[k].x);
    const T* p = static_cast<const T*>(pcs[k].p);
    T* out = static_cast<T*>(pcs[k].out);
    const int64_t n = pcs[k].n;
    for (int64_t i = 0; i < n; ++i) {
      C u = ew::weight_decay_rule<DM>(load(x[i]), load(p[i]), a);
      out[i] = store<T>(ew::epilogue<ACC>(ACC ? load(out[i]) : C(0), u, a.out_scale));
    }
  }
}

void weight_decay(const WeightDecayCall& c, const Piece* pcs, int64_t count) {
  with_dtype(c.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const auto a = ew::make_weight_decay_args<C_t<T>>(c.weight_decay, c.ord, c.out_scale);
    auto run = [&](auto dm) {
      with_bool(c.accumulate, [&](auto acc) {
        weight_decay_loop<T, decltype(dm)::value, decltype(acc)::value>(pcs, count, a);
      });
    };
    switch (ew::decay_mode(c.ord)) {
      case ew::DECAY_L1: run(std::integral_constant<int, ew::DECAY_L1>{}); break;
      case ew::DECAY_L2: run(std::integral_constant<int, ew::DECAY_L2>{}); break;
      default: run(std::integral_constant<int, ew::DECAY_POW>{}); break;
    }
  });
}

const KernelTable kTable = {TZ_STR(TZ_ISA), &adam, &ema, &nag, &ema_sq, &unary, &weight_decay};

}  // namespace

const KernelTable& table() { return kTable; }

}  // namespace TZ_ISA
}  // namespace cpu
}  // namespace tzfast
