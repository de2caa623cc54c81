// CPU kernels of the L-BFGS ops (docs/lbfgs.md). Compiled once per SIMD level with
// -DTZ_ISA=<level> like elementwise_kernels.cpp (same ODR rule: internal linkage except
// tzfast::cpu::<level>::lbfgs_table()).
//
// Every loop runs over sub-blocks of kLbfgsBlock elements: a block of each list argument is
// used in place when it lies inside one run and copied into an L1/L2 buffer otherwise. Sums run
// in fixed lanes combined in a fixed tree, so a result depends only on the block boundaries,
// which the op layer fixes (not on threads or SIMD level: -ffp-contract=off).

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "cpu_kernels.h"
#include "lbfgs_kernels.h"

#ifndef TZ_ISA
#error "compile with -DTZ_ISA=<simd level>"
#endif

#define TZ_STR2(x) #x
#define TZ_STR(x) TZ_STR2(x)

namespace tzfast {
namespace cpu {
namespace TZ_ISA {
namespace {

constexpr int kLanes = 8;

// The run of `l` that holds flat index g (runs sorted by offset, covering [0, n)).
int64_t run_of(const FlatList& l, int64_t g) {
  int64_t lo = 0, hi = l.count - 1;
  while (lo < hi) {
    const int64_t mid = (lo + hi + 1) / 2;
    if (l.runs[mid].offset <= g) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  return lo;
}

// Elements [g, g + len) of list `l`: a pointer into the list when they lie in one run, else
// copied into buf.
template <typename T>
const T* read_block(const FlatList& l, int64_t g, int64_t len, T* buf) {
  int64_t r = run_of(l, g);
  const FlatRun& first = l.runs[r];
  if (g + len <= first.offset + first.n) return static_cast<const T*>(first.ptr) + (g - first.offset);
  int64_t done = 0;
  while (done < len) {
    const FlatRun& run = l.runs[r];
    const int64_t at = g + done - run.offset;
    const int64_t take = std::min(len - done, run.n - at);
    std::memcpy(buf + done, static_cast<const T*>(run.ptr) + at, size_t(take) * sizeof(T));
    done += take;
    ++r;
  }
  return buf;
}

template <typename T>
void write_back(const FlatList& l, int64_t g, int64_t len, const T* buf) {
  int64_t r = run_of(l, g);
  int64_t done = 0;
  while (done < len) {
    const FlatRun& run = l.runs[r];
    const int64_t at = g + done - run.offset;
    const int64_t take = std::min(len - done, run.n - at);
    std::memcpy(static_cast<T*>(run.ptr) + at, buf + done, size_t(take) * sizeof(T));
    done += take;
    ++r;
  }
}

inline double lanes_sum(const double* s) {
  return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}

template <typename T>
struct Tag {
  using type = T;
};

template <typename F>
void by_dtype(DType d, F&& f) {
  if (d == DType::Float64) {
    f(Tag<double>{});
  } else {
    f(Tag<float>{});  // the op layer admits float32 and float64 only
  }
}

// ------------------------------------------------------------------------------ pair
template <typename T>
void pair_t(const LbfgsPairCall& c, int64_t begin, int64_t end, double stats[4]) {
  alignas(64) T pbuf[kLbfgsBlock];
  alignas(64) T gbuf[kLbfgsBlock];
  const int64_t n = c.n;
  for (int64_t g0 = begin; g0 < end; g0 += kLbfgsBlock) {
    const int64_t len = std::min(kLbfgsBlock, end - g0);
    const T* __restrict p = read_block<T>(c.p, g0, len, pbuf);
    const T* __restrict g = read_block<T>(c.g, g0, len, gbuf);
    T* __restrict np = static_cast<T*>(c.next) + g0;
    T* __restrict ng = static_cast<T*>(c.next) + n + g0;
    if (c.prev == nullptr) {
      std::memcpy(np, p, size_t(len) * sizeof(T));
      std::memcpy(ng, g, size_t(len) * sizeof(T));
      continue;
    }
    const T* __restrict pp = static_cast<const T*>(c.prev) + g0;
    const T* __restrict gp = static_cast<const T*>(c.prev) + n + g0;
    T* __restrict s = static_cast<T*>(c.pair) + g0;
    T* __restrict y = static_cast<T*>(c.pair) + n + g0;
    for (int64_t e = 0; e < len; ++e) {
      s[e] = p[e] - pp[e];
      y[e] = g[e] - gp[e];
    }
    std::memcpy(np, p, size_t(len) * sizeof(T));
    std::memcpy(ng, g, size_t(len) * sizeof(T));
    // reductions over the block just written (in L1/L2)
    double sy[kLanes] = {0, 0, 0, 0, 0, 0, 0, 0};
    T ms[kLanes] = {0, 0, 0, 0, 0, 0, 0, 0};
    T my[kLanes] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t e = 0;
    for (; e + kLanes <= len; e += kLanes) {
      for (int l = 0; l < kLanes; ++l) {
        sy[l] += static_cast<double>(s[e + l]) * static_cast<double>(y[e + l]);
        const T as = s[e + l] < T(0) ? -s[e + l] : s[e + l];
        const T ay = y[e + l] < T(0) ? -y[e + l] : y[e + l];
        ms[l] = as > ms[l] ? as : ms[l];  // NaN never wins: counted below
        my[l] = ay > my[l] ? ay : my[l];
      }
    }
    for (; e < len; ++e) {
      const int l = int(e % kLanes);
      sy[l] += static_cast<double>(s[e]) * static_cast<double>(y[e]);
      const T as = s[e] < T(0) ? -s[e] : s[e];
      const T ay = y[e] < T(0) ? -y[e] : y[e];
      ms[l] = as > ms[l] ? as : ms[l];
      my[l] = ay > my[l] ? ay : my[l];
    }
    const double bsy = lanes_sum(sy);
    stats[0] += bsy;
    for (int l = 0; l < kLanes; ++l) {
      stats[1] = std::max(stats[1], static_cast<double>(ms[l]));
      stats[2] = std::max(stats[2], static_cast<double>(my[l]));
    }
    if (bsy != bsy) {  // a NaN in s or y (or an inf times 0): count them
      int64_t nan = 0;
      for (int64_t i = 0; i < len; ++i) nan += (s[i] != s[i]) + (y[i] != y[i]);
      stats[3] += static_cast<double>(nan);
    }
  }
}

void pair(const LbfgsPairCall& c, int64_t begin, int64_t end, double stats[4]) {
  by_dtype(c.dtype, [&](auto tag) { pair_t<typename decltype(tag)::type>(c, begin, end, stats); });
}

// ------------------------------------------------------------------------------ dots
// Sums in the data's type T (float32 like a BLAS sdot, float64 for float64 data) in
// Lanes<T> lanes (four vectors of a 256-bit register file), combined pairwise, then each block's
// value is added in float64 by the op layer.
template <typename T>
constexpr int kLanesOf = 128 / int(sizeof(T));

template <typename T, int L>
inline double tree_sum(const T* a) {
  T buf[L];
  for (int l = 0; l < L; ++l) buf[l] = a[l];
  for (int w = L / 2; w >= 1; w /= 2) {
    for (int l = 0; l < w; ++l) buf[l] = buf[l] + buf[l + w];
  }
  return static_cast<double>(buf[0]);
}

// A super-block: up to kLbfgsSuper blocks [begin, end) handled by one call, so that every
// history row is read as one contiguous run of up to kLbfgsSuper * kLbfgsBlock elements (a
// stream the prefetchers follow) rather than in 16 KB pieces; each block's sums stay separate.
template <typename T>
struct BlockPointers {
  const T* x[kLbfgsSuper];
  int64_t g0[kLbfgsSuper];
  int64_t len[kLbfgsSuper];
  int64_t count = 0;
};

// `scratch` holds kLbfgsSuper * kLbfgsBlock elements (the op layer's per-thread buffer).
template <typename T>
BlockPointers<T> read_blocks(const FlatList& l, int64_t begin, int64_t end, T* scratch) {
  BlockPointers<T> bp;
  for (int64_t g0 = begin; g0 < end; g0 += kLbfgsBlock) {
    const int64_t i = bp.count++;
    bp.g0[i] = g0;
    bp.len[i] = std::min(kLbfgsBlock, end - g0);
    const FlatRun& run = l.runs[run_of(l, g0)];
    if (g0 + bp.len[i] <= run.offset + run.n) {
      bp.x[i] = static_cast<const T*>(run.ptr) + (g0 - run.offset);
    } else {
      bp.x[i] = read_block<T>(l, g0, bp.len[i], scratch + i * kLbfgsBlock);
    }
  }
  return bp;
}

template <typename T>
void dots_t(const LbfgsDotsCall& c, int64_t begin, int64_t end, double* out, void* scratch) {
  constexpr int L = kLanesOf<T>;
  const BlockPointers<T> bp = read_blocks<T>(c.x, begin, end, static_cast<T*>(scratch));
  const T* hist = static_cast<const T*>(c.hist);
  const int64_t n = c.n;
  const int64_t stride = 3 * c.rows;  // out holds the blocks' partial sums one after the other
  for (int64_t r = 0; r < c.rows; ++r) {
    for (int64_t k = 0; k < bp.count; ++k) {
      const int64_t g0 = bp.g0[k];
      const int64_t len = bp.len[k];
      const int64_t whole = len / L * L;
      const T* __restrict x = bp.x[k];
      const T* __restrict h = hist + c.row[r] * n + g0;
      double* o = out + k * stride + 3 * r;
      alignas(64) T a[L] = {};
      if (c.col_s < 0) {
        for (int64_t e = 0; e < whole; e += L) {
          for (int l = 0; l < L; ++l) a[l] = a[l] + h[e + l] * x[e + l];
        }
        for (int64_t e = whole; e < len; ++e) a[e - whole] = a[e - whole] + h[e] * x[e];
        o[0] += tree_sum<T, L>(a);
        continue;
      }
      const T* __restrict hs = hist + c.col_s * n + g0;
      const T* __restrict hy = hist + c.col_y * n + g0;
      alignas(64) T b[L] = {};
      alignas(64) T d[L] = {};
      for (int64_t e = 0; e < whole; e += L) {
        for (int l = 0; l < L; ++l) {
          const T hv = h[e + l];
          a[l] = a[l] + hv * x[e + l];
          b[l] = b[l] + hv * hs[e + l];
          d[l] = d[l] + hv * hy[e + l];
        }
      }
      for (int64_t e = whole; e < len; ++e) {
        const T hv = h[e];
        a[e - whole] = a[e - whole] + hv * x[e];
        b[e - whole] = b[e - whole] + hv * hs[e];
        d[e - whole] = d[e - whole] + hv * hy[e];
      }
      o[0] += tree_sum<T, L>(a);
      o[1] += tree_sum<T, L>(b);
      o[2] += tree_sum<T, L>(d);
    }
  }
}

void dots(const LbfgsDotsCall& c, int64_t begin, int64_t end, double* out, void* scratch) {
  by_dtype(c.dtype, [&](auto tag) { dots_t<typename decltype(tag)::type>(c, begin, end, out, scratch); });
}

// ------------------------------------------------------------------------------ combine
// out = gamma x + sum_j w_j h_j, accumulated in T in term order (as an axpy sequence would);
// over a super-block, term by term, so each history row streams.
template <typename T>
void combine_t(const LbfgsCombineCall& c, int64_t begin, int64_t end, void* scratch) {
  T* xs = static_cast<T*>(scratch);
  T* os = xs + kLbfgsSuper * kLbfgsBlock;
  const BlockPointers<T> bp = read_blocks<T>(c.x, begin, end, xs);
  T* outp[kLbfgsSuper];
  const T* hist = static_cast<const T*>(c.hist);
  const T gamma = static_cast<T>(c.gamma);
  for (int64_t k = 0; k < bp.count; ++k) {
    const FlatRun& run = c.out.runs[run_of(c.out, bp.g0[k])];
    outp[k] = bp.g0[k] + bp.len[k] <= run.offset + run.n
                  ? static_cast<T*>(run.ptr) + (bp.g0[k] - run.offset)
                  : os + k * kLbfgsBlock;
    T* __restrict o = outp[k];
    const T* __restrict x = bp.x[k];
    if (o == x) {
      for (int64_t e = 0; e < bp.len[k]; ++e) o[e] = gamma * o[e];
    } else {
      for (int64_t e = 0; e < bp.len[k]; ++e) o[e] = gamma * x[e];
    }
  }
  for (int64_t j = 0; j < c.terms; ++j) {
    const T w = static_cast<T>(c.coef[j]);
    for (int64_t k = 0; k < bp.count; ++k) {
      const T* __restrict h = hist + c.row[j] * c.n + bp.g0[k];
      T* __restrict o = outp[k];
      for (int64_t e = 0; e < bp.len[k]; ++e) o[e] = o[e] + w * h[e];
    }
  }
  for (int64_t k = 0; k < bp.count; ++k) {
    if (outp[k] == os + k * kLbfgsBlock) write_back<T>(c.out, bp.g0[k], bp.len[k], outp[k]);
  }
}

void combine(const LbfgsCombineCall& c, int64_t begin, int64_t end, void* scratch) {
  by_dtype(c.dtype, [&](auto tag) { combine_t<typename decltype(tag)::type>(c, begin, end, scratch); });
}

const LbfgsTable kLbfgsTable = {TZ_STR(TZ_ISA), &pair, &dots, &combine};

}  // namespace

const LbfgsTable& lbfgs_table() { return kLbfgsTable; }

}  // namespace TZ_ISA
}  // namespace cpu
}  // namespace tzfast
