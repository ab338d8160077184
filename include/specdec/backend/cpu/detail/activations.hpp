#pragma once
/// \file backend/cpu/detail/activations.hpp
/// The functions between the products: RMSNorm's scale, e^x (`exp_lanes`) and SwiGLU.
#include <cmath>
#include <cstddef>

#include "specdec/backend/cpu/detail/arch/vector.hpp"
#include "specdec/backend/cpu/detail/dot.hpp"

namespace specdec::cpu::detail {

/// Inverse RMS of x as llama2.c computes it: 1 / sqrt(mean(x^2) + 1e-5), with the sum of
/// squares taken by the fixed-order `dot`.
inline float rms_inverse(const float* x, std::size_t n) noexcept {
  float ss = dot(x, x, n);
  ss /= static_cast<float>(n);
  ss += 1e-5f;
  return 1.0f / std::sqrt(ss);
}

/// e^x in each lane of a float vector V (`v16`, `v8`), elementwise: every lane goes
/// through the same operations, so a value's result depends on the value only (not on
/// its lane, the vector length, the block size or the thread). Cody-Waite range
/// reduction x = n ln2 + r with |r| <= ln2 / 2, Cephes' degree-5 polynomial for e^r,
/// then 2^n through the exponent bits; within 2 ulp of the correctly rounded e^x (tests
/// compare it with std::exp over the whole float range). Below -86.5 the result is 0
/// (e^-86.5 < 2^-124, which the softmax and SiLU callers cannot tell from 0), above
/// 88.0 it is +inf, NaN stays NaN. It replaces a scalar libm call per element, which
/// does not vectorise and runs once per head and position (softmax) and once per hidden
/// unit (SiLU) in every forward.
template <class V>
inline void exp_lanes(V& v) noexcept {
  using VI = typename int_lanes<V>::type;
  constexpr float lo = -86.5f, hi = 88.0f;
  const V zero{};
  const V x = v;
  V xc = x < zero + lo ? zero + lo : x;
  xc = xc > zero + hi ? zero + hi : xc;
  xc = x == x ? xc : zero;  // NaN: computed as 0 (no float-to-int conversion of NaN), restored below
  // n = round-to-nearest-even(x / ln2) by the 1.5 * 2^23 trick; -125 <= n <= 127, so 2^n
  // is a normal float, built directly in the exponent bits.
  constexpr float magic = 12582912.0f;
  const V n = (xc * 1.44269504088896341f + magic) - magic;
  V r = xc - n * 0.693359375f;  // ln2 split in two: the first part has 9 bits
  r = r - n * -2.12194440e-4f;
  const V z = r * r;
  V p = 1.9875691500e-4f + zero;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  V y = p * z + r + 1.0f;
  const VI bits = (__builtin_convertvector(n, VI) + 127) << 23;
  V scale;
  __builtin_memcpy(&scale, &bits, sizeof(scale));
  y = y * scale;
  y = x > zero + hi ? zero + __builtin_inff() : y;
  y = x < zero + lo ? zero : y;
  v = x == x ? y : x;
}

/// e^x over x[0..n) in place: whole `elem_vec`s, then the tail padded into one, so every
/// element takes the same path.
inline void exp_inplace(float* x, std::size_t n) noexcept {
  std::size_t i = 0;
  for (; i + elem_lanes <= n; i += elem_lanes) {
    elem_vec v = load_lanes<elem_vec>(x + i);
    exp_lanes(v);
    store_lanes(x + i, v);
  }
  if (i < n) {
    elem_vec v;
    load_first(v, x + i, n - i);
    exp_lanes(v);
    store_first(x + i, v, n - i);
  }
}

/// hb[i] = silu(hb[i]) * hb2[i] over (a slice of) one token row: e^-x by `exp_lanes`,
/// which is elementwise, so any slicing of the row (threads split it) gives the same
/// bits. (Like every kernel here it assumes no -ffast-math: reassociation would void the
/// fixed summation orders.)
inline void swiglu(float* hb, const float* hb2, std::size_t n) noexcept {
  const auto silu_times = [](elem_vec& val, const elem_vec& gate) {
    elem_vec e = -val;
    exp_lanes(e);
    val *= 1.0f / (1.0f + e);
    val *= gate;
  };
  std::size_t i = 0;
  for (; i + elem_lanes <= n; i += elem_lanes) {
    elem_vec val = load_lanes<elem_vec>(hb + i);
    silu_times(val, load_lanes<elem_vec>(hb2 + i));
    store_lanes(hb + i, val);
  }
  if (i < n) {
    elem_vec val, gate;
    load_first(val, hb + i, n - i);
    load_first(gate, hb2 + i, n - i);
    silu_times(val, gate);
    store_first(hb + i, val, n - i);
  }
}

}  // namespace specdec::cpu::detail
