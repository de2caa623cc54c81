// CPU kernels of the perturbation ops (docs/perturbation.md): random directions generated in
// tiles, in L1, and combined into the output in one pass. Compiled once per SIMD level with
// -DTZ_ISA=<level> and that level's -m flags, like elementwise_kernels.cpp (same ODR rule:
// everything has internal linkage except tzfast::cpu::<level>::perturb_table()).
//
// A tile is a window of kTile elements aligned in global element index. For each direction
// the tile's Philox blocks are computed (AVX2 intrinsics at the avx2 level, 8 blocks per
// instruction; a plain loop elsewhere: integer arithmetic, so every path gives the same bits),
// then the distribution turns the words into float32 values with the functions of
// tzfast/random.h, in loops GCC vectorises as written (-ffp-contract=off keeps every value
// bitwise identical to the scalar code and to CUDA), and the tile's weighted sum is
// accumulated in the compute type in an L1 buffer (Rademacher: straight from the bits, the sums
// in registers). Only then is the output read and written, once. With one direction the
// values go straight into the output.

#include <algorithm>
#include <cstdint>

#include "cpu_kernels.h"
#include "half_bits.h"
#include "perturb_kernels.h"
#include "tzfast/random.h"

#if defined(__AVX2__)
#include <immintrin.h>
#endif

#ifndef TZ_ISA
#error "compile with -DTZ_ISA=<simd level>"
#endif

#define TZ_STR2(x) #x
#define TZ_STR(x) TZ_STR2(x)

namespace tzfast {
namespace cpu {
namespace TZ_ISA {
namespace {

namespace rng = ::tzfast::rng;

// Elements per tile: a multiple of 8 blocks of every distribution (8 * 128), and a divisor of
// rng::kSqNormBlock.
constexpr int64_t kTile = 1024;
constexpr int64_t kMaxBlocks = kTile / 4;
static_assert(kTile % (8 * 128) == 0, "a tile holds whole groups of 8 blocks");
static_assert(rng::kSqNormBlock % kTile == 0, "sq-norm blocks are whole tiles");

template <typename T>
using C_t = typename Compute<T>::type;

// Philox words of up to kMaxBlocks blocks, one array per word of the block.
struct Words {
  alignas(64) uint32_t w[4][kMaxBlocks];
};

// ------------------------------------------------------------------------------ Philox
// Blocks b0 .. b0 + nb - 1 of direction `sample` into words.w[0..3][0 .. nb). The caller
// guarantees b0 % 8 == 0, nb % 8 == 0, nb <= kMaxBlocks, and that the blocks share their
// high 32 bits (they lie in one tile).
#if defined(__AVX2__)
// 8 blocks per vector. mulhilo: the even lanes' 64-bit products from vpmuludq, the odd lanes'
// from vpmuludq of the vector shifted right by 32; high halves blended, low halves vpmulld.
TZ_INLINE void mulhilo8(__m256i a, __m256i m, __m256i& hi, __m256i& lo) {
  const __m256i even = _mm256_mul_epu32(a, m);
  const __m256i odd = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), m);
  hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
  lo = _mm256_mullo_epi32(a, m);
}

void philox_tile(rng::Key key, uint32_t sample, uint64_t b0, int64_t nb, Words& words) {
  const __m256i m0 = _mm256_set1_epi32(static_cast<int>(rng::kPhiloxM0));
  const __m256i m1 = _mm256_set1_epi32(static_cast<int>(rng::kPhiloxM1));
  __m256i k0[rng::kPhiloxRounds];
  __m256i k1[rng::kPhiloxRounds];
  for (int r = 0; r < rng::kPhiloxRounds; ++r) {
    const uint32_t r32 = static_cast<uint32_t>(r);
    k0[r] = _mm256_set1_epi32(static_cast<int>(key.k0 + r32 * rng::kPhiloxW0));
    k1[r] = _mm256_set1_epi32(static_cast<int>(key.k1 + r32 * rng::kPhiloxW1));
  }
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i c1 = _mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(b0 >> 32)));
  const __m256i c2 = _mm256_set1_epi32(static_cast<int>(sample));
  const __m256i c3 = _mm256_set1_epi32(static_cast<int>(rng::kDirectionStream));
  const uint32_t lo = static_cast<uint32_t>(b0);
  for (int64_t j = 0; j < nb; j += 8) {
    const uint32_t first = lo + static_cast<uint32_t>(j);  // no carry: the blocks share hi32
    __m256i x0 = _mm256_add_epi32(_mm256_set1_epi32(static_cast<int>(first)), lane);
    __m256i x1 = c1;
    __m256i x2 = c2;
    __m256i x3 = c3;
#pragma GCC unroll 10
    for (int r = 0; r < rng::kPhiloxRounds; ++r) {
      __m256i hi0, lo0, hi1, lo1;
      mulhilo8(x0, m0, hi0, lo0);
      mulhilo8(x2, m1, hi1, lo1);
      x0 = _mm256_xor_si256(_mm256_xor_si256(hi1, x1), k0[r]);
      x1 = lo1;
      x2 = _mm256_xor_si256(_mm256_xor_si256(hi0, x3), k1[r]);
      x3 = lo0;
    }
    _mm256_store_si256(reinterpret_cast<__m256i*>(words.w[0] + j), x0);
    _mm256_store_si256(reinterpret_cast<__m256i*>(words.w[1] + j), x1);
    _mm256_store_si256(reinterpret_cast<__m256i*>(words.w[2] + j), x2);
    _mm256_store_si256(reinterpret_cast<__m256i*>(words.w[3] + j), x3);
  }
}
#else
void philox_tile(rng::Key key, uint32_t sample, uint64_t b0, int64_t nb, Words& words) {
  for (int64_t j = 0; j < nb; ++j) {
    uint32_t x0, x1, x2, x3;
    rng::direction_block(key, sample, b0 + static_cast<uint64_t>(j), x0, x1, x2, x3);
    words.w[0][j] = x0;
    words.w[1][j] = x1;
    words.w[2][j] = x2;
    words.w[3][j] = x3;
  }
}
#endif

// ------------------------------------------------------------------------------ distributions
// Element order: block j gives elements 4j .. 4j + 3 (lane = word), or, for Rademacher,
// 128j .. 128j + 127 (word (e / 32) % 4, bit e % 32).
void gaussian_tile(int64_t nb, const Words& words, float* __restrict z) {
  const uint32_t* __restrict w0 = words.w[0];
  const uint32_t* __restrict w1 = words.w[1];
  const uint32_t* __restrict w2 = words.w[2];
  const uint32_t* __restrict w3 = words.w[3];
  for (int64_t j = 0; j < nb; ++j) {
    float a, b, c, d;
    rng::box_muller(w0[j], w1[j], a, b);
    rng::box_muller(w2[j], w3[j], c, d);
    z[4 * j] = a;
    z[4 * j + 1] = b;
    z[4 * j + 2] = c;
    z[4 * j + 3] = d;
  }
}

void uniform_tile(int64_t nb, const Words& words, float* __restrict z) {
  const uint32_t* __restrict w0 = words.w[0];
  const uint32_t* __restrict w1 = words.w[1];
  const uint32_t* __restrict w2 = words.w[2];
  const uint32_t* __restrict w3 = words.w[3];
  for (int64_t j = 0; j < nb; ++j) {
    z[4 * j] = rng::uniform_value(w0[j]);
    z[4 * j + 1] = rng::uniform_value(w1[j]);
    z[4 * j + 2] = rng::uniform_value(w2[j]);
    z[4 * j + 3] = rng::uniform_value(w3[j]);
  }
}

void rademacher_tile(int64_t nb, const Words& words, float* __restrict z) {
  for (int64_t j = 0; j < nb; ++j) {
    for (int q = 0; q < 4; ++q) {
      const uint32_t word = words.w[q][j];
      float* __restrict zq = z + 128 * j + 32 * q;
      for (uint32_t b = 0; b < 32; ++b) zq[b] = rng::rademacher_value(word, b);
    }
  }
}

// Values of the elements of blocks [b0, b0 + nb) of direction `sample` into z[0 .. nb * E).
void direction_tile(int32_t dist, rng::Key key, uint32_t sample, int64_t b0, int64_t nb,
                    Words& words, float* __restrict z) {
  philox_tile(key, sample, static_cast<uint64_t>(b0), nb, words);
  switch (dist) {
    case rng::kRademacher: rademacher_tile(nb, words, z); break;
    case rng::kUniform: uniform_tile(nb, words, z); break;
    default: gaussian_tile(nb, words, z); break;  // kGaussian, kSphere
  }
}

// The blocks a tile needs for global elements [g, t1) (inside one tile window): from the
// 8-aligned block at or below g's block, a multiple of 8 blocks, all inside the window.
struct TileBlocks {
  int64_t b0;
  int64_t nb;
};

TZ_INLINE TileBlocks tile_blocks(int64_t g, int64_t t1, int64_t per_block) {
  const int64_t b0 = (g / per_block) & ~int64_t(7);
  const int64_t b1 = (t1 + per_block - 1) / per_block;
  return TileBlocks{b0, (b1 - b0 + 7) & ~int64_t(7)};
}

// ------------------------------------------------------------------------------ accumulate
// The weighted sum of the directions over one tile, into acc[0 .. nb * per_block) (indexed like
// the tile's z: element b0 * per_block + i at i). Only [lo, hi) needs to be right.
//
// acc = w_0 z_0, then acc = acc + w_k z_k for k = 1, 2, ... (in the compute type C).

// Any distribution: each direction's tile of values, then one pass over [lo, hi) of acc.
template <typename C>
void directions_sum_generic(const DirectionsCall& c, rng::Key key, TileBlocks tb, int64_t lo,
                            int64_t hi, Words& words, float* __restrict zbuf,
                            C* __restrict acc) {
  for (int64_t k = 0; k < c.count; ++k) {
    direction_tile(c.dist, key, c.samples[k], tb.b0, tb.nb, words, zbuf);
    const C w = static_cast<C>(c.weights[k]);
    if (k == 0) {
      for (int64_t e = lo; e < hi; ++e) acc[e] = w * static_cast<C>(zbuf[e]);
    } else {
      for (int64_t e = lo; e < hi; ++e) acc[e] = acc[e] + w * static_cast<C>(zbuf[e]);
    }
  }
}

// Rademacher: w_k z_k is +w_k or -w_k (exactly), chosen by one bit. The words of up to
// kGroup directions are generated first; then, kStep words (32 elements each) at a time, the
// running sums stay in registers while every direction of the group adds its +w or -w (bit b
// moved to the sign position selects: vpsllvd + vblendvps + vaddps per 8 elements).
constexpr int64_t kGroup = 16;

template <typename C>
void directions_sum_rademacher(const DirectionsCall& c, rng::Key key, TileBlocks tb, int64_t lo,
                               int64_t hi, Words& words, C* __restrict acc) {
  constexpr int64_t kWords = 4 * (kTile / 128);            // 32-element words in a tile
  constexpr int64_t kStep = sizeof(C) == 4 ? 2 : 1;        // words per step: 8 ymm of sums
  static_assert(kWords % kStep == 0, "whole steps in a tile");
  alignas(64) uint32_t bits[kGroup][kWords];
  C wpos[kGroup];
  C wneg[kGroup];
  const int64_t m0 = lo / 32 / kStep * kStep;
  const int64_t m1 = ((hi + 31) / 32 + kStep - 1) / kStep * kStep;  // <= kWords
  for (int64_t k0 = 0; k0 < c.count; k0 += kGroup) {
    const int64_t kn = std::min(kGroup, c.count - k0);
    for (int64_t kk = 0; kk < kn; ++kk) {
      philox_tile(key, c.samples[k0 + kk], static_cast<uint64_t>(tb.b0), tb.nb, words);
      for (int64_t j = 0; j < tb.nb; ++j) {
        for (int q = 0; q < 4; ++q) bits[kk][4 * j + q] = words.w[q][j];
      }
      wpos[kk] = static_cast<C>(c.weights[k0 + kk]);
      wneg[kk] = -wpos[kk];
    }
    for (int64_t m = m0; m < m1; m += kStep) {
      C sum[32 * kStep];
      C* __restrict a = acc + 32 * m;
      int64_t kk = 0;
      if (k0 == 0) {  // sum = w_0 z_0
        for (int q = 0; q < kStep; ++q) {
          const uint32_t word = bits[0][m + q];
          for (uint32_t b = 0; b < 32; ++b) {
            sum[32 * q + b] = static_cast<int32_t>(word << (31u - b)) < 0 ? wneg[0] : wpos[0];
          }
        }
        kk = 1;
      } else {
        for (int b = 0; b < 32 * kStep; ++b) sum[b] = a[b];
      }
      for (; kk < kn; ++kk) {
        const C wp = wpos[kk];
        const C wn = wneg[kk];
        for (int q = 0; q < kStep; ++q) {
          const uint32_t word = bits[kk][m + q];
          for (uint32_t b = 0; b < 32; ++b) {
            sum[32 * q + b] =
                sum[32 * q + b] + (static_cast<int32_t>(word << (31u - b)) < 0 ? wn : wp);
          }
        }
      }
      for (int b = 0; b < 32 * kStep; ++b) a[b] = sum[b];
    }
  }
}

template <typename T, bool ACC>
void directions_loop(const DirectionsCall& c, const DirectionPiece* pcs, int64_t count) {
  using C = C_t<T>;
  Words words;
  alignas(64) float zbuf[kTile];
  alignas(64) C accbuf[kTile];
  const rng::Key key{c.k0, c.k1};
  const int64_t per_block = rng::elements_per_block(c.dist);
  for (int64_t p = 0; p < count; ++p) {
    T* out = static_cast<T*>(pcs[p].out);
    const int64_t begin = pcs[p].offset;
    const int64_t end = begin + pcs[p].n;
    for (int64_t g = begin; g < end;) {
      const int64_t t1 = std::min(end, (g / kTile + 1) * kTile);
      const int64_t len = t1 - g;
      const TileBlocks tb = tile_blocks(g, t1, per_block);
      const int64_t lo = g - tb.b0 * per_block;  // g's index in the tile buffers
      T* __restrict o = out + (g - begin);
      if (c.count == 1 && c.dist != rng::kRademacher) {
        // one direction: its values straight into the output (the same operations as below)
        direction_tile(c.dist, key, c.samples[0], tb.b0, tb.nb, words, zbuf);
        const C w = static_cast<C>(c.weights[0]);
        const float* __restrict z = zbuf + lo;
        if (ACC) {
          for (int64_t e = 0; e < len; ++e) {
            o[e] = store<T>(load(o[e]) + w * static_cast<C>(z[e]));
          }
        } else {
          for (int64_t e = 0; e < len; ++e) o[e] = store<T>(w * static_cast<C>(z[e]));
        }
        g = t1;
        continue;
      }
      if (c.dist == rng::kRademacher) {
        directions_sum_rademacher<C>(c, key, tb, lo, lo + len, words, accbuf);
      } else {
        directions_sum_generic<C>(c, key, tb, lo, lo + len, words, zbuf, accbuf);
      }
      const C* __restrict acc = accbuf + lo;
      if (ACC) {
        for (int64_t e = 0; e < len; ++e) o[e] = store<T>(load(o[e]) + acc[e]);
      } else {
        for (int64_t e = 0; e < len; ++e) o[e] = store<T>(acc[e]);
      }
      g = t1;
    }
  }
}

template <typename T>
struct Tag {
  using type = T;
};

void accumulate_directions(const DirectionsCall& c, const DirectionPiece* pcs, int64_t count) {
  auto run = [&](auto tag) {
    using T = typename decltype(tag)::type;
    if (c.accumulate) {
      directions_loop<T, true>(c, pcs, count);
    } else {
      directions_loop<T, false>(c, pcs, count);
    }
  };
  switch (c.dtype) {
    case DType::Float32: run(Tag<float>{}); break;
    case DType::Float64: run(Tag<double>{}); break;
    case DType::Float16: run(Tag<f16>{}); break;
    case DType::BFloat16: run(Tag<bf16>{}); break;
  }
}

// ------------------------------------------------------------------------------ sq norm
void sq_norm_blocks(const SqNormCall& c, int64_t first, int64_t count, double* block_values) {
  Words words;
  alignas(64) float zbuf[kTile];
  const rng::Key key{c.k0, c.k1};
  const int64_t per_block = rng::elements_per_block(c.dist);
  constexpr int L = rng::kSqNormLanes;
  for (int64_t b = 0; b < count; ++b) {
    double s[L] = {0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0};
    const int64_t begin = (first + b) * rng::kSqNormBlock;
    const int64_t end = std::min(c.numel, begin + rng::kSqNormBlock);
    for (int64_t g = begin; g < end; g += kTile) {
      const int64_t len = std::min(kTile, end - g);
      const TileBlocks tb = tile_blocks(g, g + len, per_block);
      direction_tile(c.dist, key, c.sample, tb.b0, tb.nb, words, zbuf);
      // g is a multiple of kTile, so z starts at zbuf; zeros after the last element add
      // nothing (s + 0.0 == s for s >= 0)
      const int64_t padded = (len + L - 1) / L * L;
      for (int64_t e = len; e < padded; ++e) zbuf[e] = 0.0f;
      for (int64_t j = 0; j < padded; j += L) {
        for (int l = 0; l < L; ++l) {
          const double v = static_cast<double>(zbuf[j + l]);
          s[l] = s[l] + v * v;
        }
      }
    }
    block_values[b] = ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
  }
}

const PerturbTable kPerturbTable = {TZ_STR(TZ_ISA), &accumulate_directions, &sq_norm_blocks};

}  // namespace

const PerturbTable& perturb_table() { return kPerturbTable; }

}  // namespace TZ_ISA
}  // namespace cpu
}  // namespace tzfast
