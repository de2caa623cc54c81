// CUDA kernel of accumulate_directions_ (docs/perturbation.md).
//
// Torch-free (raw pointers, sizes, a cudaStream_t; see perturb.h). The values are those of
// csrc/include/tzfast/random.h, the functions the CPU kernels run; compiled with --fmad=false
// (cmake/cuda.cmake), and with __fdiv_rn / __fsqrt_rn for the division and the square root,
// they round as the CPU does, so a direction is the same on both devices.
//
// Launch shape: one launch per call. The grid walks the call's sequence of quads (four
// consecutive global indices, one Philox block for the Gaussian and uniform distributions) in
// tiles of kTileQuads; a block finds the first segment of its tile by binary search on
// `first_quad` and works through the segments that cover the tile. A thread takes one quad at a
// time: it generates the quad's four values of every direction in registers, sums them, and
// reads and writes the four outputs once (one vector access when the quad lies inside the
// segment and the address is aligned; element by element at a segment's ends). For Rademacher a
// quad is 4 bits of a 128-bit block: the 32 threads of a warp that share a block compute it
// together, which costs a warp what one Gaussian block costs.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>
#include <type_traits>

#include "cuda/perturb.h"
#include "tzfast/random.h"

namespace tzfast {
namespace cuda {
namespace {

namespace rng = ::tzfast::rng;

constexpr int kThreads = 256;
constexpr int kBlocksPerSm = 8;
constexpr int64_t kTileQuads = 1024;  // 4 quads per thread per tile
constexpr int kMaxDevices = 64;

#include "cuda/compute_type.cuh"  // Compute, compute_t, to_c, from_c
#include "cuda/launch_common.cuh"  // max_blocks, IntC, BoolC, with_dtype, with_bool

// Four elements moved with one access (16 bytes for float, 8 for the half types; two 16-byte
// accesses for double).
template <typename T>
struct alignas(4 * sizeof(T)) Quad {
  T v[4];
};

// Index of the last segment whose first_quad is <= q (count >= 1).
__device__ __forceinline__ int64_t find_segment(const DirectionSegment* segs, int64_t count,
                                                int64_t q) {
  int64_t lo = 0;
  int64_t hi = count - 1;
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo + 1) / 2;
    if (segs[mid].first_quad <= q) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  return lo;
}

// Quads a segment touches.
__device__ __forceinline__ int64_t segment_quads(const DirectionSegment& s) {
  return ((s.offset + s.numel - 1) >> 2) - (s.offset >> 2) + 1;
}

template <typename T, int DIST, bool ACC>
__device__ __forceinline__ void process_quad(const DirectionTable& t, rng::Key key,
                                             const DirectionSegment& seg, int64_t gq) {
  using C = compute_t<T>;
  C acc[4];
  for (int64_t k = 0; k < t.num_directions; ++k) {
    float z[4];
    rng::direction_quad(DIST, key, t.samples[k], static_cast<uint64_t>(gq), z);
    const C w = static_cast<C>(t.weights[k]);
#pragma unroll
    for (int l = 0; l < 4; ++l) {
      const C term = w * static_cast<C>(z[l]);
      acc[l] = k == 0 ? term : acc[l] + term;
    }
  }
  T* out = static_cast<T*>(seg.out);
  const int64_t e0 = 4 * gq - seg.offset;  // index in the segment of the quad's first element
  const bool whole = e0 >= 0 && e0 + 4 <= seg.numel;
  if (whole && (reinterpret_cast<uintptr_t>(out + e0) % sizeof(Quad<T>)) == 0) {
    Quad<T>* p = reinterpret_cast<Quad<T>*>(out + e0);
    Quad<T> v;
    if (ACC) v = *p;
#pragma unroll
    for (int l = 0; l < 4; ++l) v.v[l] = from_c<T>(ACC ? to_c(v.v[l]) + acc[l] : acc[l]);
    *p = v;
  } else {
#pragma unroll
    for (int l = 0; l < 4; ++l) {
      const int64_t e = e0 + l;
      if (e >= 0 && e < seg.numel) out[e] = from_c<T>(ACC ? to_c(out[e]) + acc[l] : acc[l]);
    }
  }
}

template <typename T, int DIST, bool ACC>
__global__ void __launch_bounds__(kThreads) directions_kernel(DirectionTable t, rng::Key key) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kTileQuads;
  for (int64_t q0 = static_cast<int64_t>(blockIdx.x) * kTileQuads; q0 < t.total_quads;
       q0 += stride) {
    const int64_t q1 = q0 + kTileQuads < t.total_quads ? q0 + kTileQuads : t.total_quads;
    for (int64_t s = find_segment(t.segments, t.count, q0); s < t.count; ++s) {
      const DirectionSegment seg = t.segments[s];
      if (seg.first_quad >= q1) break;
      const int64_t seg_end = seg.first_quad + segment_quads(seg);
      const int64_t begin = seg.first_quad > q0 ? seg.first_quad : q0;
      const int64_t end = seg_end < q1 ? seg_end : q1;
      const int64_t gq0 = seg.offset >> 2;
      for (int64_t p = begin + threadIdx.x; p < end; p += blockDim.x) {
        process_quad<T, DIST, ACC>(t, key, seg, gq0 + (p - seg.first_quad));
      }
      if (seg_end >= q1) break;
    }
  }
}

template <typename T, int DIST, bool ACC>
cudaError_t launch(const DirectionTable& t, rng::Key key, cudaStream_t stream) {
  int64_t cap = 0;
  const cudaError_t err = max_blocks(&cap);
  if (err != cudaSuccess) return err;
  const int64_t tiles = (t.total_quads + kTileQuads - 1) / kTileQuads;
  const int64_t blocks = tiles < cap ? tiles : cap;
  directions_kernel<T, DIST, ACC>
      <<<static_cast<unsigned int>(blocks), kThreads, 0, stream>>>(t, key);
  return cudaSuccess;
}


// kSphere draws the Gaussian values (the caller folds the scale into the weights).
template <typename F>
cudaError_t with_dist(int32_t dist, F&& f) {
  switch (dist) {
    case rng::kGaussian:
    case rng::kSphere:
      return f(IntC<rng::kGaussian>{});
    case rng::kRademacher:
      return f(IntC<rng::kRademacher>{});
    case rng::kUniform:
      return f(IntC<rng::kUniform>{});
    default:
      return cudaErrorInvalidValue;
  }
}

}  // namespace

cudaError_t launch_accumulate_directions(DType dtype, const DirectionTable& table, int32_t dist,
                                         uint32_t k0, uint32_t k1, bool accumulate,
                                         cudaStream_t stream) {
  if (table.count < 0 || table.total_quads < 0) return cudaErrorInvalidValue;
  if (table.total_quads == 0) return cudaSuccess;
  if (table.count == 0 || table.segments == nullptr || table.num_directions < 1 ||
      table.samples == nullptr || table.weights == nullptr) {
    return cudaErrorInvalidValue;
  }
  const rng::Key key{k0, k1};
  return with_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    return with_dist(dist, [&](auto d) {
      return accumulate ? launch<T, decltype(d)::value, true>(table, key, stream)
                        : launch<T, decltype(d)::value, false>(table, key, stream);
    });
  });
}

}  // namespace cuda
}  // namespace tzfast
