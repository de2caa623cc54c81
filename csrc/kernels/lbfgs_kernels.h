// Interface between the ATen-facing L-BFGS ops (csrc/ops/lbfgs.cpp) and their CPU kernels
// (csrc/kernels/lbfgs_kernels.cpp, compiled once per SIMD level like the other kernels;
// docs/lbfgs.md has the math).
//
// Every kernel works on a range [begin, end) of the flat element index of one bucket; the op
// layer cuts the range into fixed blocks (kLbfgsBlock elements) and runs blocks in parallel,
// then reduces the blocks' partial results in block order, so results do not depend on the
// thread count. A "list" argument (the parameters, the gradients, the vector to precondition,
// the output) is a table of contiguous runs sorted by flat offset that covers [0, n) exactly.
//
// Plain data only (raw pointers, counts, doubles), as in cpu_kernels.h. Float32 and float64.
#pragma once

#include <cstdint>

#include "cpu_kernels.h"

namespace tzfast {
namespace cpu {

constexpr int64_t kLbfgsBlock = 4096;
// Blocks one call of dots/combine handles (so each history row is read in runs of
// kLbfgsSuper * kLbfgsBlock elements); the per-block sums do not depend on it.
constexpr int64_t kLbfgsSuper = 8;
// Scratch a dots/combine call may use: two super-blocks of float64.
constexpr int64_t kLbfgsScratchBytes = 2 * kLbfgsSuper * kLbfgsBlock * 8;

// One contiguous run of a list tensor: `n` elements at `ptr`, flat indices [offset, offset + n).
struct FlatRun {
  void* ptr;
  int64_t n;
  int64_t offset;
};

struct FlatList {
  const FlatRun* runs;
  int64_t count;
};

// lbfgs_pair: with s = p - prev[0], y = g - prev[1] (prev is [2, n]):
//   pair[0] = s, pair[1] = y (when pair is not null), next[0] = p, next[1] = g;
//   stats[0] += sum s*y (float64), stats[1] = max(stats[1], max |s|), stats[2] = max(.., |y|),
//   stats[3] += number of NaN in s or y.
// With prev null (the first step) only next is written.
struct LbfgsPairCall {
  DType dtype;
  int64_t n;
  FlatList p, g;
  const void* prev;
  void* next;
  void* pair;
};

// lbfgs_dots: for j < rows, with h_j = hist[row[j]] (hist is [*, n] contiguous), and for each
// block k of [begin, end) (begin a multiple of kLbfgsBlock, at most kLbfgsSuper blocks):
//   out[k*3*rows + 3j] += h_j . x over the block, and when col_s >= 0 the same at + 1 with
//   hist[col_s] and at + 2 with hist[col_y] (sums in the data's type, added in float64).
struct LbfgsDotsCall {
  DType dtype;
  int64_t n;
  const void* hist;
  const int64_t* row;
  int64_t rows;
  FlatList x;
  int64_t col_s, col_y;
};

// lbfgs_combine: out = gamma * x + sum_j coef[j] * hist[row[j]] (in float64, rounded once).
struct LbfgsCombineCall {
  DType dtype;
  int64_t n;
  const void* hist;
  FlatList x;
  FlatList out;
  double gamma;
  const int64_t* row;
  const double* coef;
  int64_t terms;
};

struct LbfgsTable {
  const char* name;
  void (*pair)(const LbfgsPairCall&, int64_t begin, int64_t end, double stats[4]);
  // scratch: kLbfgsScratchBytes bytes per call (per thread), for blocks spanning tensors
  void (*dots)(const LbfgsDotsCall&, int64_t begin, int64_t end, double* out, void* scratch);
  void (*combine)(const LbfgsCombineCall&, int64_t begin, int64_t end, void* scratch);
};

const LbfgsTable& lbfgs_kernels();
const LbfgsTable* lbfgs_kernels_by_name(const char* name);

}  // namespace cpu
}  // namespace tzfast
