// Direct (dispatcher-free) CPU calls bound into tzfast._C; see direct_calls.cpp.
#pragma once

#include <pybind11/pybind11.h>

namespace tzfast {

void register_direct_calls(pybind11::module_& m);

}  // namespace tzfast
