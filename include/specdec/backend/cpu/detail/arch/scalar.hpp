#pragma once
/// \file backend/cpu/detail/arch/scalar.hpp
/// The vector layer's instruction-set operations in plain C++ over the vector type, for
/// any target without AVX-512F or AVX2 + FMA + F16C. Included by arch/vector.hpp only,
/// which documents the set.
#include <cmath>
#include <cstdint>

#include "specdec/backend/cpu/detail/float16.hpp"

namespace specdec::cpu::detail {

/// The tiles compute in v16 itself; whatever the compiler makes of it, its shapes are
/// the AVX-512 ones (32 registers).
using packet16 = v16;
inline constexpr int packet_registers = 32;

/// acc[i] = fmadd(a[i], b[i], acc[i]): std::fma per lane where the target has an FMA,
/// else a multiply and an add (no FMA instruction exists then, so nothing can be
/// contracted).
inline void fmadd_lanes(v16& acc, const v16& a, const v16& b) noexcept {
#ifdef FP_FAST_FMAF
  for (int i = 0; i < 16; ++i) acc[i] = std::fma(a[i], b[i], acc[i]);
#else
  acc += a * b;
#endif
}

/// Nothing to pin without a register constraint for the vector type.
inline void pin_register(v16&) noexcept {}

/// 16 bf16 values to fp32, exactly, one at a time.
inline void widen_bf16(v16& out, const std::uint16_t* p) noexcept {
  float f[16];
  for (int i = 0; i < 16; ++i) f[i] = bf16_to_float(p[i]);
  load16(out, f);
}

/// 16 IEEE half values to fp32, exactly, one at a time.
inline void widen_fp16(v16& out, const std::uint16_t* p) noexcept {
  float f[16];
  for (int i = 0; i < 16; ++i) f[i] = fp16_to_float(p[i]);
  load16(out, f);
}

/// out[i] = float(q[i]) * s[i], one at a time.
inline void widen_q8(v16& out, const std::int8_t* q, const float* s) noexcept {
  float f[16];
  for (int i = 0; i < 16; ++i) f[i] = static_cast<float>(q[i]) * s[i];
  load16(out, f);
}

}  // namespace specdec::cpu::detail

#define SPECDEC_DETAIL_VNNI 0
#define SPECDEC_DETAIL_BF16_DOT 0
