#pragma once
/// \file backend/cpu/detail/arch/avx2.hpp
/// The vector layer's instruction-set operations for AVX2 with FMA and F16C (x86-64-v3).
/// Without AVX-512 no register holds a 64-byte vector, and GCC 12 keeps every `v16`
/// variable in memory: each operation on it stores and reloads its 256-bit halves. The
/// kernels' tiles therefore compute in `packet16`, two `__m256` in a struct, which GCC's
/// scalar replacement of aggregates splits into two ymm registers; the `v16` forms of the
/// operations (the elementwise kernels, the tests) go through a packet too. Lanes 0-7 are
/// the first register and 8-15 the second, so every lane's operation, and every fixed
/// reduction tree over the 16 lanes, is the AVX-512 build's. Included by arch/vector.hpp
/// only, which documents the set.
#include <cstddef>
#include <cstdint>

#include <immintrin.h>

namespace specdec::cpu::detail {

/// 16 floats in two ymm registers: lanes 0-7 in `lo`, 8-15 in `hi`. `packet16{}` is zero.
struct packet16 {
  __m256 lo, hi;
};

/// Registers the tiles may fill: 16 ymm, 8 packets.
inline constexpr int packet_registers = 8;

inline void load16(packet16& v, const float* p) noexcept {
  v.lo = _mm256_loadu_ps(p);
  v.hi = _mm256_loadu_ps(p + 8);
}
inline void store16(float* p, const packet16& v) noexcept {
  _mm256_storeu_ps(p, v.lo);
  _mm256_storeu_ps(p + 8, v.hi);
}
/// The first n < 16 floats of v.
inline void store_first(float* p, const packet16& v, std::size_t n) noexcept {
  float copy[16];
  store16(copy, v);
  __builtin_memcpy(p, copy, n * sizeof(float));
}

/// The first n <= 8 floats of an `elem_vec` (v8) stored at p, and loaded from p into
/// lanes 0..n-1 with zeros in the others: one masked store or load each (vmaskmovps:
/// nothing past p + n is touched).
inline __m256i first_lanes_mask(std::size_t n) noexcept {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
inline void store_first(float* p, const v8& v, std::size_t n) noexcept {
  _mm256_maskstore_ps(p, first_lanes_mask(n), (__m256)v);
}
inline void load_first(v8& v, const float* p, std::size_t n) noexcept {
  v = (v8)_mm256_maskload_ps(p, first_lanes_mask(n));
}

/// acc[i] = fma(a[i], b[i], acc[i]): one vfmadd per half.
inline void fmadd_lanes(packet16& acc, const packet16& a, const packet16& b) noexcept {
  acc.lo = _mm256_fmadd_ps(a.lo, b.lo, acc.lo);
  acc.hi = _mm256_fmadd_ps(a.hi, b.hi, acc.hi);
}
/// acc[i] = fma(w[i], x, acc[i]): x broadcast once (vbroadcastss) for both halves.
inline void fmadd_lanes(packet16& acc, const packet16& w, float x) noexcept {
  const __m256 xv = _mm256_set1_ps(x);
  acc.lo = _mm256_fmadd_ps(w.lo, xv, acc.lo);
  acc.hi = _mm256_fmadd_ps(w.hi, xv, acc.hi);
}

/// Keeps a loaded packet in its two registers rather than folding each use's load into an
/// FMA (see avx512.hpp's pin_register). The empty asm changes no value.
inline void pin_register(packet16& v) noexcept { asm("" : "+x"(v.lo), "+x"(v.hi)); }

/// 16 bf16 values to fp32, exactly: per half, vpmovzxwd and a shift into the upper halves.
inline void widen_bf16(packet16& out, const std::uint16_t* p) noexcept {
  const __m256i lo = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  const __m256i hi = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 8)));
  out.lo = _mm256_castsi256_ps(_mm256_slli_epi32(lo, 16));
  out.hi = _mm256_castsi256_ps(_mm256_slli_epi32(hi, 16));
}

/// 16 IEEE half values to fp32, exactly: two vcvtph2ps.
inline void widen_fp16(packet16& out, const std::uint16_t* p) noexcept {
  out.lo = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  out.hi = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 8)));
}

/// out[i] = float(q[i]) * s[i]: per half, vpmovsxbd, vcvtdq2ps (exact), one rounded vmulps.
inline void widen_q8(packet16& out, const std::int8_t* q, const float* s) noexcept {
  const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(q));
  const __m256 lo = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes));
  const __m256 hi = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(bytes, 8)));
  out.lo = _mm256_mul_ps(lo, _mm256_loadu_ps(s));
  out.hi = _mm256_mul_ps(hi, _mm256_loadu_ps(s + 8));
}

/// out[i] = float(q[i]), exactly: per half, vpmovsxbd and vcvtdq2ps (q8_0's grouped products).
#define SPECDEC_DETAIL_WIDEN_I8 1
inline void widen_i8(packet16& out, const std::int8_t* q) noexcept {
  const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(q));
  out.lo = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes));
  out.hi = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(bytes, 8)));
}

/// hsum16's tree on a packet: a = lo + hi, then a[i] + a[i + 4], then (b0 + b2) + (b1 + b3).
inline float hsum16(const packet16& v) noexcept {
  const __m256 a = _mm256_add_ps(v.lo, v.hi);
  const __m128 b = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  const __m128 c = _mm_add_ps(b, _mm_movehl_ps(b, b));  // c[0] = b0 + b2, c[1] = b1 + b3
  return _mm_cvtss_f32(_mm_add_ss(c, _mm_movehdup_ps(c)));
}

/// hsum16x4 on packets: the same tree for each, four reductions side by side.
inline v4 hsum16x4(const packet16& v0, const packet16& v1, const packet16& v2, const packet16& v3) noexcept {
  const __m256 a0 = _mm256_add_ps(v0.lo, v0.hi), a1 = _mm256_add_ps(v1.lo, v1.hi);
  const __m256 a2 = _mm256_add_ps(v2.lo, v2.hi), a3 = _mm256_add_ps(v3.lo, v3.hi);
  // b_k = (a_k lanes 0-3) + (a_k lanes 4-7): b0 | b1 in b01, b2 | b3 in b23.
  const __m256 b01 = _mm256_add_ps(_mm256_permute2f128_ps(a0, a1, 0x20), _mm256_permute2f128_ps(a0, a1, 0x31));
  const __m256 b23 = _mm256_add_ps(_mm256_permute2f128_ps(a2, a3, 0x20), _mm256_permute2f128_ps(a2, a3, 0x31));
  // c: per 128-bit lane {b_k[0] + b_k[2], b_k[1] + b_k[3]} for k = 0, 2 (low lane) and 1, 3.
  const __m256 c = _mm256_add_ps(_mm256_shuffle_ps(b01, b23, _MM_SHUFFLE(1, 0, 1, 0)),
                                 _mm256_shuffle_ps(b01, b23, _MM_SHUFFLE(3, 2, 3, 2)));
  // d: per 128-bit lane {c_k[0] + c_k[1]} for k = 0, 2 (low lane) and 1, 3 (high lane).
  const __m256 d = _mm256_add_ps(_mm256_shuffle_ps(c, c, _MM_SHUFFLE(2, 0, 2, 0)),
                                 _mm256_shuffle_ps(c, c, _MM_SHUFFLE(3, 1, 3, 1)));
  const __m128 r = _mm_unpacklo_ps(_mm256_castps256_ps128(d), _mm256_extractf128_ps(d, 1));
  v4 out;
  __builtin_memcpy(&out, &r, sizeof(out));
  return out;
}

// The v16 forms, through packets (the copies are the memory round trip GCC makes of a
// v16 anyway).
inline packet16 to_packet(const v16& v) noexcept {
  packet16 p;
  __builtin_memcpy(&p, &v, sizeof(p));
  return p;
}
inline void from_packet(v16& v, const packet16& p) noexcept { __builtin_memcpy(&v, &p, sizeof(v)); }

inline void fmadd_lanes(v16& acc, const v16& a, const v16& b) noexcept {
  packet16 c = to_packet(acc);
  fmadd_lanes(c, to_packet(a), to_packet(b));
  from_packet(acc, c);
}
#define SPECDEC_DETAIL_FMADD_BROADCAST 1
inline void fmadd_lanes(v16& acc, const v16& w, float x) noexcept {
  packet16 c = to_packet(acc);
  fmadd_lanes(c, to_packet(w), x);
  from_packet(acc, c);
}

/// No register constraint holds a 64-byte vector here: nothing to pin.
inline void pin_register(v16&) noexcept {}

inline void widen_bf16(v16& out, const std::uint16_t* p) noexcept {
  packet16 f;
  widen_bf16(f, p);
  from_packet(out, f);
}
inline void widen_fp16(v16& out, const std::uint16_t* p) noexcept {
  packet16 f;
  widen_fp16(f, p);
  from_packet(out, f);
}
inline void widen_q8(v16& out, const std::int8_t* q, const float* s) noexcept {
  packet16 f;
  widen_q8(f, q, s);
  from_packet(out, f);
}

// ---- w8a8 without VNNI: signed byte products through vpsignb + vpmaddubsw ----

/// 16 32-bit integer sums in two ymm registers (lanes 0-7 in `lo`, 8-15 in `hi`): a
/// panel's integer dot products in the w8a8 tiles. `ipacket16{}` is zero.
struct ipacket16 {
  __m256i lo, hi;
};
/// One input quad of a w8a8 product: 4 signed bytes (|x| <= 127) in every 32-bit lane, and
/// their absolute values.
struct i8_input_quad {
  __m256i x, abs_x;
};
inline i8_input_quad load_i8_quad(const std::int8_t* p) noexcept {
  std::int32_t four;
  __builtin_memcpy(&four, p, sizeof(four));
  const __m256i x = _mm256_set1_epi32(four);
  return {x, _mm256_abs_epi8(x)};
}

/// acc[i] += sum over b < 4 of (u[4 i + b] - 128) x[b] for the 16 lanes (a panel's rows) of
/// 64 bytes of biased w8a8 weights u (in [1, 255]), exactly: flipping the top bit unbiases
/// a weight (q = u - 128 in [-127, 127]), vpsignb moves x's signs onto the weights, and
/// vpmaddubsw multiplies them by |x| in pairs (|x q| <= 127^2, so a pair's sum fits 16
/// bits: no saturation), summed into 32 bits by vpmaddwd with ones. The same integers
/// as `dpbusd_lanes` minus the input's bias, which the VNNI tiles subtract.
inline void add_i8_quad_dots(ipacket16& acc, const std::uint8_t* u, const i8_input_quad& x) noexcept {
  const __m256i top = _mm256_set1_epi8(static_cast<char>(0x80)), ones = _mm256_set1_epi16(1);
  const __m256i q0 = _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(u)), top);
  const __m256i q1 = _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(u + 32)), top);
  const __m256i p0 = _mm256_maddubs_epi16(x.abs_x, _mm256_sign_epi8(q0, x.x));
  const __m256i p1 = _mm256_maddubs_epi16(x.abs_x, _mm256_sign_epi8(q1, x.x));
  acc.lo = _mm256_add_epi32(acc.lo, _mm256_madd_epi16(p0, ones));
  acc.hi = _mm256_add_epi32(acc.hi, _mm256_madd_epi16(p1, ones));
}

/// acc[i] = fma(float(is[i]), ws[i] * xs, acc[i]): a w8a8 group's step, float(is) exact
/// (|is| < 2^24) and the scales' product rounded once, as in the portable path.
inline void fmadd_i8_group(packet16& acc, const ipacket16& is, const packet16& ws, float xs) noexcept {
  const __m256 x = _mm256_set1_ps(xs);
  acc.lo = _mm256_fmadd_ps(_mm256_cvtepi32_ps(is.lo), _mm256_mul_ps(ws.lo, x), acc.lo);
  acc.hi = _mm256_fmadd_ps(_mm256_cvtepi32_ps(is.hi), _mm256_mul_ps(ws.hi, x), acc.hi);
}

}  // namespace specdec::cpu::detail

#define SPECDEC_DETAIL_VNNI 0
#define SPECDEC_DETAIL_I8_SIGN_DOTS 1
#define SPECDEC_DETAIL_BF16_DOT 0
