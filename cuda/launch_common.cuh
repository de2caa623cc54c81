// Host-side helpers shared by the multi-tensor launches (cuda/elementwise.cu, cuda/perturb.cu):
// the grid cap from the current device's SM count, and runtime settings -> template arguments.
// Included inside each file's anonymous namespace (like compute_type.cuh), so every translation
// unit keeps its own internal copy; the including file defines kBlocksPerSm and kMaxDevices and
// includes <atomic>, <type_traits>, <cuda_fp16.h>, <cuda_bf16.h> and cuda/launchers.h (DType).
#pragma once

// kBlocksPerSm blocks per SM of the current device (the SM count is cached per device).
cudaError_t max_blocks(int64_t* out) {
  static std::atomic<int> sm_count[kMaxDevices] = {};
  int dev = 0;
  cudaError_t err = cudaGetDevice(&dev);
  if (err != cudaSuccess) return err;
  int sms = (dev >= 0 && dev < kMaxDevices) ? sm_count[dev].load(std::memory_order_relaxed) : 0;
  if (sms <= 0) {
    err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
    if (err != cudaSuccess) return err;
    if (dev >= 0 && dev < kMaxDevices) sm_count[dev].store(sms, std::memory_order_relaxed);
  }
  *out = static_cast<int64_t>(sms) * kBlocksPerSm;
  return cudaSuccess;
}

template <int V>
using IntC = std::integral_constant<int, V>;
template <bool V>
using BoolC = std::integral_constant<bool, V>;

template <typename F>
cudaError_t with_dtype(DType dtype, F&& f) {
  switch (dtype) {
    case DType::Float32:
      return f(float{});
    case DType::Float64:
      return f(double{});
    case DType::Float16:
      return f(__half{});
    case DType::BFloat16:
      return f(__nv_bfloat16{});
  }
  return cudaErrorInvalidValue;
}

template <typename F>
cudaError_t with_bool(bool b, F&& f) {
  return b ? f(BoolC<true>{}) : f(BoolC<false>{});
}
