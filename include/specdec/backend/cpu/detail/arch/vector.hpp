#pragma once
/// \file backend/cpu/detail/arch/vector.hpp
/// The backend's vector layer: the 16-lane float vector every kernel computes in
/// (GCC/Clang vector extensions), its loads and stores, the multiply-adds whose rounding
/// the fixed summation orders rely on, and the fixed-order horizontal sums.
#include <algorithm>
#include <cmath>
#include <cstddef>

#if defined(__x86_64__) && defined(FP_FAST_FMAF) && (defined(__AVX512F__) || defined(__AVX2__))
#include <immintrin.h>
#endif

#if defined(__FAST_MATH__)
#warning "specdec cpu backend: -ffast-math allows reassociation; block and single-token forwards may then differ in the last bits"
#endif

namespace specdec::cpu::detail {

typedef float v16 __attribute__((vector_size(64)));

inline constexpr std::size_t lanes = 16;

/// A v16 at any float-aligned address (and allowed to alias floats).
typedef float v16_unaligned __attribute__((vector_size(64), aligned(4), may_alias));

// Vectors are passed by reference so that builds without AVX-512 do not warn about the
// ABI of 64-byte vector arguments (-Wpsabi).
/// One 16-float load. A vector-typed load, not a 64-byte memcpy: with Intel tuning
/// (-march=native there implies -mprefer-vector-width=256) GCC 12 copies a memcpy into a
/// vector that lives on the stack as two 32-byte halves, and the 64-byte reload that
/// follows cannot be forwarded from two stores, so the attention's value sums would stall
/// on a failed store forward at every position (see bench/bench_forward.cpp).
inline void load16(v16& v, const float* p) noexcept {
  v = *reinterpret_cast<const v16_unaligned*>(p);
}
/// One 16-float store, vector-typed for the same reason: a memcpy from an accumulator
/// takes its address, and GCC then keeps a tile's accumulators in memory too, storing
/// every one of them on every column.
inline void store16(float* p, const v16& v) noexcept { *reinterpret_cast<v16_unaligned*>(p) = v; }
/// The first n < 16 floats of v, through a copy whose address may be taken.
inline void store_first(float* p, v16 v, std::size_t n) noexcept { __builtin_memcpy(p, &v, n * sizeof(float)); }

/// c + a * b with a rounding behaviour fixed by the build, not by the optimiser: a fused
/// multiply-add when the target has one (FP_FAST_FMAF), otherwise a multiply and an add
/// (no FMA instruction exists then, so nothing can be contracted). Written explicitly
/// because GCC may vectorise a scalar loop in one inlined copy and not in another, and
/// only the scalar copy would then be contracted into FMAs.
inline float fmadd(float a, float b, float c) noexcept {
#ifdef FP_FAST_FMAF
  return std::fma(a, b, c);
#else
  return a * b + c;
#endif
}

/// acc[i] = fmadd(w[i], x, acc[i]) for the 16 lanes: the weight products' multiply-add,
/// rounded by the same rule as `fmadd` in every build and at every optimisation level
/// (GCC contracts a vector `acc += w * x` into an FMA only from -O2 on, so an -O1 build
/// would round it differently from `fmadd`; the result is unchanged where it did).
inline void fmadd_lanes(v16& acc, const v16& w, float x) noexcept {
#if defined(__x86_64__) && defined(FP_FAST_FMAF) && defined(__AVX512F__)
  acc = (v16)_mm512_fmadd_ps((__m512)w, _mm512_set1_ps(x), (__m512)acc);
#elif defined(__x86_64__) && defined(FP_FAST_FMAF) && defined(__AVX2__)
  __m256 w2[2], a2[2];
  __builtin_memcpy(w2, &w, sizeof(w));
  __builtin_memcpy(a2, &acc, sizeof(acc));
  const __m256 xv = _mm256_set1_ps(x);
  a2[0] = _mm256_fmadd_ps(w2[0], xv, a2[0]);
  a2[1] = _mm256_fmadd_ps(w2[1], xv, a2[1]);
  __builtin_memcpy(&acc, a2, sizeof(acc));
#elif defined(FP_FAST_FMAF)
  for (int i = 0; i < 16; ++i) acc[i] = std::fma(w[i], x, acc[i]);
#else
  acc += w * x;  // no FMA instruction: a multiply and an add, nothing to contract
#endif
}

/// Keeps a loaded vector in a register: without this GCC folds the load into every FMA
/// that uses it as a memory operand, doubling the loads of the inner loop (load ports,
/// not FMAs, then bound the block forward). The empty asm changes no value. (Not for
/// weights used by one token only: see dot_tile.)
inline void pin_register([[maybe_unused]] v16& v) noexcept {
#if defined(__x86_64__) && defined(__AVX512F__)
  asm("" : "+v"(v));
#endif
}

typedef float v8 __attribute__((vector_size(32)));
typedef float v4 __attribute__((vector_size(16)));

/// Fixed-order horizontal sum, a binary tree over the 16 lanes:
/// a[i] = v[i] + v[i+8], b[i] = a[i] + a[i+4], c[i] = b[i] + b[i+2], c[0] + c[1].
inline float hsum16(const v16& v) noexcept {
  const v8 a = __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7) +
               __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
  const v4 b = __builtin_shufflevector(a, a, 0, 1, 2, 3) + __builtin_shufflevector(a, a, 4, 5, 6, 7);
  const float c0 = b[0] + b[2];
  const float c1 = b[1] + b[3];
  return c0 + c1;
}

/// Four hsum16 at once: {hsum16(v0), hsum16(v1), hsum16(v2), hsum16(v3)}, bit for bit.
/// The four vectors are reduced side by side through shuffles that pair lanes of one
/// vector only, so every result goes through exactly hsum16's tree (v[i] + v[i+8], then
/// + 4, then b0 + b2 and b1 + b3, then their sum); it just takes about a third of the
/// instructions of four separate reductions. Tile epilogues (one reduction per (row,
/// token) output) and attention scores (a 64-long dot product per score) spend a large
/// share of their time here.
inline v4 hsum16x4(const v16& v0, const v16& v1, const v16& v2, const v16& v3) noexcept {
  // a_k[i] = v_k[i] + v_k[i + 8]: v0, v1 in p01 (lanes 0-7, 8-15), v2, v3 in p23.
  const v16 p01 = __builtin_shufflevector(v0, v1, 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23) +
                  __builtin_shufflevector(v0, v1, 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31);
  const v16 p23 = __builtin_shufflevector(v2, v3, 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23) +
                  __builtin_shufflevector(v2, v3, 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31);
  // b_k[i] = a_k[i] + a_k[i + 4]: b_k in lanes 4k .. 4k + 3.
  const v16 b = __builtin_shufflevector(p01, p23, 0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27) +
                __builtin_shufflevector(p01, p23, 4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31);
  // c0 = b0 + b2, c1 = b1 + b3 (lanes 4k, 4k + 1), then c0 + c1 (lane 4k).
  const v16 c = b + __builtin_shufflevector(b, b, 2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13);
  const v16 d = c + __builtin_shufflevector(c, c, 1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14);
  return __builtin_shufflevector(d, d, 0, 4, 8, 12);
}

typedef int vi16 __attribute__((vector_size(64)));

}  // namespace specdec::cpu::detail
