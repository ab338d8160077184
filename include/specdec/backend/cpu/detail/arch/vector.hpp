#pragma once
/// \file backend/cpu/detail/arch/vector.hpp
/// The backend's one vector layer: every kernel computes in `v16`, 16 floats written with
/// GCC/Clang vector extensions (one AVX-512 register, two AVX2 registers, or whatever the
/// compiler makes of it elsewhere), through the operations declared here, or in the
/// packets and `elem_vec`s below where a build keeps a `v16` in memory. This is the
/// only place that knows instruction sets, in the manner of Eigen's arch/*/PacketMath.h:
/// the generic part is here, and the few operations whose instruction decides the
/// rounding or the speed come from exactly one instruction-set file, chosen at compile
/// time:
///
/// | file              | chosen when                                  |
/// | ---               | ---                                          |
/// | arch/avx512.hpp   | AVX-512F (with VNNI: the w8a8 integer tiles) |
/// | arch/avx2.hpp     | AVX2 + FMA + F16C (x86-64-v3)                |
/// | arch/scalar.hpp   | anything else (plain C++ on the vector type) |
///
/// Each of them defines, with the same result in every file:
/// - `packet16`, the 16 floats the tiles of the products keep in registers (their
///   accumulators, loaded weights and inputs): `v16` itself where one register holds it
///   (AVX-512) or nothing better is known (scalar), two `__m256` on AVX2, where GCC keeps
///   a `v16` in memory; `packet_registers`, how many packets the register file holds
///   (tile shapes are chosen to fit it); and for packets the operations below plus
///   `load16`, `store16`, `store_first`, `hsum16` and `hsum16x4`, with the `v16` forms'
///   results; optionally `SPECDEC_DETAIL_MASKED_TAILS` with `store_first` and
///   `load_first` for `v16` (the first n lanes; defined below by copies otherwise), and
///   both for `v8` where that is the build's `elem_vec` (AVX2);
/// - `fmadd_lanes(acc, a, b)`: acc[i] = fmadd(a[i], b[i], acc[i]), rounded like the
///   scalar `fmadd` below;
/// - `pin_register(v)`: keeps a loaded vector in a register (a hint, changes no value);
/// - `widen_bf16(out, p)`, `widen_fp16(out, p)`: 16 bf16 or IEEE half values to fp32,
///   exactly; `widen_q8(out, q, s)`: out[i] = float(q[i]) * s[i], one rounding (GCC 12
///   lowers the generic vector conversions for these lane by lane); optionally
///   `widen_i8(out, q)`: out[i] = float(q[i]), exactly (defined below from `widen_q8`
///   with unit scales where the file has no faster form: the same values);
/// - `SPECDEC_DETAIL_VNNI` (1 or 0) and, where it is 1, `dpbusd_lanes` (integer dot
///   products of unsigned by signed bytes, exact); where it is 0, optionally
///   `SPECDEC_DETAIL_I8_SIGN_DOTS` (AVX2: `ipacket16`, `i8_input_quad`, `load_i8_quad`,
///   `add_i8_quad_dots` and `fmadd_i8_group`, the w8a8 products' steps in 256-bit
///   integer instructions, exact);
/// - `SPECDEC_DETAIL_BF16_DOT` (1 or 0) and, where it is 1, `dpbf16_lanes` (bf16 pair dot
///   products into fp32, AVX512_BF16; timed by the compute probe, used by no kernel).
/// The results of the kernels therefore depend on whether the target has a fused
/// multiply-add, not on which of these files computes them: the AVX-512, the AVX2 and
/// the scalar build of a target with FMA give the same bits (a packet's lane i is lane i
/// of the `v16`, every reduction over the 16 lanes is hsum16's tree).
///
/// ```cpp
/// namespace d = specdec::cpu::detail;
/// float w[16], out[16];
/// d::v16 acc{}, wv;
/// d::load16(wv, w);
/// d::fmadd_lanes(acc, wv, 0.5f);  // acc[i] = fmadd(w[i], 0.5f, acc[i])
/// d::store16(out, acc);
/// d::packet16 p{}, wp;             // the same in registers: what a kernel's tile holds
/// d::load16(wp, w);
/// d::fmadd_lanes(p, wp, 0.5f);
/// d::store16(out, p);
/// ```
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <type_traits>

#if defined(__FAST_MATH__)
#warning "specdec cpu backend: -ffast-math allows reassociation; block and single-token forwards may then differ in the last bits"
#endif

namespace specdec::cpu::detail {

/// 16 floats: the vector every kernel computes in.
typedef float v16 __attribute__((vector_size(64)));
/// 16 32-bit integers (exponent bits in `exp_lanes`, integer dot products in the w8a8 tiles).
typedef int vi16 __attribute__((vector_size(64)));
typedef float v8 __attribute__((vector_size(32)));
typedef float v4 __attribute__((vector_size(16)));

inline constexpr std::size_t lanes = 16;

/// A v4 at any float-aligned address (and allowed to alias floats).
typedef float v4_unaligned __attribute__((vector_size(16), aligned(4), may_alias));
/// One 4-float store (vector-typed, like `store16`).
inline void store4(float* p, const v4& v) noexcept { *reinterpret_cast<v4_unaligned*>(p) = v; }
/// A v16 at any float-aligned address (and allowed to alias floats).
typedef float v16_unaligned __attribute__((vector_size(64), aligned(4), may_alias));
/// A vi16 at any address (and allowed to alias any bytes).
typedef int vi16_unaligned __attribute__((vector_size(64), aligned(1), may_alias));

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
/// 64 bytes as 16 32-bit lanes (the w8a8 tiles' weight operand).
inline void load_bytes64(vi16& v, const void* p) noexcept { v = *static_cast<const vi16_unaligned*>(p); }
/// One 16-float store, vector-typed for the same reason: a memcpy from an accumulator
/// takes its address, and GCC then keeps a tile's accumulators in memory too, storing
/// every one of them on every column.
inline void store16(float* p, const v16& v) noexcept { *reinterpret_cast<v16_unaligned*>(p) = v; }
/// v[i] = x in every lane, exactly (also -0.0f and NaN payloads).
inline void splat(v16& v, float x) noexcept { v = v16{x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x}; }

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

}  // namespace specdec::cpu::detail

// The instruction-set file: fmadd_lanes, pin_register, widen_*, SPECDEC_DETAIL_VNNI,
// SPECDEC_DETAIL_BF16_DOT. The
// vector files assume the scalar `fmadd` is fused too (FP_FAST_FMAF), so that vector and
// scalar tails round alike; a compiler that does not define it (clang) gets the scalar
// file, whose every multiply-add follows `fmadd`.
#if defined(__x86_64__) && defined(__AVX512F__) && defined(FP_FAST_FMAF)
#include "specdec/backend/cpu/detail/arch/avx512.hpp"
#elif defined(__x86_64__) && defined(__AVX2__) && defined(__FMA__) && defined(__F16C__) && defined(FP_FAST_FMAF)
#include "specdec/backend/cpu/detail/arch/avx2.hpp"
#else
#include "specdec/backend/cpu/detail/arch/scalar.hpp"
#endif

namespace specdec::cpu::detail {

#ifndef SPECDEC_DETAIL_MASKED_TAILS  // an instruction-set file may give masked forms
/// The first n < 16 floats of v, through a copy whose address may be taken (not the
/// caller's accumulator's).
inline void store_first(float* p, const v16& v, std::size_t n) noexcept {
  const v16 copy = v;
  __builtin_memcpy(p, &copy, n * sizeof(float));
}
/// The first n < 16 floats at p in lanes 0..n-1, zeros in the others (nothing past
/// p + n is read).
inline void load_first(v16& v, const float* p, std::size_t n) noexcept {
  v = v16{};
  __builtin_memcpy(&v, p, n * sizeof(float));
}
#endif

/// out[i] = float(q[i]) for 16 int8 values, exactly (float(q) * 1 is float(q)).
#ifndef SPECDEC_DETAIL_WIDEN_I8
inline void widen_i8(v16& out, const std::int8_t* q) noexcept {
  static constexpr float ones[lanes] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1};
  widen_q8(out, q, ones);
}
#endif

/// acc[i] = fmadd(w[i], x, acc[i]) for the 16 lanes: the weight products' multiply-add,
/// rounded by the same rule as `fmadd` in every build and at every optimisation level
/// (GCC contracts a vector `acc += w * x` into an FMA only from -O2 on, so an -O1 build
/// would round it differently from `fmadd`; the result is unchanged where it did).
#ifndef SPECDEC_DETAIL_FMADD_BROADCAST  // an instruction-set file may give its own
inline void fmadd_lanes(v16& acc, const v16& w, float x) noexcept {
  v16 xv;
  splat(xv, x);
  fmadd_lanes(acc, w, xv);
}
#endif

/// The vector the elementwise kernels (e^x, SwiGLU, the softmax's passes, w8a8's input
/// quantizer) compute in: `v16` where a register holds it, `v8` with AVX2, where GCC keeps
/// a `v16` in memory and stores and reloads it around every operation. Each lane's
/// operations are the same whatever the width, so results do not depend on it; a sum over
/// lanes keeps 16 lanes' order (`softmax_rows`).
using elem_vec = std::conditional_t<(packet_registers >= 16), v16, v8>;
inline constexpr std::size_t elem_lanes = sizeof(elem_vec) / sizeof(float);
static_assert(lanes % elem_lanes == 0);
/// 8 32-bit integers (`v8`'s exponent bits in `exp_lanes`).
typedef int vi8 __attribute__((vector_size(32)));
/// The integer vector of a float vector's lane count.
template <class V>
struct int_lanes;
template <>
struct int_lanes<v16> {
  using type = vi16;
};
template <>
struct int_lanes<v8> {
  using type = vi8;
};
/// x in every lane of a float vector V, exactly (also -0.0f and NaN payloads).
template <class V>
inline V splat_lanes(float x) noexcept {
  V v;
  for (std::size_t i = 0; i < sizeof(V) / sizeof(float); ++i) v[i] = x;
  return v;
}
/// The largest of a vector's lanes, none of them NaN (exact: a maximum does not depend on
/// the order; GCC does not vectorise a float max reduction without -ffast-math).
inline float max_lanes(const v8& a) noexcept {
  const v4 b0 = __builtin_shufflevector(a, a, 0, 1, 2, 3), b1 = __builtin_shufflevector(a, a, 4, 5, 6, 7);
  const v4 b = b0 > b1 ? b0 : b1;
  return std::max(std::max(b[0], b[1]), std::max(b[2], b[3]));
}
inline float max_lanes(const v16& v) noexcept {
  const v8 a0 = __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7);
  const v8 a1 = __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
  return max_lanes(a0 > a1 ? a0 : a1);
}
/// A float vector V (`v16`, `v8`) at any float-aligned address, and its store.
template <class V>
inline V load_lanes(const float* p) noexcept {
  typedef float unaligned __attribute__((vector_size(sizeof(V)), aligned(4), may_alias));
  return *reinterpret_cast<const unaligned*>(p);
}
template <class V>
inline void store_lanes(float* p, const V& v) noexcept {
  typedef float unaligned __attribute__((vector_size(sizeof(V)), aligned(4), may_alias));
  *reinterpret_cast<unaligned*>(p) = v;
}

}  // namespace specdec::cpu::detail
