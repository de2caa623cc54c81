// The Python module tzfast._C. Importing it registers the native ops (the static
// TORCH_LIBRARY registrations in csrc/ops/*.cpp, linked into the same library); the module
// itself exposes build information, non-tensor helpers and the direct CPU calls
// (csrc/direct_calls.cpp). Only pybind11 here: no torch headers, so this translation unit
// compiles in a couple of seconds.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <string>
#include <tuple>
#include <vector>

#include "direct_calls.h"
#include "kernels/cpu_kernels.h"
#include "tzfast/philox.h"

#ifndef TZFAST_VERSION
#define TZFAST_VERSION "unknown"
#endif
#ifndef TZFAST_BUILD_FLAGS
#define TZFAST_BUILD_FLAGS ""
#endif
#ifndef TZFAST_CUDA_ARCHS
#define TZFAST_CUDA_ARCHS ""
#endif

namespace py = pybind11;

namespace {

std::vector<std::string> split_archs(const std::string& s) {
  std::vector<std::string> out;
  std::string cur;
  for (char ch : s) {
    if (ch == ',' || ch == ';' || ch == ' ') {
      if (!cur.empty()) out.push_back(cur);
      cur.clear();
    } else {
      cur.push_back(ch);
    }
  }
  if (!cur.empty()) out.push_back(cur);
  return out;
}

std::string compiler() {
#if defined(__clang__)
  return std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
  return std::string("gcc ") + __VERSION__;
#else
  return "unknown";
#endif
}

py::dict build_info() {
  py::dict d;
  d["version"] = TZFAST_VERSION;
  std::vector<std::string> compiled;
  for (const char* const* p = tzfast::cpu::simd_compiled(); *p != nullptr; ++p) {
    compiled.emplace_back(*p);
  }
  d["simd_compiled"] = compiled;
  d["simd_selected"] = std::string(tzfast::cpu::kernels().name);
#ifdef TZFAST_WITH_CUDA
  d["cuda_enabled"] = true;
#else
  d["cuda_enabled"] = false;
#endif
  d["cuda_archs"] = split_archs(TZFAST_CUDA_ARCHS);  // empty in a CPU-only build
  d["compiler"] = compiler();
  d["flags"] = TZFAST_BUILD_FLAGS;
  return d;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "tzfast native extension: importing it registers torch.ops.tzfast.*";
  m.def("build_info", &build_info,
        "Build information: version, SIMD levels compiled and selected, CUDA, compiler, flags.");
  m.def(
      "_philox4x32_10",
      [](uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0, uint32_t k1) {
        tzfast::rng::philox4x32_10(c0, c1, c2, c3, k0, k1);
        return std::make_tuple(c0, c1, c2, c3);
      },
      "Philox4x32-10 of one counter under one key (the header's function; for the "
      "known-answer tests).");
  m.def(
      "simd_supported",
      [](const std::string& name) { return tzfast::cpu::simd_supported(name.c_str()); },
      "Whether this CPU can run the named SIMD level.");
  tzfast::register_direct_calls(m);
}
