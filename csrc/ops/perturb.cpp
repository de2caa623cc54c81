// The perturbation ops (docs/perturbation.md): schemas, argument checks and the CPU
// implementation. Random directions are generated inside the kernels from (seed, sample,
// global element index) and never stored.
//
//   accumulate_directions_(Tensor(a!)[] out, int[] offsets, int seed, int[] samples,
//                          float[] coeffs, int dist, float out_scale, bool accumulate) -> ()
//   direction_sq_norm(int seed, int sample, int dist, int numel) -> Tensor
//
// The schemas join the `tzfast` library defined in csrc/ops/elementwise.cpp
// (TORCH_LIBRARY_FRAGMENT). The CUDA kernel of accumulate_directions_ is registered by
// csrc/ops/perturb_cuda.cpp (TZFAST_CUDA=ON) and reuses prepare_directions().
// direction_sq_norm takes no tensor: it runs on the CPU (CompositeExplicitAutograd) and its
// value is what a caller folds into `coeffs`, a host-side list, on any device.

#ifndef TORCH_ASSERT_ONLY_METHOD_OPERATORS
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#endif
#include <ATen/MemoryOverlap.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/scalar_tensor.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "../kernels/perturb_kernels.h"
#include "perturb_common.h"
#include "tzfast/random.h"

namespace tzfast {
namespace ops {

namespace {

constexpr int64_t kMaxSample = int64_t(0xffffffff);

std::string strides_str(at::IntArrayRef s) {
  std::ostringstream os;
  os << s;
  return os.str();
}

bool supported_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

void check_distribution(const char* op, int64_t dist) {
  TORCH_CHECK(dist >= 0 && dist < rng::kNumDistributions, "tzfast::", op,
              ": unknown distribution code ", dist, "; accepted codes: ",
              distribution_codes_text());
}

void check_sample(const char* op, const std::string& name, int64_t sample) {
  TORCH_CHECK(sample >= 0 && sample <= kMaxSample, "tzfast::", op, ": expected ", name,
              " in [0, ", kMaxSample, "] (a 32-bit counter word) but got ", sample);
}

}  // namespace

const char* distribution_codes_text() {
  return "0 (gaussian, normal), 1 (rademacher), 2 (uniform), 3 (sphere)";
}

void PreparedDirections::finish() {
  for (auto& wb : write_back) wb.first.copy_(wb.second);
  write_back.clear();
}

PreparedDirections prepare_directions(const char* op, at::TensorList out, at::IntArrayRef offsets,
                                      int64_t seed, at::IntArrayRef samples,
                                      at::ArrayRef<double> coeffs, int64_t dist,
                                      double out_scale, bool accumulate) {
  check_distribution(op, dist);
  TORCH_CHECK(samples.size() == coeffs.size(), "tzfast::", op,
              ": expected samples and coeffs to have the same length but got ", samples.size(),
              " samples and ", coeffs.size(), " coeffs");
  TORCH_CHECK(!samples.empty(), "tzfast::", op,
              ": expected at least one direction (samples and coeffs of length >= 1) but got 0");
  PreparedDirections call;
  call.samples.reserve(samples.size());
  call.weights.reserve(coeffs.size());
  for (size_t k = 0; k < samples.size(); ++k) {
    check_sample(op, "samples[" + std::to_string(k) + "]", samples[k]);
    call.samples.push_back(static_cast<uint32_t>(samples[k]));
    call.weights.push_back(out_scale * coeffs[k]);
  }
  const rng::Key key = rng::key_of_seed(seed);
  call.k0 = key.k0;
  call.k1 = key.k1;

  const size_t n = out.size();
  TORCH_CHECK(offsets.size() == n, "tzfast::", op, ": expected offsets to be a list of ", n,
              " offsets (one per entry of out) but got ", offsets.size());
  if (n == 0) return call;

  const at::Tensor& ref = out[0];
  TORCH_CHECK(ref.defined(), "tzfast::", op,
              ": expected out[0] to be a tensor but got an undefined tensor");
  TORCH_CHECK(supported_dtype(ref.scalar_type()), "tzfast::", op,
              ": expected a floating dtype (Float, Double, Half or BFloat16) but out[0] has dtype ",
              ref.scalar_type());
  call.dtype = ref.scalar_type();

  for (size_t j = 0; j < n; ++j) {
    const at::Tensor& o = out[j];
    TORCH_CHECK(o.defined(), "tzfast::", op, ": expected out[", j,
                "] to be a tensor but got an undefined tensor");
    TORCH_CHECK(o.scalar_type() == ref.scalar_type(), "tzfast::", op, ": expected out[", j,
                "] to have dtype ", ref.scalar_type(), " (the dtype of out[0]) but got ",
                o.scalar_type());
    TORCH_CHECK(o.device() == ref.device(), "tzfast::", op, ": expected out[", j,
                "] on device ", ref.device(), " (the device of out[0]) but got ", o.device());
    const int64_t numel = o.numel();
    TORCH_CHECK(offsets[j] >= 0, "tzfast::", op, ": expected offsets[", j,
                "] >= 0 but got ", offsets[j]);
    TORCH_CHECK(offsets[j] <= std::numeric_limits<int64_t>::max() - numel, "tzfast::", op,
                ": expected offsets[", j, "] + numel(out[", j, "]) <= 2^63 - 1 but got ",
                offsets[j], " + ", numel);
    TORCH_CHECK(at::has_internal_overlap(o) != at::MemOverlap::Yes, "tzfast::", op,
                ": expected out[", j,
                "] to have no internal overlap (each element its own memory) but it has strides ",
                strides_str(o.strides()));
    if (numel == 0) continue;
    at::Tensor oc = o;
    if (!o.is_contiguous()) {
      oc = accumulate ? o.contiguous() : at::empty_like(o, at::MemoryFormat::Contiguous);
      call.write_back.emplace_back(o, oc);
    }
    call.segments.push_back(DirectionSegment{oc.data_ptr(), numel, offsets[j]});
    call.total += numel;
  }
  return call;
}

void check_sq_norm_args(const char* op, int64_t sample, int64_t dist, int64_t numel) {
  check_distribution(op, dist);
  check_sample(op, "sample", sample);
  TORCH_CHECK(numel >= 0, "tzfast::", op, ": expected numel >= 0 but got ", numel);
}

namespace {

// ---------------------------------------------------------------------------------------
// CPU
// ---------------------------------------------------------------------------------------

// Pieces of work end at global element indices that are multiples of kChunk, so two pieces
// never share a tile of the kernel (no random block is generated twice).
constexpr int64_t kChunk = int64_t(1) << 15;
// Below this many element-directions a call runs on the calling thread.
constexpr int64_t kParallelWork = int64_t(1) << 16;

cpu::DType cpu_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return cpu::DType::Float32;
    case at::kDouble: return cpu::DType::Float64;
    case at::kHalf: return cpu::DType::Float16;
    default: return cpu::DType::BFloat16;  // prepare_directions admitted only these four
  }
}

void accumulate_directions_cpu(at::TensorList out, at::IntArrayRef offsets, int64_t seed,
                               at::IntArrayRef samples, at::ArrayRef<double> coeffs,
                               int64_t dist, double out_scale, bool accumulate) {
  PreparedDirections call = prepare_directions("accumulate_directions_", out, offsets, seed,
                                               samples, coeffs, dist, out_scale, accumulate);
  if (call.total == 0) return;
  const int64_t es = int64_t(at::elementSize(call.dtype));
  std::vector<cpu::DirectionPiece> pieces;
  pieces.reserve(call.segments.size() + size_t(call.total / kChunk) + 1);
  for (const DirectionSegment& s : call.segments) {
    for (int64_t g = s.offset; g < s.offset + s.numel;) {
      const int64_t stop = std::min(s.offset + s.numel, (g / kChunk + 1) * kChunk);
      pieces.push_back(
          cpu::DirectionPiece{static_cast<char*>(s.out) + (g - s.offset) * es, stop - g, g});
      g = stop;
    }
  }
  const cpu::DirectionsCall c{cpu_dtype(call.dtype),   static_cast<int32_t>(dist),
                              call.k0,                 call.k1,
                              call.samples.data(),     call.weights.data(),
                              int64_t(call.samples.size()), accumulate};
  const cpu::PerturbTable& k = cpu::perturb_kernels();
  const int64_t count = int64_t(pieces.size());
  if (count == 1 || call.total * c.count < kParallelWork) {
    k.accumulate_directions(c, pieces.data(), count);
  } else {
    at::parallel_for(0, count, 1, [&](int64_t begin, int64_t end) {
      k.accumulate_directions(c, pieces.data() + begin, end - begin);
    });
  }
  call.finish();
}

// With an empty `out` the call has no tensor and so no dispatch key; the dispatcher then uses
// this CompositeExplicitAutograd kernel. It checks the call and, having nothing to do,
// returns; for a device without a kernel it says so.
void accumulate_directions_empty(at::TensorList out, at::IntArrayRef offsets, int64_t seed,
                                 at::IntArrayRef samples, at::ArrayRef<double> coeffs,
                                 int64_t dist, double out_scale, bool accumulate) {
  TORCH_CHECK(out.empty(), "tzfast::accumulate_directions_: no kernel for device ",
              out[0].device(), " in this build (",
              out[0].device().type() == at::kCUDA ? "built without TZFAST_CUDA"
                                                  : "unsupported device",
              ")");
  prepare_directions("accumulate_directions_", out, offsets, seed, samples, coeffs, dist,
                     out_scale, accumulate);
}

at::Tensor direction_sq_norm(int64_t seed, int64_t sample, int64_t dist, int64_t numel) {
  const char* op = "direction_sq_norm";
  check_sq_norm_args(op, sample, dist, numel);
  const auto opts = at::TensorOptions().dtype(at::kDouble);
  if (dist == rng::kRademacher) {  // every z^2 is 1: the sum is exact
    return at::scalar_tensor(static_cast<double>(numel), opts);
  }
  const rng::Key key = rng::key_of_seed(seed);
  const cpu::SqNormCall c{static_cast<int32_t>(dist), key.k0, key.k1,
                          static_cast<uint32_t>(sample), numel};
  const int64_t blocks = (numel + rng::kSqNormBlock - 1) / rng::kSqNormBlock;
  std::vector<double> values(static_cast<size_t>(blocks), 0.0);
  const cpu::PerturbTable& k = cpu::perturb_kernels();
  if (blocks <= 2) {
    k.sq_norm_blocks(c, 0, blocks, values.data());
  } else {
    at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
      k.sq_norm_blocks(c, begin, end - begin, values.data() + begin);
    });
  }
  double total = 0.0;
  for (double v : values) total += v;  // in block order: the same for any thread count
  return at::scalar_tensor(total, opts);
}

}  // namespace

void accumulate_directions_cpu_direct(at::TensorList out, at::IntArrayRef offsets, int64_t seed,
                                      at::IntArrayRef samples, at::ArrayRef<double> coeffs,
                                      int64_t dist, double out_scale, bool accumulate) {
  // prepare_directions checks that every out[j] is on out[0]'s device
  TORCH_CHECK(out.empty() || !out[0].defined() || out[0].device().is_cpu(),
              "tzfast::accumulate_directions_ (direct CPU call): expected out[0] to be a CPU tensor "
              "but got a tensor on ", out.empty() || !out[0].defined() ? std::string() : out[0].device().str());
  accumulate_directions_cpu(out, offsets, seed, samples, coeffs, dist, out_scale, accumulate);
  // what the dispatcher's ADInplaceOrView kernel does for an in-place op: autograd then
  // notices that a tensor saved for backward was changed
  for (const at::Tensor& o : out) o.unsafeGetTensorImpl()->bump_version();
}

TORCH_LIBRARY_FRAGMENT(tzfast, m) {
  m.def(
      "accumulate_directions_(Tensor(a!)[] out, int[] offsets, int seed, int[] samples, "
      "float[] coeffs, int dist, float out_scale, bool accumulate) -> ()");
  m.def("direction_sq_norm(int seed, int sample, int dist, int numel) -> Tensor");
}

TORCH_LIBRARY_IMPL(tzfast, CPU, m) {
  m.impl("accumulate_directions_", &accumulate_directions_cpu);
}

TORCH_LIBRARY_IMPL(tzfast, CompositeExplicitAutograd, m) {
  m.impl("accumulate_directions_", &accumulate_directions_empty);
  m.impl("direction_sq_norm", &direction_sq_norm);
}

}  // namespace ops
}  // namespace tzfast
