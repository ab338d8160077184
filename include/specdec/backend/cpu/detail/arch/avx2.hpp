#pragma once
/// \file backend/cpu/detail/arch/avx2.hpp
/// The vector layer's instruction-set operations for AVX2 with FMA and F16C (x86-64-v3):
/// a v16 is two 256-bit registers, copied to and from pairs of __m256 (GCC 12 lowers
/// vector shuffles of a 64-byte vector without AVX-512 lane by lane, which is slower
/// still). Included by arch/vector.hpp only, which documents the set.
#include <cstdint>

#include <immintrin.h>

namespace specdec::cpu::detail {

/// acc[i] = fma(a[i], b[i], acc[i]): two vfmadd on the 256-bit halves.
inline void fmadd_lanes(v16& acc, const v16& a, const v16& b) noexcept {
  __m256 a2[2], b2[2], c2[2];
  __builtin_memcpy(a2, &a, sizeof(a));
  __builtin_memcpy(b2, &b, sizeof(b));
  __builtin_memcpy(c2, &acc, sizeof(acc));
  c2[0] = _mm256_fmadd_ps(a2[0], b2[0], c2[0]);
  c2[1] = _mm256_fmadd_ps(a2[1], b2[1], c2[1]);
  __builtin_memcpy(&acc, c2, sizeof(acc));
}

/// acc[i] = fma(w[i], x, acc[i]): the weight products' form, x broadcast with vbroadcastss.
/// (The generic form, vector.hpp's, would splat x through 16 scalar stores and one
/// 64-byte reload that no store forwards: a stall in every step of the weight tiles.)
#define SPECDEC_DETAIL_FMADD_BROADCAST 1
inline void fmadd_lanes(v16& acc, const v16& w, float x) noexcept {
  __m256 w2[2], c2[2];
  __builtin_memcpy(w2, &w, sizeof(w));
  __builtin_memcpy(c2, &acc, sizeof(acc));
  const __m256 xv = _mm256_set1_ps(x);
  c2[0] = _mm256_fmadd_ps(w2[0], xv, c2[0]);
  c2[1] = _mm256_fmadd_ps(w2[1], xv, c2[1]);
  __builtin_memcpy(&acc, c2, sizeof(acc));
}

/// No register constraint holds a 64-byte vector here: nothing to pin.
inline void pin_register(v16&) noexcept {}

/// 16 bf16 values to fp32, exactly: per half, vpmovzxwd and a shift into the upper halves.
inline void widen_bf16(v16& out, const std::uint16_t* p) noexcept {
  const __m256i lo = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  const __m256i hi = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 8)));
  const __m256 f[2] = {_mm256_castsi256_ps(_mm256_slli_epi32(lo, 16)), _mm256_castsi256_ps(_mm256_slli_epi32(hi, 16))};
  __builtin_memcpy(&out, f, sizeof(out));
}

/// 16 IEEE half values to fp32, exactly: two vcvtph2ps.
inline void widen_fp16(v16& out, const std::uint16_t* p) noexcept {
  const __m256 f[2] = {_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))),
                       _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 8)))};
  __builtin_memcpy(&out, f, sizeof(out));
}

/// out[i] = float(q[i]) * s[i]: per half, vpmovsxbd, vcvtdq2ps (exact), one rounded vmulps.
inline void widen_q8(v16& out, const std::int8_t* q, const float* s) noexcept {
  const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(q));
  const __m256 lo = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes));
  const __m256 hi = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(bytes, 8)));
  const __m256 f[2] = {_mm256_mul_ps(lo, _mm256_loadu_ps(s)), _mm256_mul_ps(hi, _mm256_loadu_ps(s + 8))};
  __builtin_memcpy(&out, f, sizeof(out));
}

}  // namespace specdec::cpu::detail

#define SPECDEC_DETAIL_VNNI 0
#define SPECDEC_DETAIL_BF16_DOT 0
