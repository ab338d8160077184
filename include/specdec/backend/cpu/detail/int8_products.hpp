#pragma once
/// \file backend/cpu/detail/int8_products.hpp
/// The products of the w8a8 weight format: q8_0 weights (int8, one fp32 scale per group
/// of 32 weights of a row) against input rows quantized the same way at every product
/// (one fp32 scale per 32 inputs of a row, as llama.cpp's q8_0 matrix products do), so
/// that each group's 32 multiply-adds are one exact integer dot product. With
/// AVX512-VNNI one `vpdpbusd` does 64 of them (4 columns x 16 rows of a panel), against
/// one fp32 FMA per 16 multiply-adds plus two instructions to widen each 16 int8 weights
/// in the q8_0 format: a kjv-little forward takes a fraction of the
/// instructions, and its weights (1.2 MB) fit a core's L2 next to its KV cache, where
/// fp32 (4.3 MB) and bf16 (2.1 MB) do not. It is a format for drafts (docs/performance.md):
/// their numerics decide only which tokens they propose, never the exact output.
///
/// Exactness rules, as everywhere in the backend (see kernels.hpp): output (t, r) is
///   acc = 0; for each group g in order: acc = fmadd(float(isum_g), ws[r][g] * xs[t][g], acc)
/// where isum_g is the exact integer dot product of the group's int8 weights and int8
/// inputs (|isum_g| <= 127 * 127 * 32 < 2^24, so float(isum_g) is exact) and the scale
/// product is one rounded multiply. Integer sums are exact in any order, the float steps
/// are the same operations in the same order in the VNNI tiles and in the portable
/// scalar path, and a row's quantization depends on that row alone: so results are
/// identical whatever the block size, tile shape, thread split or instruction set.
///
/// VNNI multiplies unsigned by signed bytes (and only the signed operand can be broadcast
/// from memory), so weights are stored biased, u = q + 128 in [1, 255], and each input
/// group carries its correction c = -128 * sum(q_x): isum = c + sum(u * q_x).
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>

#include "specdec/backend/cpu/detail/aligned.hpp"
#include "specdec/backend/cpu/detail/arch/vector.hpp"
#include "specdec/backend/cpu/detail/matmul.hpp"
#include "specdec/backend/cpu/detail/tiles.hpp"

namespace specdec::cpu::detail {

/// The 8-bit formats' group: q8_0 and w8a8 weights, and w8a8's inputs, carry one fp32
/// scale per 32 consecutive values of a row. In w8a8 a row's columns are padded to whole
/// groups (zero weights, zero inputs).
inline constexpr std::size_t q8_group = 32;
/// Columns per VNNI step: 4 bytes of each of a panel's 16 rows make one 64-byte vector.
inline constexpr std::size_t i8_quad = 4;

[[nodiscard]] inline constexpr std::size_t i8_groups(std::size_t cols) noexcept { return (cols + q8_group - 1) / q8_group; }

/// round-to-nearest-even(r) clamped to [-127, 127], NaN to 0: an 8-bit value, r being a
/// weight or an input times the inverse of its group's scale.
[[nodiscard]] inline std::int8_t q8_round(float r) noexcept {
  r = r == r ? std::clamp(r, -127.0f, 127.0f) : 0.0f;
  return static_cast<std::int8_t>(std::nearbyint(r));
}

/// Rows of inputs quantized for w8a8 products: row t, group g has scale d = max|x| / 127
/// and values q = round-to-nearest-even(x / d) in [-127, 127] (0 for a zero group), as
/// the weights are quantized (weights.hpp), plus the VNNI correction -128 * sum(q).
/// Storage is sized by `reserve` and reused: `quantize` never allocates within it.
struct i8_inputs {
  aligned_vector<std::int8_t> q;      ///< [rows][groups * 32]
  aligned_vector<float> scale;        ///< [rows][groups]
  /// [rows][groups]: -128 * sum of the group's q, where a VNNI tile's integer sum starts
  /// (stored negated, so that the tile broadcasts it straight from memory).
  aligned_vector<std::int32_t> correction;

  /// Room for `rows` rows of up to `cols` columns.
  void reserve(std::size_t rows, std::size_t cols) {
    const std::size_t g = i8_groups(cols);
    if (q.size() < rows * g * q8_group) q.resize(rows * g * q8_group);
    if (scale.size() < rows * g) scale.resize(rows * g), correction.resize(rows * g);
  }

  /// Quantizes k rows of n floats (row stride ldx), after `reserve(k, n)`. Whole groups
  /// go through vectors, four at a time (`quad_scales`, then `round_quad`) and one at a
  /// time (`quantize_group`), a partial last group through scalar code; all give the same
  /// values (max is exact in any order, the rest is elementwise).
  void quantize(const float* x, std::size_t k, std::size_t ldx, std::size_t n) noexcept {
    const std::size_t groups = i8_groups(n), whole = n / q8_group, quads = whole / 4 * 4;
    // Two passes over the rows: the quads' scales, then their values. A quad's values wait
    // for its scale's reduction and two divisions; in one pass that chain would hold back
    // each next quad.
    for (std::size_t t = 0; t < k; ++t)
      for (std::size_t g = 0; g < quads; g += 4) quad_scales(x + t * ldx + g * q8_group, scale.data() + t * groups + g);
    for (std::size_t t = 0; t < k; ++t)
      for (std::size_t g = 0; g < quads; g += 4)
        round_quad(x + t * ldx + g * q8_group, scale.data() + t * groups + g, q.data() + (t * groups + g) * q8_group,
                   correction.data() + t * groups + g);
    for (std::size_t t = 0; t < k; ++t) {
      const float* xt = x + t * ldx;
      std::int8_t* qt = q.data() + t * groups * q8_group;
      float* st = scale.data() + t * groups;
      std::int32_t* ct = correction.data() + t * groups;
      for (std::size_t g = quads; g < groups; ++g) {
        const std::size_t j0 = g * q8_group;
        std::int8_t* qg = qt + j0;
        std::int32_t sum = 0;
        float d = 0.0f;
        if (g < whole) {
          d = quantize_group(xt + j0, qg, sum);
        } else {
          float amax = 0.0f;  // NaN is skipped here (and quantized to 0 below)
          for (std::size_t j = j0; j < n; ++j) amax = std::max(amax, std::abs(xt[j]));
          d = amax / 127.0f;
          const float id = d > 0.0f ? 1.0f / d : 0.0f;
          for (std::size_t j = j0; j < j0 + q8_group; ++j) {
            const std::int8_t v = j < n ? q8_round(xt[j] * id) : std::int8_t{0};
            qg[j - j0] = v;
            sum += v;
          }
        }
        st[g] = d;
        ct[g] = -128 * sum;
      }
    }
  }

 private:
  /// The quantizer's bytes: one `elem_vec`'s lanes of int8. It computes in `elem_vec`s
  /// (16 lanes where a register holds them, 8 with AVX2); the values are the same either
  /// way: the maximum is exact in any order, the rest is elementwise, the integer sum exact.
  typedef std::int8_t elem_bytes __attribute__((vector_size(elem_lanes)));
  using elem_ints = int_lanes<elem_vec>::type;
  typedef std::int32_t vi4 __attribute__((vector_size(16)));

  /// Lane g: op over the lanes of m[g], for op exact in any order (max of non-NaN values,
  /// integer sum). Four groups' reductions share their shuffles: three or four
  /// shuffle-and-op steps for four groups, where reducing each alone takes four per group.
  template <class V, class Op>
  static auto reduce_quad(const V (&m)[4], Op op) noexcept {
    if constexpr (sizeof(V) / sizeof(m[0][0]) == 16) {
      const V a = op(__builtin_shufflevector(m[0], m[1], 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23),
                     __builtin_shufflevector(m[0], m[1], 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31));
      const V b = op(__builtin_shufflevector(m[2], m[3], 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23),
                     __builtin_shufflevector(m[2], m[3], 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31));
      // lanes 4 g .. 4 g + 3: group g
      const V c = op(__builtin_shufflevector(a, b, 0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27),
                     __builtin_shufflevector(a, b, 4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31));
      const auto e = op(__builtin_shufflevector(c, c, 0, 1, 4, 5, 8, 9, 12, 13),
                        __builtin_shufflevector(c, c, 2, 3, 6, 7, 10, 11, 14, 15));
      return op(__builtin_shufflevector(e, e, 0, 2, 4, 6), __builtin_shufflevector(e, e, 1, 3, 5, 7));
    } else {
      static_assert(sizeof(V) / sizeof(m[0][0]) == 8, "reduce_quad: 8 or 16 lanes");
      const V a = op(__builtin_shufflevector(m[0], m[1], 0, 1, 2, 3, 8, 9, 10, 11),
                     __builtin_shufflevector(m[0], m[1], 4, 5, 6, 7, 12, 13, 14, 15));
      const V b = op(__builtin_shufflevector(m[2], m[3], 0, 1, 2, 3, 8, 9, 10, 11),
                     __builtin_shufflevector(m[2], m[3], 4, 5, 6, 7, 12, 13, 14, 15));
      // lanes 2 g, 2 g + 1: group g
      const V c = op(__builtin_shufflevector(a, b, 0, 1, 4, 5, 8, 9, 12, 13),
                     __builtin_shufflevector(a, b, 2, 3, 6, 7, 10, 11, 14, 15));
      return op(__builtin_shufflevector(c, c, 0, 2, 4, 6), __builtin_shufflevector(c, c, 1, 3, 5, 7));
    }
  }

  /// The 32 values of one group, times id, as int8 stored at qg; adds them to s.
  static void round_group(const float* x, float id, std::int8_t* qg, elem_ints& s) noexcept {
    constexpr std::size_t parts = q8_group / elem_lanes;
    const elem_vec zero{};
    // q8_round in every lane: round to nearest even by adding and removing 1.5 * 2^23
    // (exact for |r| <= 127, the same result as nearbyint in the default rounding mode).
    constexpr float magic = 12582912.0f;
#pragma GCC unroll 4
    for (std::size_t h = 0; h < parts; ++h) {
      elem_vec r = load_lanes<elem_vec>(x + h * elem_lanes) * id;
      r = r == r ? r : zero;
      r = r < zero - 127.0f ? zero - 127.0f : r;
      r = r > zero + 127.0f ? zero + 127.0f : r;
      r = (r + magic) - magic;
      const elem_ints qi = __builtin_convertvector(r, elem_ints);
      s += qi;
      const elem_bytes q8 = __builtin_convertvector(qi, elem_bytes);
      __builtin_memcpy(qg + h * elem_lanes, &q8, sizeof(q8));
    }
  }

  /// Lanes of the largest |x| over a group (NaN skipped), to be reduced over lanes.
  static elem_vec group_amax(const float* x) noexcept {
    constexpr std::size_t parts = q8_group / elem_lanes;
    const elem_vec zero{};
    elem_vec m = zero;
#pragma GCC unroll 4
    for (std::size_t h = 0; h < parts; ++h) {
      const elem_vec v = load_lanes<elem_vec>(x + h * elem_lanes);
      const elem_vec a = v < zero ? -v : v;
      m = a > m ? a : m;  // NaN compares false: skipped, as in the scalar loop
    }
    return m;
  }

  /// The scales of four whole groups.
  static void quad_scales(const float* x, float* scale4) noexcept {
    elem_vec m[4];  // unrolled: the arrays stay in registers, not in misaligned stack slots
#pragma GCC unroll 4
    for (int g = 0; g < 4; ++g) m[g] = group_amax(x + g * q8_group);
    store4(scale4, reduce_quad(m, [](auto u, auto v) { return u > v ? u : v; }) / 127.0f);
  }

  /// The values and corrections of four whole groups whose scales are stored.
  static void round_quad(const float* x, const float* scale4, std::int8_t* q4, std::int32_t* correction4) noexcept {
    v4 d;
    __builtin_memcpy(&d, scale4, sizeof(d));
    const v4 zero{};
    const v4 id = d > zero ? 1.0f / d : zero;
    elem_ints s[4] = {};
#pragma GCC unroll 4
    for (int g = 0; g < 4; ++g) round_group(x + g * q8_group, id[g], q4 + g * q8_group, s[g]);
    const vi4 c = reduce_quad(s, [](auto u, auto v) { return u + v; }) * -128;
    __builtin_memcpy(correction4, &c, sizeof(c));
  }

  /// One whole group of 32: writes q, adds sum(q) to `sum`, returns the scale.
  static float quantize_group(const float* x, std::int8_t* qg, std::int32_t& sum) noexcept {
    const float d = max_lanes(group_amax(x)) / 127.0f;
    const float id = d > 0.0f ? 1.0f / d : 0.0f;
    elem_ints s{};
    round_group(x, id, qg, s);
    for (std::size_t i = 0; i < elem_lanes; ++i) sum += s[i];
    return d;
  }
};

/// Where weight (r, j) of a w8a8 matrix with `groups` groups per row lives: panels of 16
/// rows, and within a panel, per 4 columns, 16 rows x 4 bytes (one VNNI operand).
[[nodiscard]] inline std::size_t i8_offset(std::size_t r, std::size_t j, std::size_t groups) noexcept {
  const std::size_t quads = groups * (q8_group / i8_quad);
  return (((r / lanes) * quads + j / i8_quad) * lanes + r % lanes) * i8_quad + j % i8_quad;
}

/// A w8a8 weight matrix as the tiles read it: biased weights (`i8_offset` order) and the
/// fp32 scales of each panel's 16 rows side by side per group (s + (p groups + g) 16).
struct i8_panels {
  const std::uint8_t* u;
  const float* s;
  std::size_t groups;
};

/// The portable path, and the reference the tests hold the VNNI tiles to: output rows
/// [16 p0, 16 p0 + rows) for tokens [t0, t0 + tokens).
inline void i8_product_scalar(const i8_panels& w, std::size_t p0, std::size_t rows, const i8_inputs& x,
                              std::size_t t0, std::size_t tokens, float* y, std::size_t ldy) noexcept {
  const std::size_t G = w.groups;
  for (std::size_t t = 0; t < tokens; ++t) {
    const std::int8_t* xq = x.q.data() + (t0 + t) * G * q8_group;
    const float* xs = x.scale.data() + (t0 + t) * G;
    for (std::size_t i = 0; i < rows; ++i) {
      const std::size_t r = p0 * lanes + i;
      float acc = 0.0f;
      for (std::size_t g = 0; g < G; ++g) {
        std::int32_t s = 0;
        for (std::size_t j = g * q8_group; j < (g + 1) * q8_group; ++j)
          s += (static_cast<std::int32_t>(w.u[i8_offset(r, j, G)]) - 128) * xq[j];
        const float d = w.s[((r / lanes) * G + g) * lanes + r % lanes] * xs[g];
        acc = fmadd(static_cast<float>(s), d, acc);
      }
      y[t * ldy + i] = acc;
    }
  }
}

#if SPECDEC_DETAIL_VNNI
/// Outputs of P panels x T tokens (rows: at most 16 P valid rows from the tile's first).
template <int P, int T>
inline void i8_tile(const i8_panels& w, std::size_t p0, const i8_inputs& x, std::size_t t0, float* y,
                    std::size_t ldy, std::size_t rows) noexcept {
  static_assert(2 * P * T + P + 2 <= 32, "i8_tile: P x T int and float accumulators and P weights must fit 32 registers");
  const std::size_t G = w.groups;
  const std::size_t quads = G * (q8_group / i8_quad);
  v16 acc[P][T];
#pragma GCC unroll 16
  for (int p = 0; p < P; ++p)
#pragma GCC unroll 16
    for (int t = 0; t < T; ++t) acc[p][t] = v16{};
  const std::uint8_t* up[P];
#pragma GCC unroll 16
  for (int p = 0; p < P; ++p) up[p] = w.u + (p0 + static_cast<std::size_t>(p)) * quads * 64;
  for (std::size_t g = 0; g < G; ++g) {
    // Each integer sum starts at its input group's VNNI correction: integer sums
    // are exact in any order, so this is isum_g, one subtraction per output fewer.
    vi16 is[P][T];
#pragma GCC unroll 16
    for (int t = 0; t < T; ++t) {
      const vi16 start = vi16{} + x.correction[(t0 + static_cast<std::size_t>(t)) * G + g];
#pragma GCC unroll 16
      for (int p = 0; p < P; ++p) is[p][t] = start;
    }
#pragma GCC unroll 8
    for (std::size_t c = 0; c < q8_group / i8_quad; ++c) {
      const std::size_t quad = g * (q8_group / i8_quad) + c;
      vi16 wv[P];
#pragma GCC unroll 16
      for (int p = 0; p < P; ++p) load_bytes64(wv[p], up[p] + quad * 64);
#pragma GCC unroll 16
      for (int t = 0; t < T; ++t) {
        std::int32_t four;
        __builtin_memcpy(&four, x.q.data() + (t0 + static_cast<std::size_t>(t)) * G * q8_group + quad * i8_quad, 4);
        const vi16 xb = vi16{} + four;
#pragma GCC unroll 16
        for (int p = 0; p < P; ++p) dpbusd_lanes(is[p][t], wv[p], xb);
      }
    }
    v16 ws[P];
#pragma GCC unroll 16
    for (int p = 0; p < P; ++p) load16(ws[p], w.s + ((p0 + static_cast<std::size_t>(p)) * G + g) * lanes);
#pragma GCC unroll 16
    for (int t = 0; t < T; ++t) {
      const std::size_t xi = (t0 + static_cast<std::size_t>(t)) * G + g;
      v16 xs;
      splat(xs, x.scale[xi]);
#pragma GCC unroll 16
      for (int p = 0; p < P; ++p) {
        // float(isum) exactly (|isum| < 2^24), times the one rounded product of the scales.
        const v16 f = __builtin_convertvector(is[p][t], v16);
        fmadd_lanes(acc[p][t], f, ws[p] * xs);
      }
    }
  }
  store_tile<P, T>(acc, y, ldy, rows);
}

/// i8_tile<P, tokens> for a runtime tokens <= T.
template <int P, int T>
inline void i8_tile_upto(int tokens, const i8_panels& w, std::size_t p0, const i8_inputs& x, std::size_t t0,
                         float* y, std::size_t ldy, std::size_t rows) noexcept {
  if constexpr (T > 1) {
    if (tokens < T) return i8_tile_upto<P, T - 1>(tokens, w, p0, x, t0, y, ldy, rows);
  }
  i8_tile<P, T>(w, p0, x, t0, y, ldy, rows);
}

/// The operands of one `matmul_i8` call (as `panel_product`'s, over quantized inputs).
struct i8_product {
  const i8_panels& w;
  std::size_t first, p_end, rows;
  const i8_inputs& x;
  std::size_t k;
  float* y;
  std::size_t ldy;
};

/// Panels [p, p_end) in tiles of Policy::panels (advancing p past the whole tiles), all k
/// tokens in ceil(k / Policy::tokens) near-equal token tiles.
template <class Policy>
inline void i8_tiles(std::size_t& p, const i8_product& m) noexcept {
  const auto tile = [&](std::size_t pt, std::size_t r0, std::size_t rows, std::size_t, std::size_t t0, int tokens) {
    i8_tile_upto<Policy::panels, Policy::tokens>(tokens, m.w, pt, m.x, t0, m.y + t0 * m.ldy + r0, m.ldy, rows);
  };
  for_each_panel_tile<Policy>(p, m.first, m.p_end, m.rows, m.k, tile);
}

/// Every tile of `family`, in order, over all panels of the product.
template <class... Policies>
inline void run_i8_tiles(tile_family<Policies...>, const i8_product& m) noexcept {
  std::size_t p = m.first;
  (i8_tiles<Policies>(p, m), ...);
}
#endif

#if !SPECDEC_DETAIL_VNNI && defined(SPECDEC_DETAIL_I8_SIGN_DOTS)
/// Outputs of one panel x T tokens without VNNI (AVX2, see `add_i8_quad_dots`): per group,
/// each token's 16 integer sums over the group's 8 quads (the group's 512 weight bytes
/// stay in L1 from one token to the next), then acc = fmadd(float(isum), ws * xs, acc),
/// the portable path's steps.
template <int T>
inline void i8_sign_tile(const i8_panels& w, std::size_t p0, const i8_inputs& x, std::size_t t0, float* y,
                         std::size_t ldy, std::size_t rows) noexcept {
  constexpr std::size_t quads_per_group = q8_group / i8_quad;
  const std::size_t G = w.groups;
  const std::uint8_t* up = w.u + p0 * G * quads_per_group * 64;
  packet16 acc[1][T];
#pragma GCC unroll 16
  for (int t = 0; t < T; ++t) acc[0][t] = packet16{};
  for (std::size_t g = 0; g < G; ++g) {
    packet16 ws;
    load16(ws, w.s + (p0 * G + g) * lanes);
#pragma GCC unroll 16
    for (int t = 0; t < T; ++t) {
      const std::size_t xg = (t0 + static_cast<std::size_t>(t)) * G + g;
      const std::int8_t* xq = x.q.data() + xg * q8_group;
      ipacket16 is{};
#pragma GCC unroll 8
      for (std::size_t c = 0; c < quads_per_group; ++c)
        add_i8_quad_dots(is, up + (g * quads_per_group + c) * 64, load_i8_quad(xq + c * i8_quad));
      fmadd_i8_group(acc[0][t], is, ws, x.scale[xg]);
    }
  }
  store_tile<1, T>(acc, y, ldy, rows);
}

/// i8_sign_tile<tokens> for a runtime tokens <= T.
template <int T>
inline void i8_sign_tile_upto(int tokens, const i8_panels& w, std::size_t p0, const i8_inputs& x, std::size_t t0,
                              float* y, std::size_t ldy, std::size_t rows) noexcept {
  if constexpr (T > 1) {
    if (tokens < T) return i8_sign_tile_upto<T - 1>(tokens, w, p0, x, t0, y, ldy, rows);
  }
  i8_sign_tile<T>(w, p0, x, t0, y, ldy, rows);
}
#endif

/// Y[t][i] = sum over groups of the w8a8 product of weight row 16 p0 + i and input row t
/// (quantized by `x.quantize`), for i < rows, t < k; output row stride ldy. Tiles as
/// `i8_tile_table` (tiles.hpp) chooses them where the target has VNNI, else in
/// `i8_sign_tile_policy` tiles where it has AVX2, else the portable scalar path: the same
/// values.
inline void matmul_i8(const i8_panels& w, std::size_t p0, std::size_t rows, const i8_inputs& x, std::size_t k,
                      float* y, std::size_t ldy) noexcept {
  if (k == 0 || rows == 0) return;
#if SPECDEC_DETAIL_VNNI
  const i8_product m{w, p0, p0 + (rows + lanes - 1) / lanes, rows, x, k, y, ldy};
  choose_tiles(i8_tile_table{}, k, 0, [&](auto family) { run_i8_tiles(family, m); });
#elif defined(SPECDEC_DETAIL_I8_SIGN_DOTS)
  using policy = i8_sign_tile_policy;
  std::size_t p = p0;
  for_each_panel_tile<policy>(p, p0, p0 + (rows + lanes - 1) / lanes, rows, k,
                              [&](std::size_t pt, std::size_t r0, std::size_t tile_rows, std::size_t, std::size_t t0,
                                  int tokens) {
                                i8_sign_tile_upto<policy::tokens>(tokens, w, pt, x, t0, y + t0 * ldy + r0, ldy,
                                                                  tile_rows);
                              });
#else
  i8_product_scalar(w, p0, rows, x, 0, k, y, ldy);
#endif
}

}  // namespace specdec::cpu::detail
