// CUDA kernels of the native elementwise ops (docs/native-ops.md).
//
// Torch-free: raw pointers, sizes and a cudaStream_t (see launchers.h). The per-element math
// is csrc/include/tzfast/elementwise.h, the same code the CPU kernels run; this file is only
// the launch shape:
//
//   * one launch per call: the grid walks the global element range [0, total) of the call in
//     tiles of kTile elements (grid-stride over tiles); each block finds the first segment
//     overlapping its tile by binary search in the device-side segment table and then walks
//     the (usually one) segments that cover the tile;
//   * within a segment, consecutive threads touch consecutive elements (coalesced); when the
//     segment's pointers are 16-byte aligned and whole vectors fit, threads move kVec
//     elements at a time with one 16-byte load/store per operand (the tile boundaries are
//     multiples of kVec, so only a segment's own misaligned head/tail goes element-wise);
//   * templates on the element type T (float, double, __half, __nv_bfloat16; compute type C
//     is float for the half types, double for double) and on the op's mode flags, so the
//     per-element code has no runtime branches on settings.
//
// The flat state buffers (exp_avg, ...) are indexed by the global element index; the
// per-tensor operands (x, p, out) by the index within their segment.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>
#include <type_traits>

#include "cuda/launchers.h"
#include "tzfast/elementwise.h"

namespace tzfast {
namespace cuda {
namespace {

namespace ew = ::tzfast::ew;

constexpr int kThreads = 256;         // threads per block
constexpr int kBlocksPerSm = 8;       // 2048 resident threads per SM on sm_80 / sm_90
constexpr int64_t kTile = 4096;       // elements per tile (16 per thread)
constexpr int kMaxDevices = 64;

// ---------------------------------------------------------------------------------------
// Element type <-> compute type.
// ---------------------------------------------------------------------------------------

#include "cuda/compute_type.cuh"  // Compute, compute_t, to_c, from_c
#include "cuda/launch_common.cuh"  // max_blocks, IntC, BoolC, with_dtype, with_bool

// ---------------------------------------------------------------------------------------
// Vectors of N elements moved with one 16-byte access.
// ---------------------------------------------------------------------------------------

template <typename T>
struct VecWidth {
  static constexpr int value = 16 / static_cast<int>(sizeof(T));
};

template <typename T, int N>
struct alignas(sizeof(T) * N) Vec {  // N == 1: a plain element; N == kVec: 16 bytes
  T v[N];
};

template <typename T, int N>
__device__ __forceinline__ Vec<T, N> load_vec(const T* base, int64_t i) {
  return *reinterpret_cast<const Vec<T, N>*>(base + i);
}

template <typename T, int N>
__device__ __forceinline__ void store_vec(T* base, int64_t i, const Vec<T, N>& v) {
  *reinterpret_cast<Vec<T, N>*>(base + i) = v;
}

__device__ __forceinline__ bool aligned16(const void* p) {
  return (reinterpret_cast<uintptr_t>(p) & 15u) == 0;
}

// ---------------------------------------------------------------------------------------
// The ops. Each functor holds its flat state pointers and prepared arguments and exposes
//   apply<N>(seg, i, g): process elements [i, i + N) of segment `seg` (global [g, g + N)),
//     where N == 1 is the scalar path and N == kVec the vector path (all operands aligned);
//   aligned(seg, g): whether the vector path may be used at (i, g) = (0, g) for this
//     segment, i.e. every pointer the op touches is 16-byte aligned at that element.
// ---------------------------------------------------------------------------------------

// Reads the input(s), runs `rule` per element, applies the epilogue and writes `out`. The
// state is loaded/stored by `rule` itself through the functor.
template <typename T, bool ACC, int N, typename Rule>
__device__ __forceinline__ void elementwise_io(const Segment& seg, int64_t i, compute_t<T> scale,
                                               Rule&& rule) {
  using C = compute_t<T>;
  const T* x = static_cast<const T*>(seg.x);
  T* out = static_cast<T*>(seg.out);
  Vec<T, N> xv = load_vec<T, N>(x, i);
  Vec<T, N> ov;
  if (ACC) ov = load_vec<T, N>(out, i);
#pragma unroll
  for (int k = 0; k < N; ++k) {
    C u = rule(k, to_c(xv.v[k]));
    C old = ACC ? to_c(ov.v[k]) : C(0);
    ov.v[k] = from_c<T>(ew::epilogue<ACC>(old, u, scale));
  }
  store_vec<T, N>(out, i, ov);
}

template <typename T, int PM, bool AMS, bool ACC>
struct AdamOp {
  using C = compute_t<T>;
  T* m;
  T* v;
  T* vmax;
  ew::AdamArgs<C> args;

  __device__ __forceinline__ bool aligned(const Segment& seg, int64_t g) const {
    return aligned16(seg.x) && aligned16(seg.out) && aligned16(m + g) && aligned16(v + g) &&
           (!AMS || aligned16(vmax + g));
  }

  template <int N>
  __device__ __forceinline__ void apply(const Segment& seg, int64_t i, int64_t g) const {
    Vec<T, N> mv = load_vec<T, N>(m, g);
    Vec<T, N> vv = load_vec<T, N>(v, g);
    Vec<T, N> xv;
    if (AMS) xv = load_vec<T, N>(vmax, g);
    elementwise_io<T, ACC, N>(seg, i, args.out_scale, [&](int k, C x) {
      C mk = to_c(mv.v[k]);
      C vk = to_c(vv.v[k]);
      C xk = AMS ? to_c(xv.v[k]) : C(0);
      C u = ew::adam_rule<PM, AMS>(x, mk, vk, xk, args);
      mv.v[k] = from_c<T>(mk);
      vv.v[k] = from_c<T>(vk);
      if (AMS) xv.v[k] = from_c<T>(xk);
      return u;
    });
    store_vec<T, N>(m, g, mv);
    store_vec<T, N>(v, g, vv);
    if (AMS) store_vec<T, N>(vmax, g, xv);
  }
};

template <typename T, bool LERP, bool DAMP, bool ACC>
struct EmaOp {
  using C = compute_t<T>;
  T* m;
  ew::EmaArgs<C> args;

  __device__ __forceinline__ bool aligned(const Segment& seg, int64_t g) const {
    return aligned16(seg.x) && aligned16(seg.out) && aligned16(m + g);
  }

  template <int N>
  __device__ __forceinline__ void apply(const Segment& seg, int64_t i, int64_t g) const {
    Vec<T, N> mv = load_vec<T, N>(m, g);
    elementwise_io<T, ACC, N>(seg, i, args.out_scale, [&](int k, C x) {
      C mk = to_c(mv.v[k]);
      C u = ew::ema_rule<LERP, DAMP>(x, mk, args);
      mv.v[k] = from_c<T>(mk);
      return u;
    });
    store_vec<T, N>(m, g, mv);
  }
};

template <typename T, bool LERP, bool ACC>
struct NagOp {
  using C = compute_t<T>;
  T* vel;
  ew::NagArgs<C> args;

  __device__ __forceinline__ bool aligned(const Segment& seg, int64_t g) const {
    return aligned16(seg.x) && aligned16(seg.out) && aligned16(vel + g);
  }

  template <int N>
  __device__ __forceinline__ void apply(const Segment& seg, int64_t i, int64_t g) const {
    Vec<T, N> vv = load_vec<T, N>(vel, g);
    elementwise_io<T, ACC, N>(seg, i, args.out_scale, [&](int k, C x) {
      C vk = to_c(vv.v[k]);
      C u = ew::nag_rule<LERP>(x, vk, args);
      vv.v[k] = from_c<T>(vk);
      return u;
    });
    store_vec<T, N>(vel, g, vv);
  }
};

template <typename T, int PM, bool AMS, bool ROOT, bool ACC>
struct EmaSqOp {
  using C = compute_t<T>;
  T* v;
  T* vmax;
  ew::EmaSqArgs<C> args;

  __device__ __forceinline__ bool aligned(const Segment& seg, int64_t g) const {
    return aligned16(seg.x) && aligned16(seg.out) && aligned16(v + g) &&
           (!AMS || aligned16(vmax + g));
  }

  template <int N>
  __device__ __forceinline__ void apply(const Segment& seg, int64_t i, int64_t g) const {
    Vec<T, N> vv = load_vec<T, N>(v, g);
    Vec<T, N> xv;
    if (AMS) xv = load_vec<T, N>(vmax, g);
    elementwise_io<T, ACC, N>(seg, i, args.out_scale, [&](int k, C x) {
      C vk = to_c(vv.v[k]);
      C xk = AMS ? to_c(xv.v[k]) : C(0);
      C u = ew::ema_sq_rule<PM, AMS, ROOT>(x, vk, xk, args);
      vv.v[k] = from_c<T>(vk);
      if (AMS) xv.v[k] = from_c<T>(xk);
      return u;
    });
    store_vec<T, N>(v, g, vv);
    if (AMS) store_vec<T, N>(vmax, g, xv);
  }
};

template <typename T, int OP, bool ACC>
struct UnaryOpFn {
  using C = compute_t<T>;
  ew::UnaryArgs<C> args;

  __device__ __forceinline__ bool aligned(const Segment& seg, int64_t) const {
    return aligned16(seg.x) && aligned16(seg.out);
  }

  template <int N>
  __device__ __forceinline__ void apply(const Segment& seg, int64_t i, int64_t) const {
    elementwise_io<T, ACC, N>(seg, i, args.out_scale,
                              [&](int, C x) { return ew::unary_rule<OP>(x, args); });
  }
};

template <typename T, int DM, bool ACC>
struct WeightDecayOp {
  using C = compute_t<T>;
  ew::WeightDecayArgs<C> args;

  __device__ __forceinline__ bool aligned(const Segment& seg, int64_t) const {
    return aligned16(seg.x) && aligned16(seg.p) && aligned16(seg.out);
  }

  template <int N>
  __device__ __forceinline__ void apply(const Segment& seg, int64_t i, int64_t) const {
    // p is read before out is written, so out may be the parameters themselves.
    Vec<T, N> pv = load_vec<T, N>(static_cast<const T*>(seg.p), i);
    elementwise_io<T, ACC, N>(seg, i, args.out_scale, [&](int k, C x) {
      return ew::weight_decay_rule<DM>(x, to_c(pv.v[k]), args);
    });
  }
};

// ---------------------------------------------------------------------------------------
// Multi-tensor apply.
// ---------------------------------------------------------------------------------------

// Index of the last segment whose offset is <= g (segments sorted by offset, count >= 1).
__device__ __forceinline__ int64_t find_segment(const Segment* segs, int64_t count, int64_t g) {
  int64_t lo = 0;
  int64_t hi = count - 1;
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo + 1) / 2;
    if (segs[mid].offset <= g) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  return lo;
}

// Elements [begin, end) of one segment, global indices; the block's threads share the work.
template <typename T, typename Op>
__device__ __forceinline__ void run_range(const Op& op, const Segment& seg, int64_t begin,
                                          int64_t end) {
  constexpr int N = VecWidth<T>::value;
  const int64_t off = seg.offset;
  int64_t g = begin;
  // The vector path needs every operand 16-byte aligned: the segment's own pointers at
  // element 0 and the flat state at global index `off` (op.aligned checks both). Then every
  // element whose index within the segment is a multiple of N is aligned everywhere, so the
  // range is split into a scalar head up to such an index, whole vectors, and a scalar tail.
  int64_t head = (N - ((g - off) % N)) % N;  // elements until (g - off) is a multiple of N
  if (head > end - g) head = end - g;
  const int64_t vec_begin = g + head;
  const int64_t n_vec = (end - vec_begin) / N;
  const bool vec_ok = n_vec > 0 && op.aligned(seg, off);
  if (vec_ok) {
    for (int64_t k = g + threadIdx.x; k < vec_begin; k += blockDim.x) {
      op.template apply<1>(seg, k - off, k);
    }
    for (int64_t j = threadIdx.x; j < n_vec; j += blockDim.x) {
      const int64_t k = vec_begin + j * N;
      op.template apply<N>(seg, k - off, k);
    }
    for (int64_t k = vec_begin + n_vec * N + threadIdx.x; k < end; k += blockDim.x) {
      op.template apply<1>(seg, k - off, k);
    }
  } else {
    for (int64_t k = g + threadIdx.x; k < end; k += blockDim.x) {
      op.template apply<1>(seg, k - off, k);
    }
  }
}

template <typename T, typename Op>
__global__ void __launch_bounds__(kThreads)
    multi_tensor_apply_kernel(const Segment* segs, int64_t count, int64_t total, Op op) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kTile;
  for (int64_t t0 = static_cast<int64_t>(blockIdx.x) * kTile; t0 < total; t0 += stride) {
    const int64_t t1 = t0 + kTile < total ? t0 + kTile : total;
    for (int64_t s = find_segment(segs, count, t0); s < count; ++s) {
      const Segment seg = segs[s];
      const int64_t seg_end = seg.offset + seg.numel;
      if (seg.offset >= t1) break;
      const int64_t begin = seg.offset > t0 ? seg.offset : t0;
      const int64_t end = seg_end < t1 ? seg_end : t1;
      if (begin < end) run_range<T>(op, seg, begin, end);
      if (seg_end >= t1) break;
    }
  }
}

bool valid_table(const SegmentTable& t) {
  if (t.count < 0 || t.total < 0) return false;
  if (t.total > 0 && (t.count == 0 || t.segments == nullptr)) return false;
  return true;
}

template <typename T, typename Op>
cudaError_t launch(const SegmentTable& t, const Op& op, cudaStream_t stream) {
  if (t.total == 0) return cudaSuccess;
  int64_t cap = 0;
  const cudaError_t err = max_blocks(&cap);
  if (err != cudaSuccess) return err;
  const int64_t tiles = (t.total + kTile - 1) / kTile;
  const int64_t blocks = tiles < cap ? tiles : cap;
  multi_tensor_apply_kernel<T, Op>
      <<<static_cast<unsigned int>(blocks), kThreads, 0, stream>>>(t.segments, t.count,
                                                                  t.total, op);
  return cudaSuccess;
}

// ---------------------------------------------------------------------------------------
// Host-side dispatch: runtime settings -> template arguments (with_dtype, with_bool and
// IntC/BoolC are in launch_common.cuh).
// ---------------------------------------------------------------------------------------

template <typename F>
cudaError_t with_pow_mode(double pow, F&& f) {
  switch (ew::pow_mode(pow)) {
    case ew::POW2:
      return f(IntC<ew::POW2>{});
    case ew::POW1:
      return f(IntC<ew::POW1>{});
    default:
      return f(IntC<ew::POWG>{});
  }
}

template <typename F>
cudaError_t with_unary_op(int64_t op, F&& f) {
  switch (op) {
    case ew::UNARY_AFFINE:
      return f(IntC<ew::UNARY_AFFINE>{});
    case ew::UNARY_ABS:
      return f(IntC<ew::UNARY_ABS>{});
    case ew::UNARY_SIGN:
      return f(IntC<ew::UNARY_SIGN>{});
    case ew::UNARY_SQRT:
      return f(IntC<ew::UNARY_SQRT>{});
    case ew::UNARY_CLAMP:
      return f(IntC<ew::UNARY_CLAMP>{});
    default:
      return cudaErrorInvalidValue;
  }
}

template <typename F>
cudaError_t with_decay_mode(int64_t ord, F&& f) {
  switch (ew::decay_mode(ord)) {
    case ew::DECAY_L1:
      return f(IntC<ew::DECAY_L1>{});
    case ew::DECAY_L2:
      return f(IntC<ew::DECAY_L2>{});
    default:
      return f(IntC<ew::DECAY_POW>{});
  }
}

}  // namespace

// ---------------------------------------------------------------------------------------
// Launchers (declared in launchers.h).
// ---------------------------------------------------------------------------------------

cudaError_t launch_adam(DType dtype, const SegmentTable& table, void* exp_avg, void* exp_avg_sq,
                        void* max_exp_avg_sq, double beta1, double beta2, double eps,
                        double step_size, double pow, Epilogue epilogue, cudaStream_t stream) {
  if (!valid_table(table)) return cudaErrorInvalidValue;
  if (table.total > 0 && (exp_avg == nullptr || exp_avg_sq == nullptr)) {
    return cudaErrorInvalidValue;
  }
  return with_dtype(dtype, [&](auto t) {
    using T = decltype(t);
    using C = compute_t<T>;
    const auto args =
        ew::make_adam_args<C>(beta1, beta2, eps, step_size, pow, epilogue.out_scale);
    return with_pow_mode(pow, [&](auto pm) {
      return with_bool(max_exp_avg_sq != nullptr, [&](auto ams) {
        return with_bool(epilogue.accumulate, [&](auto acc) {
          using Op = AdamOp<T, decltype(pm)::value, decltype(ams)::value, decltype(acc)::value>;
          const Op op{static_cast<T*>(exp_avg), static_cast<T*>(exp_avg_sq),
                      static_cast<T*>(max_exp_avg_sq), args};
          return launch<T>(table, op, stream);
        });
      });
    });
  });
}

cudaError_t launch_ema(DType dtype, const SegmentTable& table, void* exp_avg, double momentum,
                       double dampening, bool lerp, Epilogue epilogue, cudaStream_t stream) {
  if (!valid_table(table)) return cudaErrorInvalidValue;
  if (table.total > 0 && exp_avg == nullptr) return cudaErrorInvalidValue;
  return with_dtype(dtype, [&](auto t) {
    using T = decltype(t);
    using C = compute_t<T>;
    const auto args = ew::make_ema_args<C>(momentum, dampening, epilogue.out_scale);
    return with_bool(lerp, [&](auto lp) {
      return with_bool(dampening != 0.0, [&](auto damp) {
        return with_bool(epilogue.accumulate, [&](auto acc) {
          using Op = EmaOp<T, decltype(lp)::value, decltype(damp)::value, decltype(acc)::value>;
          const Op op{static_cast<T*>(exp_avg), args};
          return launch<T>(table, op, stream);
        });
      });
    });
  });
}

cudaError_t launch_nag(DType dtype, const SegmentTable& table, void* velocity, double momentum,
                       double dampening, bool lerp, Epilogue epilogue, cudaStream_t stream) {
  if (!valid_table(table)) return cudaErrorInvalidValue;
  if (table.total > 0 && velocity == nullptr) return cudaErrorInvalidValue;
  return with_dtype(dtype, [&](auto t) {
    using T = decltype(t);
    using C = compute_t<T>;
    const auto args = ew::make_nag_args<C>(momentum, dampening, epilogue.out_scale);
    return with_bool(lerp, [&](auto lp) {
      return with_bool(epilogue.accumulate, [&](auto acc) {
        using Op = NagOp<T, decltype(lp)::value, decltype(acc)::value>;
        const Op op{static_cast<T*>(velocity), args};
        return launch<T>(table, op, stream);
      });
    });
  });
}

cudaError_t launch_ema_sq(DType dtype, const SegmentTable& table, void* exp_avg_sq,
                          void* max_exp_avg_sq, double beta, double pow, bool take_root,
                          Epilogue epilogue, cudaStream_t stream) {
  if (!valid_table(table)) return cudaErrorInvalidValue;
  if (table.total > 0 && exp_avg_sq == nullptr) return cudaErrorInvalidValue;
  return with_dtype(dtype, [&](auto t) {
    using T = decltype(t);
    using C = compute_t<T>;
    const auto args = ew::make_ema_sq_args<C>(beta, pow, epilogue.out_scale);
    return with_pow_mode(pow, [&](auto pm) {
      return with_bool(max_exp_avg_sq != nullptr, [&](auto ams) {
        return with_bool(take_root, [&](auto rt) {
          return with_bool(epilogue.accumulate, [&](auto acc) {
            using Op = EmaSqOp<T, decltype(pm)::value, decltype(ams)::value, decltype(rt)::value,
                               decltype(acc)::value>;
            const Op op{static_cast<T*>(exp_avg_sq), static_cast<T*>(max_exp_avg_sq), args};
            return launch<T>(table, op, stream);
          });
        });
      });
    });
  });
}

cudaError_t launch_unary(DType dtype, const SegmentTable& table, int64_t op_code, double a,
                         double b, Epilogue epilogue, cudaStream_t stream) {
  if (!valid_table(table)) return cudaErrorInvalidValue;
  return with_dtype(dtype, [&](auto t) {
    using T = decltype(t);
    using C = compute_t<T>;
    const auto args = ew::make_unary_args<C>(a, b, epilogue.out_scale);
    return with_unary_op(op_code, [&](auto code) {
      return with_bool(epilogue.accumulate, [&](auto acc) {
        using Op = UnaryOpFn<T, decltype(code)::value, decltype(acc)::value>;
        return launch<T>(table, Op{args}, stream);
      });
    });
  });
}

cudaError_t launch_weight_decay(DType dtype, const SegmentTable& table, double weight_decay,
                                int64_t ord, Epilogue epilogue, cudaStream_t stream) {
  if (!valid_table(table)) return cudaErrorInvalidValue;
  return with_dtype(dtype, [&](auto t) {
    using T = decltype(t);
    using C = compute_t<T>;
    const auto args = ew::make_weight_decay_args<C>(weight_decay, ord, epilogue.out_scale);
    return with_decay_mode(ord, [&](auto dm) {
      return with_bool(epilogue.accumulate, [&](auto acc) {
        using Op = WeightDecayOp<T, decltype(dm)::value, decltype(acc)::value>;
        return launch<T>(table, Op{args}, stream);
      });
    });
  });
}

}  // namespace cuda
}  // namespace tzfast
