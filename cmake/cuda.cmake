# CUDA parts of the tzfast build. Included at the end of the top-level CMakeLists.txt
# (`if(EXISTS ${CMAKE_CURRENT_SOURCE_DIR}/cmake/cuda.cmake) include(...)`), after the `_C`
# target exists.
#
# (a) `cuda_compile_check`: compiles every cuda/*.cu with nvcc, for each of
#     TZFAST_CUDA_CHECK_ARCHS, as errors on any nvcc, cudafe, ptxas or host-compiler warning.
#     No torch headers are involved, so this works in the ordinary CPU-only build against the
#     CPU torch wheel. Without nvcc it prints "nvcc not found: CUDA compile check skipped"
#     and succeeds. It is not part of ALL: `cmake --build <dir> --target cuda_compile_check`.
#
# (b) TZFAST_CUDA=ON (needs a CUDA build of torch; `find_package(Torch)` has then already
#     enabled the CUDA language): cuda/*.cu are compiled into an object library that is linked
#     into `_C` together with csrc/ops/*_cuda.cpp, and `_C` gets the compile definitions
#     TZFAST_WITH_CUDA=1 and TZFAST_CUDA_ARCHS="80,90" (comma-separated, from
#     TZFAST_CUDA_ARCHS) for build_info().

set(_tz_root "${CMAKE_CURRENT_LIST_DIR}/..")
get_filename_component(_tz_root "${_tz_root}" ABSOLUTE)

option(TZFAST_CUDA "Build the CUDA kernels into _C (needs a CUDA build of torch)" OFF)
set(TZFAST_CUDA_ARCHS "80;90" CACHE STRING "SM architectures for the CUDA kernels in _C")
set(TZFAST_CUDA_CHECK_ARCHS "80;90" CACHE STRING "SM architectures for cuda_compile_check")

file(GLOB _tz_cuda_sources CONFIGURE_DEPENDS "${_tz_root}/cuda/*.cu")
file(GLOB _tz_cuda_headers CONFIGURE_DEPENDS
     "${_tz_root}/cuda/*.h" "${_tz_root}/cuda/*.cuh" "${_tz_root}/csrc/include/tzfast/*.h")
list(SORT _tz_cuda_sources)

# Flags shared by the check and the real build: every warning an error, host -Wall -Wextra.
# --fmad=false: no contraction of a*b + c into an FMA, like the CPU build's -ffp-contract=off,
# so the shared elementwise math rounds the same way on both devices.
set(_tz_nvcc_strict_flags
    --Werror=all-warnings
    -Xcompiler=-Wall,-Wextra,-Werror
    --fmad=false)

# ---------------------------------------------------------------------------------------------
# (a) torch-free compile check
# ---------------------------------------------------------------------------------------------
if(CMAKE_CUDA_COMPILER)
  set(TZFAST_NVCC "${CMAKE_CUDA_COMPILER}" CACHE FILEPATH "nvcc used by cuda_compile_check")
else()
  find_program(TZFAST_NVCC NAMES nvcc
               HINTS ENV CUDA_HOME ENV CUDA_PATH /usr/local/cuda
               PATH_SUFFIXES bin
               DOC "nvcc used by cuda_compile_check")
endif()

if(TZFAST_NVCC)
  set(_tz_check_dir "${CMAKE_CURRENT_BINARY_DIR}/cuda_compile_check")
  set(_tz_check_outputs "")
  foreach(_tz_src IN LISTS _tz_cuda_sources)
    get_filename_component(_tz_name "${_tz_src}" NAME_WE)
    foreach(_tz_arch IN LISTS TZFAST_CUDA_CHECK_ARCHS)
      set(_tz_obj "${_tz_check_dir}/${_tz_name}.sm_${_tz_arch}.o")
      add_custom_command(
        OUTPUT "${_tz_obj}"
        COMMAND "${CMAKE_COMMAND}" -E make_directory "${_tz_check_dir}"
        COMMAND "${TZFAST_NVCC}"
                -ccbin "${CMAKE_CXX_COMPILER}"
                -std=c++17
                -O3
                "-gencode=arch=compute_${_tz_arch},code=sm_${_tz_arch}"
                ${_tz_nvcc_strict_flags}
                -I "${_tz_root}/csrc/include"
                -I "${_tz_root}"
                -c "${_tz_src}"
                -o "${_tz_obj}"
        DEPENDS "${_tz_src}" ${_tz_cuda_headers}
        COMMENT "nvcc -Werror sm_${_tz_arch}: cuda/${_tz_name}.cu"
        VERBATIM)
      list(APPEND _tz_check_outputs "${_tz_obj}")
    endforeach()
  endforeach()
  list(LENGTH _tz_cuda_sources _tz_n_sources)
  add_custom_target(cuda_compile_check
    DEPENDS ${_tz_check_outputs}
    COMMAND "${CMAKE_COMMAND}" -E echo
            "CUDA compile check passed: ${_tz_n_sources} file(s) x sm {${TZFAST_CUDA_CHECK_ARCHS}} with ${TZFAST_NVCC}"
    VERBATIM)
  message(STATUS "tzfast: cuda_compile_check uses ${TZFAST_NVCC} for sm {${TZFAST_CUDA_CHECK_ARCHS}}")
else()
  message(STATUS "tzfast: nvcc not found: CUDA compile check skipped")
  add_custom_target(cuda_compile_check
    COMMAND "${CMAKE_COMMAND}" -E echo "nvcc not found: CUDA compile check skipped"
    VERBATIM)
endif()

# ---------------------------------------------------------------------------------------------
# (b) CUDA kernels inside _C
# ---------------------------------------------------------------------------------------------
if(TZFAST_CUDA)
  if(NOT TARGET _C)
    message(FATAL_ERROR "cmake/cuda.cmake: TZFAST_CUDA=ON but there is no _C target; include "
                        "this file after the extension is defined")
  endif()
  if(NOT TARGET c10_cuda)
    message(FATAL_ERROR
      "TZFAST_CUDA=ON needs a CUDA build of torch, but the torch found by find_package(Torch) "
      "has no c10_cuda (a CPU-only wheel?). Use scripts/cuda_check.sh, which builds against "
      "torch==2.14.1 (CUDA 13.0) in .venv-cuda.")
  endif()
  if(NOT CMAKE_CUDA_COMPILER)
    enable_language(CUDA)
  endif()
  find_package(CUDAToolkit REQUIRED)

  # find_package(Torch) put gencode flags for TORCH_CUDA_ARCH_LIST (or a guessed list) into
  # CMAKE_CUDA_FLAGS and switched CMAKE_CUDA_ARCHITECTURES off; our archs are ours to choose.
  string(REGEX REPLACE "-gencode[ =]arch=compute_[0-9a-z]+,code=[a-z_0-9]+" ""
         CMAKE_CUDA_FLAGS "${CMAKE_CUDA_FLAGS}")
  # Real code for every arch, plus PTX of the newest one so later GPUs can JIT it.
  set(_tz_archs "")
  list(LENGTH TZFAST_CUDA_ARCHS _tz_n_archs)
  math(EXPR _tz_last "${_tz_n_archs} - 1")
  foreach(_tz_i RANGE ${_tz_last})
    list(GET TZFAST_CUDA_ARCHS ${_tz_i} _tz_arch)
    if(_tz_i EQUAL _tz_last)
      list(APPEND _tz_archs "${_tz_arch}")
    else()
      list(APPEND _tz_archs "${_tz_arch}-real")
    endif()
  endforeach()

  # The kernels: torch-free, their own strict flags, position independent for the module.
  add_library(tzfast_cuda_kernels OBJECT ${_tz_cuda_sources})
  set_target_properties(tzfast_cuda_kernels PROPERTIES
    CUDA_ARCHITECTURES "${_tz_archs}"
    CUDA_STANDARD 17
    CUDA_STANDARD_REQUIRED ON
    CUDA_RUNTIME_LIBRARY Shared
    POSITION_INDEPENDENT_CODE ON)
  target_include_directories(tzfast_cuda_kernels PRIVATE "${_tz_root}/csrc/include" "${_tz_root}")
  target_compile_options(tzfast_cuda_kernels PRIVATE ${_tz_nvcc_strict_flags})

  # The glue: tensor checks and TORCH_LIBRARY_IMPL(tzfast, CUDA, m), host compiler.
  file(GLOB _tz_cuda_glue CONFIGURE_DEPENDS "${_tz_root}/csrc/ops/*_cuda.cpp")
  target_sources(_C PRIVATE ${_tz_cuda_glue} $<TARGET_OBJECTS:tzfast_cuda_kernels>)
  target_include_directories(_C PRIVATE "${_tz_root}")
  string(REPLACE ";" "," _tz_archs_csv "${TZFAST_CUDA_ARCHS}")
  target_compile_definitions(_C PRIVATE
    TZFAST_WITH_CUDA=1
    "TZFAST_CUDA_ARCHS=\"${_tz_archs_csv}\"")
  set_target_properties(_C PROPERTIES CUDA_RUNTIME_LIBRARY Shared)
  target_link_libraries(_C PRIVATE CUDA::cudart c10_cuda)

  # The CUDA torch (2.14) headers need C++20 (operator<=>, string_view::starts_with).
  get_target_property(_tz_cxx_std _C CXX_STANDARD)
  if(NOT _tz_cxx_std OR _tz_cxx_std LESS 20)
    set_target_properties(_C PROPERTIES CXX_STANDARD 20 CXX_STANDARD_REQUIRED ON)
  endif()

  message(STATUS "tzfast: CUDA kernels enabled for sm {${TZFAST_CUDA_ARCHS}} "
                 "(${CMAKE_CUDA_COMPILER}, CUDA ${CMAKE_CUDA_COMPILER_VERSION})")
endif()
