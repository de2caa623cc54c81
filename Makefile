# tzfast developer and CI entry points. Every target is idempotent: stamp files under .venv/
# make re-running cheap (`make test` twice does the expensive setup once).
#
#   make venv        .venv with torch==2.13.0 (CPU), build tools, tzfast editable + [test,bench]
#   make build       rebuild the native extension (incremental: CMake + Ninja in $(BUILD_DIR))
#   make test        C++ tests (ctest), CUDA compile check, then pytest
#   make demo        python -m tzfast.demo
#   make bench       python -m bench.run $(BENCH_ARGS)
#   make cuda-check  bash scripts/cuda_check.sh (full CUDA build check)
#   make clean       remove build outputs (keeps .venv)
SHELL := /bin/bash
.DEFAULT_GOAL := test

PYTHON_BOOT ?= python3.11
VENV        := .venv
PY          := $(VENV)/bin/python
PIP         := $(PY) -m pip
BUILD_DIR   ?= build
BENCH_ARGS  ?=
export TZFAST_BUILD_DIR := $(abspath $(BUILD_DIR))

STAMP_TOOLS := $(VENV)/.tzfast-tools.stamp
STAMP_DEV   := $(VENV)/.tzfast-dev.stamp

.PHONY: venv build test test-cpp test-cuda-compile test-py demo bench cuda-check clean

$(PY):
	$(PYTHON_BOOT) -m venv $(VENV)

# torch pinned (a local wheel here; unpinned would pull a multi-GB CUDA build) + build tools.
$(STAMP_TOOLS): | $(PY)
	$(PIP) install torch==2.13.0
	$(PIP) install cmake ninja pybind11 setuptools wheel
	touch $@

# The editable install (metadata + dependencies + first build); redone when packaging changes.
$(STAMP_DEV): $(STAMP_TOOLS) pyproject.toml setup.py
	$(PIP) install --no-build-isolation -e '.[test,bench]'
	touch $@

venv: $(STAMP_DEV)

# Incremental rebuild of tzfast/_C*.so (Ninja decides what is out of date).
build: $(STAMP_DEV)
	$(PY) setup.py -q build_ext --inplace

CPP_TESTS = $(VENV)/bin/cmake --build $(BUILD_DIR) --target tzfast_cpp_tests && \
	$(VENV)/bin/ctest --test-dir $(BUILD_DIR) --output-on-failure
# nvcc -Werror compile check of cuda/*.cu (a target of cmake/cuda.cmake, which says so itself
# when nvcc is absent).
CUDA_COMPILE = if $(VENV)/bin/ninja -C $(BUILD_DIR) -t targets all 2>/dev/null | grep -q '^cuda_compile_check:'; \
	then $(VENV)/bin/cmake --build $(BUILD_DIR) --target cuda_compile_check; \
	else echo "no cuda_compile_check target in this build: CUDA compile check skipped"; fi
PY_TESTS = $(PY) -m pytest -q

test-cpp: build
	$(CPP_TESTS)

test-cuda-compile: build
	@$(CUDA_COMPILE)

test-py: build
	$(PY_TESTS)

# Every stage runs even when an earlier one fails; the target fails if any did.
test: build
	@status=0; \
	echo "== C++ tests (ctest)"; ( $(CPP_TESTS) ) || status=1; \
	echo "== CUDA compile check"; ( $(CUDA_COMPILE) ) || status=1; \
	echo "== Python tests (pytest)"; $(PY_TESTS) || status=1; \
	if [ $$status -ne 0 ]; then echo "make test: FAILED (see above)"; fi; \
	exit $$status

demo: build
	$(PY) -m tzfast.demo

bench: build
	$(PY) -m bench.run $(BENCH_ARGS)

cuda-check:
	bash scripts/cuda_check.sh

clean:
	rm -rf $(BUILD_DIR) tzfast/_C*.so *.egg-info
	find . -name __pycache__ -type d -not -path './.venv*' -prune -exec rm -rf {} +
