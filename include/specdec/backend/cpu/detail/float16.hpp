#pragma once
/// \file backend/cpu/detail/float16.hpp
/// The 16-bit float formats of weights and KV caches, one value at a time: bf16 (the
/// upper half of an fp32) and IEEE binary16, each converted from fp32 with round to
/// nearest even and widened back exactly. The vector kernels widen 16 at a time
/// (arch/vector.hpp) to the same values.
///
/// ```cpp
/// namespace d = specdec::cpu::detail;
/// std::uint16_t h = d::float_to_fp16(0.1f);
/// float back = d::fp16_to_float(h);  // 0.0999755859375f, the nearest half
/// ```
#include <cmath>
#include <cstdint>
#include <cstring>

namespace specdec::cpu::detail {

inline std::uint32_t float_bits(float f) noexcept {
  std::uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float bits_float(std::uint32_t u) noexcept {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

/// fp32 -> bf16, round to nearest even (NaN stays NaN).
inline std::uint16_t float_to_bf16(float f) noexcept {
  const std::uint32_t u = float_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((u >> 16) | 0x40u);
  return static_cast<std::uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
inline float bf16_to_float(std::uint16_t h) noexcept { return bits_float(std::uint32_t(h) << 16); }

/// fp32 -> IEEE binary16, round to nearest even, overflow to infinity, subnormals kept.
inline std::uint16_t float_to_fp16(float f) noexcept {
  const std::uint32_t u = float_bits(f);
  const std::uint32_t sign = (u >> 16) & 0x8000u;
  const std::uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return static_cast<std::uint16_t>(sign | 0x7e00u);  // NaN
  if (a >= 0x477ff000u) return static_cast<std::uint16_t>(sign | 0x7c00u);  // rounds to >= 65520: inf
  if (a < 0x38800000u) {  // below 2^-14: subnormal half (or zero)
    // value = a_float; half subnormal unit = 2^-24. Round a_float / 2^-24 to nearest even.
    const float scaled = bits_float(a) * 16777216.0f;  // exact (power of two)
    const float r = std::nearbyint(scaled);              // default mode: nearest even
    return static_cast<std::uint16_t>(sign | static_cast<std::uint32_t>(r));
  }
  // Normal: rebias exponent (127 -> 15), round the 23-bit mantissa to 10 bits.
  std::uint32_t v = a - (112u << 23);
  v = v + 0xfffu + ((v >> 13) & 1u);
  return static_cast<std::uint16_t>(sign | (v >> 13));
}
inline float fp16_to_float(std::uint16_t h) noexcept {
  const std::uint32_t sign = std::uint32_t(h & 0x8000u) << 16;
  const std::uint32_t e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
  if (e == 0) {  // zero or subnormal: m * 2^-24, exact in float
    const float v = static_cast<float>(m) * (1.0f / 16777216.0f);
    return bits_float(float_bits(v) | sign);
  }
  if (e == 31) return bits_float(sign | 0x7f800000u | (m << 13));
  return bits_float(sign | ((e + 112u) << 23) | (m << 13));
}

}  // namespace specdec::cpu::detail
