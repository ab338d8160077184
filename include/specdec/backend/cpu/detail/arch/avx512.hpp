#pragma once
/// \file backend/cpu/detail/arch/avx512.hpp
/// The vector layer's instruction-set operations for AVX-512F (and AVX512-VNNI where the
/// target has it); included by arch/vector.hpp only, which documents the set.
#include <cmath>
#include <cstdint>

#include <immintrin.h>

#ifndef FP_FAST_FMAF
#error "specdec: an AVX-512F target has a fused multiply-add; FP_FAST_FMAF is expected"
#endif

namespace specdec::cpu::detail {

/// A zmm register holds a v16: the tiles compute in v16 itself, 32 registers of it.
using packet16 = v16;
inline constexpr int packet_registers = 32;

/// acc[i] = fma(a[i], b[i], acc[i]): one vfmadd.
inline void fmadd_lanes(v16& acc, const v16& a, const v16& b) noexcept {
  acc = (v16)_mm512_fmadd_ps((__m512)a, (__m512)b, (__m512)acc);
}

/// The first n < 16 floats of v stored at p, and loaded from p into lanes 0..n-1 with
/// zeros in the others: one masked store or load each (nothing past p + n is touched,
/// and no copy through the stack, which a following full-width load could not forward).
#define SPECDEC_DETAIL_MASKED_TAILS 1
inline void store_first(float* p, const v16& v, std::size_t n) noexcept {
  _mm512_mask_storeu_ps(p, static_cast<__mmask16>((1u << n) - 1), (__m512)v);
}
inline void load_first(v16& v, const float* p, std::size_t n) noexcept {
  v = (v16)_mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << n) - 1), p);
}

/// Keeps a loaded vector in a register: without this GCC folds the load into every FMA
/// that uses it as a memory operand, doubling the loads of the inner loop (load ports,
/// not FMAs, then bound the block forward). The empty asm changes no value. (Not for
/// weights used by one token only: see dot_tile.)
inline void pin_register(v16& v) noexcept { asm("" : "+v"(v)); }

// The widening conversions use the maskz forms: GCC 12's unmasked intrinsics warn
// (-Wmaybe-uninitialized) about their internal undefined passthrough; an all-ones mask
// compiles to the same instruction.

/// 16 bf16 values to fp32, exactly: vpmovzxwd and a shift into the upper halves.
inline void widen_bf16(v16& out, const std::uint16_t* p) noexcept {
  const __m512i wide = _mm512_maskz_cvtepu16_epi32(0xffff, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  out = (v16)(_mm512_castsi512_ps(_mm512_maskz_slli_epi32(0xffff, wide, 16)));
}

/// 16 IEEE half values to fp32, exactly: one vcvtph2ps.
inline void widen_fp16(v16& out, const std::uint16_t* p) noexcept {
  out = (v16)(_mm512_maskz_cvtph_ps(0xffff, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))));
}

/// out[i] = float(q[i]) * s[i]: vpmovsxbd, vcvtdq2ps (exact), one rounded vmulps.
inline void widen_q8(v16& out, const std::int8_t* q, const float* s) noexcept {
  const __m512 f = _mm512_maskz_cvtepi32_ps(
      0xffff, _mm512_maskz_cvtepi8_epi32(0xffff, _mm_loadu_si128(reinterpret_cast<const __m128i*>(q))));
  out = (v16)(_mm512_mul_ps(f, _mm512_loadu_ps(s)));
}

/// out[i] = float(q[i]), exactly: vpmovsxbd, vcvtdq2ps (q8_0's grouped products).
#define SPECDEC_DETAIL_WIDEN_I8 1
inline void widen_i8(v16& out, const std::int8_t* q) noexcept {
  out = (v16)_mm512_maskz_cvtepi32_ps(
      0xffff, _mm512_maskz_cvtepi8_epi32(0xffff, _mm_loadu_si128(reinterpret_cast<const __m128i*>(q))));
}

#if defined(__AVX512VNNI__)
#define SPECDEC_DETAIL_VNNI 1

/// acc[i] += sum over b < 4 of u[4 i + b] * s[4 i + b] for the 16 lanes, u unsigned and
/// s signed bytes: one vpdpbusd, exact (no saturation in this form).
inline void dpbusd_lanes(vi16& acc, const vi16& u, const vi16& s) noexcept {
  acc = (vi16)_mm512_dpbusd_epi32((__m512i)acc, (__m512i)u, (__m512i)s);
}
#else
#define SPECDEC_DETAIL_VNNI 0
#endif

#if defined(__AVX512BF16__)
#define SPECDEC_DETAIL_BF16_DOT 1

/// acc[i] += a[2 i] b[2 i] + a[2 i + 1] b[2 i + 1] over the bf16 pairs held in each 32-bit
/// lane: one vdpbf16ps. Its rounding (the instruction's own, with denormals flushed) is
/// not `fmadd`'s, so no product kernel uses it; the compute probe (roofline.hpp) times it.
inline void dpbf16_lanes(v16& acc, const vi16& a, const vi16& b) noexcept {
  acc = (v16)_mm512_dpbf16_ps((__m512)acc, (__m512bh)a, (__m512bh)b);
}
#else
#define SPECDEC_DETAIL_BF16_DOT 0
#endif

}  // namespace specdec::cpu::detail
