#pragma once
/// \file backend/cpu/detail/kernels.hpp
/// The numeric kernels of the CPU transformer, written for batch invariance: every
/// reduction (dot product, sum of squares, softmax sum) runs in one fixed order that
/// depends only on the vector length, never on how many tokens are in the block, on the
/// position of a row or token inside a tile, or on memory alignment. That is what makes
/// row i of a k-token forward bit-identical to the i-th of k single-token forwards.
///
/// Why not Eigen's GEMM/GEMV for the projections: Eigen picks different kernels (and so
/// different summation orders) for matrix-vector and matrix-matrix products and for
/// different block shapes, which breaks bit-exactness between k = 1 and k > 1. Eigen is
/// used only for elementwise work, where every output element is one correctly rounded
/// operation and vectorisation cannot change the result.
///
/// Two product kernels, both written with GCC/Clang vector extensions (AVX-512 with
/// -march=native, narrower SIMD otherwise; unaligned loads and stores through a 4-byte-
/// aligned, may_alias vector type, see load16):
/// - weight products (`matmul_panels`, every weight format): weights stored in panels of
///   16 rows, one in-order multiply-add chain per output over the columns, each input
///   element broadcast into the 16-row accumulators of a panel;
/// - dot products (`dot`, `matmul_rows`: attention scores, sums of squares): one 16-lane
///   accumulator per (row, vector) pair, a fixed horizontal tree reduction, then a scalar
///   tail added in index order.
/// The weight products' multiply-adds go through `fmadd_lanes`, which rounds like the
/// scalar `fmadd` (fused where the target has an FMA) at every optimisation level. In the
/// dot-product tiles the vector `acc += w * x` is contracted into an FMA (or not) by the
/// same rule in every instantiation (a single-use multiply feeding an add, no vectoriser
/// involved), and scalar tails go through `fmadd`. So exactness across k holds in every
/// build; results may differ between builds with different -march flags.
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

/// An fp32 row stream: a row-major matrix with row stride `ld` (in floats), e.g. the keys
/// or values of a KV cache.
struct f32_rows {
  const float* w;
  std::size_t ld;
  [[nodiscard]] f32_rows advance(std::size_t rows) const noexcept { return {w + rows * ld, ld}; }
  /// 16 elements of row r starting at column j.
  void load(v16& out, std::size_t r, std::size_t j) const noexcept { load16(out, w + r * ld + j); }
  [[nodiscard]] float at(std::size_t r, std::size_t j) const noexcept { return w[r * ld + j]; }
  /// Prefetches (into L1) the cache line holding element (r, j), j a multiple of 16.
  /// Always inlined, like every prefetch helper here: GCC 12 deduces that an out-of-line
  /// void function containing only __builtin_prefetch is pure and deletes its calls.
  [[gnu::always_inline]] void prefetch_line(std::size_t r, std::size_t j) const noexcept {
    __builtin_prefetch(w + r * ld + j, 0, 3);
  }
};

/// Row stream `W` seen through a position map: row p is row p of `base` for p < `prefix`,
/// and row `slots[p - prefix]` from there on. A token tree's node attends to the cached
/// positions 0..prefix-1 and then to its ancestors, whose keys and values sit at the
/// slots of their nodes: through this map a node reads them in the order a chain forward
/// of its root-to-node path reads them, so every score and every weighted value sum
/// (the kernels' results depend on the loaded values and the row count only) is the
/// chain's, bit for bit.
template <class W>
struct gathered_rows {
  W base;
  std::size_t prefix;
  const std::size_t* slots;
  std::size_t first = 0;  ///< rows skipped by advance()
  [[nodiscard]] gathered_rows advance(std::size_t rows) const noexcept { return {base, prefix, slots, first + rows}; }
  [[nodiscard]] std::size_t slot(std::size_t r) const noexcept {
    const std::size_t p = first + r;
    return p < prefix ? p : slots[p - prefix];
  }
  void load(v16& out, std::size_t r, std::size_t j) const noexcept { base.load(out, slot(r), j); }
  [[nodiscard]] float at(std::size_t r, std::size_t j) const noexcept { return base.at(slot(r), j); }
  [[gnu::always_inline]] void prefetch_line(std::size_t r, std::size_t j) const noexcept {
    base.prefetch_line(slot(r), j);
  }
};

/// A tile's extra prefetching: none, or (`prefetch_next`) a share of the next row tile's
/// rows, so that they arrive in L1 while this row tile computes (a row tile, the next
/// one and a token tile's inputs fit a 48 KB L1, so the prefetch targets L1, not L2: the
/// data is then in place when the next row tile starts). The `tiles` token
/// tiles of a row tile split the next tile between them: token tile `phase`, at its step
/// s (column j = 16 s of `steps`), prefetches column 16 g / tiles of the next tile when
/// g = phase * steps + s is a multiple of `tiles`. The prefetches are thus spread evenly
/// over all of the row tile's compute, and together cover every column once.
/// `column()` is called once per step, in order, and says which column to prefetch in all
/// rows (`at(r, column)`), or `none`; it keeps a countdown, so there is no division per
/// step.
inline constexpr std::size_t no_column = ~std::size_t{0};
struct no_prefetch {
  std::size_t column() noexcept { return no_column; }
  void at(std::size_t, std::size_t) const noexcept {}
};
template <class W>
struct prefetch_next {
  prefetch_next(const W& next, std::size_t phase, std::size_t tiles, std::size_t steps) noexcept
      : next_(next), tiles_(tiles) {
    const std::size_t g0 = phase * steps;  // this tile's first step, counted over all tiles
    countdown_ = (tiles - g0 % tiles) % tiles;
    col_ = (g0 + countdown_) / tiles * lanes;
  }
  std::size_t column() noexcept {
    if (countdown_ != 0) {
      --countdown_;
      return no_column;
    }
    countdown_ = tiles_ - 1;
    const std::size_t c = col_;
    col_ += lanes;
    return c;
  }
  [[gnu::always_inline]] void at(std::size_t r, std::size_t col) const noexcept { next_.prefetch_line(r, col); }

 private:
  W next_;
  std::size_t tiles_, countdown_ = 0, col_ = 0;
};

/// Y[t][r] = dot(W[r], X[t]) for an R x T tile: R rows of the row stream `w` (fp32, or a
/// 16-bit KV cache decoded to fp32 in registers) against T input vectors (stride ldx),
/// written to Y (stride ldy). Each row chunk is loaded and decoded once and applied to
/// all T vectors. Every (r, t) result is computed exactly as the 1 x 1 tile would compute
/// it: the decoded values are exact functions of the stored bits, and the accumulation
/// order depends on n only.
template <int R, int T, class W, class P = no_prefetch>
inline void dot_tile(const W& w, const float* x, std::size_t ldx, float* y, std::size_t ldy,
                     std::size_t n, P pf = {}) noexcept {
  v16 acc[R][T];
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) acc[r][t] = v16{};
  const std::size_t n16 = n - n % lanes;
  // Which operand stays in registers: all R decoded weight vectors (token-outer order)
  // when they fit next to the accumulators in the 32 AVX-512 registers, else the T input
  // vectors (row-outer order, one weight register at a time). Pinning R weights next to
  // R x T accumulators would spill an accumulator to the stack, putting a store-to-load
  // round trip into every iteration's dependency chain. Either order computes every
  // accumulator identically.
  if constexpr (R * T + R + 1 <= 32) {
    for (std::size_t j = 0; j < n16; j += lanes) {
      v16 wv[R];
      const std::size_t pc = pf.column();
      for (int r = 0; r < R; ++r) {
        w.load(wv[r], static_cast<std::size_t>(r), j);
        // A weight used by one token only may be folded into its FMA as a memory
        // operand: half the instructions per weight, so the out-of-order window holds
        // more of the stream in flight (the same bits; see bench/bench_forward.cpp, k:1).
        // The 16-bit and q8_0 streams decode their loads, so it does not apply to them.
        if constexpr (T > 1) pin_register(wv[r]);
        if (pc != no_column) pf.at(static_cast<std::size_t>(r), pc);
      }
      for (int t = 0; t < T; ++t) {
        v16 xv;
        load16(xv, x + t * ldx + j);
        pin_register(xv);
        for (int r = 0; r < R; ++r) acc[r][t] += wv[r] * xv;
      }
    }
  } else {
    static_assert(R * T + T + 1 <= 32, "dot_tile: R x T accumulators and T inputs must fit 32 registers");
    for (std::size_t j = 0; j < n16; j += lanes) {
      v16 xv[T];
      for (int t = 0; t < T; ++t) {
        load16(xv[t], x + t * ldx + j);
        pin_register(xv[t]);
      }
      const std::size_t pc = pf.column();
      for (int r = 0; r < R; ++r) {
        v16 wv;
        w.load(wv, static_cast<std::size_t>(r), j);
        pin_register(wv);
        if (pc != no_column) pf.at(static_cast<std::size_t>(r), pc);
        for (int t = 0; t < T; ++t) acc[r][t] += wv * xv[t];
      }
    }
  }
  // y[t][r] = hsum16(acc[r][t]) + (the scalar tail of columns n16..n), four rows of a
  // token at a time through hsum16x4 (the same bits as hsum16). Fully unrolled (R and T
  // are constants), and the tail loop only entered when there is a tail: otherwise GCC
  // kept the whole acc array on the stack, main loop included.
#pragma GCC unroll 8
  for (int t = 0; t < T; ++t) {
    const float* xt = x + t * ldx;
    float* yt = y + t * ldy;
    float tails[R] = {};
    if (n16 != n) {
      for (int r = 0; r < R; ++r) {
        float s = 0.0f;
        for (std::size_t j = n16; j < n; ++j) s = fmadd(w.at(static_cast<std::size_t>(r), j), xt[j], s);
        tails[r] = s;
      }
    }
    constexpr int R4 = R - R % 4;
#pragma GCC unroll 16
    for (int r = 0; r < R4; r += 4) {
      const v4 h = hsum16x4(acc[r][t], acc[r + 1][t], acc[r + 2][t], acc[r + 3][t]);
#pragma GCC unroll 4
      for (int i = 0; i < 4; ++i) yt[r + i] = h[i] + tails[r + i];
    }
#pragma GCC unroll 4
    for (int r = R4; r < R; ++r) yt[r] = hsum16(acc[r][t]) + tails[r];
  }
}

/// The batch-invariant dot product every reduction of the model goes through.
inline float dot(const float* a, const float* b, std::size_t n) noexcept {
  float out;
  dot_tile<1, 1>(f32_rows{a, 0}, b, 0, &out, 0, n);
  return out;
}

/// dot_tile<R, tokens> for a runtime tokens <= T.
template <int R, int T, class W, class P>
inline void dot_tile_upto(int tokens, const W& w, const float* x, std::size_t ldx, float* y,
                          std::size_t ldy, std::size_t n, const P& pf) noexcept {
  if constexpr (T > 1) {
    if (tokens < T) return dot_tile_upto<R, T - 1>(tokens, w, x, ldx, y, ldy, n, pf);
  }
  dot_tile<R, T>(w, x, ldx, y, ldy, n, pf);
}

/// First token of token tile `idx` when k tokens are cut into `tiles` near-equal tiles
/// (sizes differ by at most one, the larger ones first).
inline std::size_t token_tile_begin(std::size_t k, std::size_t tiles, std::size_t idx) noexcept {
  return idx * (k / tiles) + std::min(idx, k % tiles);
}

/// All token tiles of one R-row tile `wi`; with `next` (the next row tile, or null), each
/// token tile prefetches its share of the next tile's rows (see `prefetch_next`).
template <int R, int T, class W>
inline void token_tiles(const W& wi, const W* next, std::size_t n, const float* x, std::size_t k,
                        std::size_t ldx, float* y, std::size_t ldy, std::size_t tiles) noexcept {
  for (std::size_t ti = 0; ti < tiles; ++ti) {
    const std::size_t t0 = token_tile_begin(k, tiles, ti);
    const int tt = static_cast<int>(token_tile_begin(k, tiles, ti + 1) - t0);
    if (next)
      dot_tile_upto<R, T>(tt, wi, x + t0 * ldx, ldx, y + t0 * ldy, ldy, n,
                          prefetch_next<W>{*next, ti, tiles, n / lanes});
    else
      dot_tile_upto<R, T>(tt, wi, x + t0 * ldx, ldx, y + t0 * ldy, ldy, n, no_prefetch{});
  }
}

/// Rows [i, i + R*m) of a row-stream product in R-row tiles (advancing i), the k vectors
/// cut into `tiles` token tiles of at most T; each row tile prefetches the next one (the
/// rows here are short, too short for the hardware prefetchers to ramp up on).
template <int R, int T, class W>
inline void matmul_row_tiles(std::size_t& i, const W& w, std::size_t rows, std::size_t n, const float* x,
                             std::size_t k, std::size_t ldx, float* y, std::size_t ldy, std::size_t tiles) noexcept {
  for (; i + R <= rows; i += R) {
    const W wi = w.advance(i);
    if (i + 2 * R <= rows) {
      const W next = w.advance(i + R);
      token_tiles<R, T>(wi, &next, n, x, k, ldx, y + i, ldy, tiles);
    } else {
      token_tiles<R, T>(wi, static_cast<const W*>(nullptr), n, x, k, ldx, y + i, ldy, tiles);
    }
  }
}

/// Y[t][i] = dot(W[i], X[t]) for i < rows, t < k over a row stream `w` (fp32 or a 16-bit
/// KV cache; row-major, stride from the stream): attention scores, where the "weight rows"
/// are one KV head's keys and the k vectors its query heads (k = n_heads / n_kv_heads).
/// The vectors are cut into ceil(k / 3) near-equal token tiles, the rows into tiles of 12,
/// 12 or 8 for token tiles of 1, 2 or 3 (then 4- and 1-row tails). Every (row, vector)
/// result is exactly `dot(W[i], X[t])`, whatever the tiles. (The weight products use
/// panel-major weights instead, see matmul_panels below.)
template <class W>
inline void matmul_rows(const W& w, std::size_t rows, std::size_t n, const float* x, std::size_t k,
                        std::size_t ldx, float* y, std::size_t ldy) noexcept {
  if (k == 0) return;
  std::size_t i = 0;
  const std::size_t tiles = (k + 2) / 3;
  switch ((k + tiles - 1) / tiles) {
    case 1: matmul_row_tiles<12, 1>(i, w, rows, n, x, k, ldx, y, ldy, tiles); break;
    case 2: matmul_row_tiles<12, 2>(i, w, rows, n, x, k, ldx, y, ldy, tiles); break;
    default: matmul_row_tiles<8, 3>(i, w, rows, n, x, k, ldx, y, ldy, tiles); break;
  }
  matmul_row_tiles<4, 3>(i, w, rows, n, x, k, ldx, y, ldy, tiles);
  matmul_row_tiles<1, 3>(i, w, rows, n, x, k, ldx, y, ldy, tiles);
}

// ---- Weight products over panel-major weights (every weight format's `matmul`) ----
//
// A weight matrix [rows][n] is stored as panels of 16 rows: panel p holds, for each column
// j in order, the 16 weights W[16 p + l][j] (l < 16) side by side, so a panel is one
// sequential stream and one vector load yields column j of 16 rows. The product is then
// an outer-product kernel: per column, each token's input x[t][j] is broadcast and
// multiplied into the 16-row accumulators of every panel of the tile. Each output is one
// multiply-add chain over j = 0 .. n - 1 in order, from 0 (as llama2.c's scalar loop sums
// it), whatever the tile shape, the number of tokens, the thread split or the rows' place
// in a tile, so k-token blocks equal k single-token forwards bit for bit. Against the
// row-major dot-product tiles (`matmul_rows`, still used for attention, where the "weight
// rows" are the KV cache) there is no horizontal reduction per output and one broadcast
// feeds a whole panel, and the single-token stream is a few long sequential panels instead
// of many 1.5 KB rows, which the hardware prefetchers follow better (see
// bench/bench_forward.cpp).

/// Half of a 48 KB L1 data cache, the size the tile shapes are chosen for (see
/// matmul_panels); a smaller L1 changes only their cost, never a result.
inline constexpr std::size_t half_l1_bytes = 24 * 1024;

/// fp32 panels (see above): column j of panel p at w + (p n + j) 16.
struct f32_panels {
  static constexpr std::size_t column_bytes = 64;  ///< bytes of one column of a panel
  const float* w;
  std::size_t n;  ///< columns
  void load(v16& out, std::size_t p, std::size_t j) const noexcept { load16(out, w + (p * n + j) * lanes); }
  /// Prefetches (into L1) the line holding column j of panel p; one call per 64 bytes.
  [[gnu::always_inline]] void prefetch_line(std::size_t p, std::size_t j) const noexcept {
    __builtin_prefetch(w + (p * n + j) * lanes, 0, 3);
  }
};

/// Y[t][16 p + l] = acc[p][t][l] for the first `rows` (at most 16 P) rows: a panel tile's
/// outputs, the last panel possibly partial.
template <int P, int T>
inline void store_tile(const v16 (&acc)[P][T], float* y, std::size_t ldy, std::size_t rows) noexcept {
#pragma GCC unroll 16
  for (int t = 0; t < T; ++t) {
    float* yt = y + static_cast<std::size_t>(t) * ldy;
#pragma GCC unroll 16
    for (int p = 0; p < P; ++p) {
      const std::size_t r = static_cast<std::size_t>(p) * lanes;
      if (r + lanes <= rows) store16(yt + r, acc[p][t]);
      else if (r < rows) store_first(yt + r, acc[p][t], rows - r);
    }
  }
}

/// Y[t][16 (p0 + p) + l] for the P panels p0 .. p0 + P - 1 and T tokens: `rows` (at most
/// 16 P) output rows from the tile's first are written (the last panel of a matrix may be
/// partial; its padding rows are zero and not written). With `Prefetch`, the loop also
/// prefetches column j of panels `pf .. pf + P - 1` (the next tile) as it goes.
template <int P, int T, bool Prefetch, class W>
inline void panel_tile(const W& w, std::size_t p0, std::size_t n, const float* x, std::size_t ldx, float* y,
                       std::size_t ldy, std::size_t rows, std::size_t pf) noexcept {
  static_assert(P * T + P + 1 <= 32, "panel_tile: P x T accumulators, P weights and a broadcast must fit 32 registers");
  // The loops over panels and tokens are unrolled explicitly: at -O2 GCC otherwise kept
  // the accumulators in memory.
  v16 acc[P][T];
#pragma GCC unroll 16
  for (int p = 0; p < P; ++p)
#pragma GCC unroll 16
    for (int t = 0; t < T; ++t) acc[p][t] = v16{};
  for (std::size_t j = 0; j < n; ++j) {
    v16 wv[P];
#pragma GCC unroll 16
    for (int p = 0; p < P; ++p) {
      w.load(wv[p], p0 + static_cast<std::size_t>(p), j);
      if constexpr (T > 1) pin_register(wv[p]);
      if constexpr (Prefetch) w.prefetch_line(pf + static_cast<std::size_t>(p), j);
    }
#pragma GCC unroll 16
    for (int t = 0; t < T; ++t) {
      const float xs = x[static_cast<std::size_t>(t) * ldx + j];
#pragma GCC unroll 16
      for (int p = 0; p < P; ++p) fmadd_lanes(acc[p][t], wv[p], xs);
    }
  }
  store_tile<P, T>(acc, y, ldy, rows);
}

/// panel_tile<P, tokens> for a runtime tokens <= T.
template <int P, int T, bool Prefetch, class W>
inline void panel_tile_upto(int tokens, const W& w, std::size_t p0, std::size_t n, const float* x, std::size_t ldx,
                            float* y, std::size_t ldy, std::size_t rows, std::size_t pf) noexcept {
  if constexpr (T > 1) {
    if (tokens < T) return panel_tile_upto<P, T - 1, Prefetch>(tokens, w, p0, n, x, ldx, y, ldy, rows, pf);
  }
  panel_tile<P, T, Prefetch>(w, p0, n, x, ldx, y, ldy, rows, pf);
}

/// Panels [p, p_end) in tiles of P (advancing p) for all k tokens, cut into `tiles`
/// near-equal token tiles of at most T. Output row 0 is panel `first`'s first row;
/// `rows` output rows exist from there. The first token tile of a row tile prefetches the
/// next P panels when they exist below `pf_end`.
template <int P, int T, class W>
inline void panel_tiles(std::size_t& p, std::size_t p_end, const W& w, std::size_t first, std::size_t rows,
                        std::size_t n, const float* x, std::size_t k, std::size_t ldx, float* y, std::size_t ldy,
                        std::size_t tiles, bool prefetch, std::size_t pf_end) noexcept {
  for (; p + P <= p_end; p += P) {
    const std::size_t r0 = (p - first) * lanes;
    const std::size_t tile_rows = std::min<std::size_t>(rows - r0, P * lanes);
    for (std::size_t ti = 0; ti < tiles; ++ti) {
      const std::size_t t0 = token_tile_begin(k, tiles, ti);
      const int tt = static_cast<int>(token_tile_begin(k, tiles, ti + 1) - t0);
      const float* xt = x + t0 * ldx;
      float* yt = y + t0 * ldy + r0;
      if (prefetch && ti == 0 && p + 2 * P <= pf_end)
        panel_tile_upto<P, T, true>(tt, w, p, n, xt, ldx, yt, ldy, tile_rows, p + P);
      else
        panel_tile_upto<P, T, false>(tt, w, p, n, xt, ldx, yt, ldy, tile_rows, 0);
    }
  }
}

/// Y[t][i] = sum_j W[16 p0 + i][j] X[t][j] for i < rows, t < k over a panel stream `w`
/// (fp32, or a 16-bit or q8_0 format decoded exactly to fp32 in registers), starting at
/// panel p0; output row stride ldy. `pf_panels` (at least the panels the rows span) says
/// how many panels the stream has from p0: when the caller's next call continues after
/// these rows (a thread's next chunk), the last tile prefetches its first panels.
/// Tiles (panels x tokens): one token 8 x 1, without software prefetch (eight long
/// sequential streams, which the hardware prefetchers follow; prefetching the next tile
/// made it slower); 2-8 tokens as many panels x k as fit half the L1 (1, 2, or 4 up to 6
/// tokens: kjv-big fp32 takes 1, bf16 2); 9+ tokens 2 x 8 over token tiles of at most 8
/// (the second token tile re-reads the tile's panels from L1/L2). Blocks of 2+ tokens
/// prefetch the next tile's panels into L1 while they compute: one fp32 panel ahead
/// (24 KB at kjv-big's 384 columns) stays within a 48 KB L1, where two panels x 6
/// tokens with two panels ahead would not; the hardware prefetchers alone do not keep
/// up with several tokens' compute per panel. Shapes never change a result; the tile
/// choice per block size is what bench/bench_forward.cpp's k:1..16 rows show.
template <class W>
inline void matmul_panels(const W& w, std::size_t p0, std::size_t rows, std::size_t n, const float* x,
                          std::size_t k, std::size_t ldx, float* y, std::size_t ldy,
                          std::size_t pf_panels = 0) noexcept {
  if (k == 0 || rows == 0) return;
  const std::size_t p_end = p0 + (rows + lanes - 1) / lanes;
  const std::size_t pf_end = std::max(p_end, p0 + pf_panels);
  std::size_t p = p0;
  if (k == 1) {
    panel_tiles<8, 1>(p, p_end, w, p0, rows, n, x, k, ldx, y, ldy, 1, false, pf_end);
    panel_tiles<1, 1>(p, p_end, w, p0, rows, n, x, k, ldx, y, ldy, 1, false, pf_end);
    return;
  }
  if (k <= 8) {
    // As many panels per tile as keep the tile, and so the prefetch distance, within
    // half the L1 (the tile being read plus the one being prefetched), up to 4.
    const std::size_t tile_panels = std::clamp<std::size_t>(half_l1_bytes / std::max<std::size_t>(1, n * W::column_bytes), 1, 4);
    if (tile_panels >= 4 && k <= 6) panel_tiles<4, 6>(p, p_end, w, p0, rows, n, x, k, ldx, y, ldy, 1, true, pf_end);
    if (tile_panels >= 2) panel_tiles<2, 8>(p, p_end, w, p0, rows, n, x, k, ldx, y, ldy, 1, true, pf_end);
    panel_tiles<1, 8>(p, p_end, w, p0, rows, n, x, k, ldx, y, ldy, 1, true, pf_end);
    return;
  }
  const std::size_t tiles = (k + 7) / 8;
  panel_tiles<2, 8>(p, p_end, w, p0, rows, n, x, k, ldx, y, ldy, tiles, true, pf_end);
  panel_tiles<1, 8>(p, p_end, w, p0, rows, n, x, k, ldx, y, ldy, tiles, true, pf_end);
}

/// out_m[i] = sum over p < count of a_m[p] * v_p[i] for i < n and each of M weight vectors
/// a_m = a + m * lda (output out_m = out + m * ldo), where v_p is row p of the row stream
/// `v` (fp32, or a 16-bit KV cache decoded exactly to fp32 in registers): the
/// attention-weighted sums of value rows for M query heads sharing one KV head (grouped-
/// query attention), so each value row is loaded once for all M heads. Each element is
/// one multiply-add chain in p order starting from 0, computed the same way whatever M
/// (the vector `acc += a * v` is fused into an FMA or not by the same rule everywhere, see
/// the file comment): grouping changes no result. Up to 64 elements per head stay in
/// registers instead of being stored and reloaded per p.
template <int M, class W>
inline void weighted_rows_sum_group(const float* a, std::size_t lda, std::size_t count, const W& v, float* out,
                                    std::size_t ldo, std::size_t n) noexcept {
  static_assert(M >= 1 && M * 4 + 4 + M <= 32, "weighted_rows_sum_group: M heads x 4 chunks must fit the registers");
  std::size_t i = 0;
  for (; i + 4 * lanes <= n; i += 4 * lanes) {
    v16 acc[M][4];
    for (int m = 0; m < M; ++m)
      for (int c = 0; c < 4; ++c) acc[m][c] = v16{};
    for (std::size_t p = 0; p < count; ++p) {
      v16 vv[4];
      for (int c = 0; c < 4; ++c) {
        v.load(vv[c], p, i + c * lanes);
        pin_register(vv[c]);
      }
      for (int m = 0; m < M; ++m) {
        const float ap = a[static_cast<std::size_t>(m) * lda + p];
        for (int c = 0; c < 4; ++c) acc[m][c] += ap * vv[c];
      }
    }
    for (int m = 0; m < M; ++m)
      for (int c = 0; c < 4; ++c)
        store16(out + static_cast<std::size_t>(m) * ldo + i + c * lanes, acc[m][c]);
  }
  for (; i + lanes <= n; i += lanes) {
    for (int m = 0; m < M; ++m) {
      const float* am = a + static_cast<std::size_t>(m) * lda;
      v16 acc{};
      for (std::size_t p = 0; p < count; ++p) {
        v16 vv;
        v.load(vv, p, i);
        acc += am[p] * vv;
      }
      store16(out + static_cast<std::size_t>(m) * ldo + i, acc);
    }
  }
  for (; i < n; ++i) {
    for (int m = 0; m < M; ++m) {
      const float* am = a + static_cast<std::size_t>(m) * lda;
      float acc = 0.0f;
      for (std::size_t p = 0; p < count; ++p) acc = fmadd(am[p], v.at(p, i), acc);
      out[static_cast<std::size_t>(m) * ldo + i] = acc;
    }
  }
}

/// weighted_rows_sum_group over fp32 value rows v + p * ldv.
template <int M>
inline void weighted_rows_sum_group(const float* a, std::size_t lda, std::size_t count, const float* v,
                                    std::size_t ldv, float* out, std::size_t ldo, std::size_t n) noexcept {
  weighted_rows_sum_group<M>(a, lda, count, f32_rows{v, ldv}, out, ldo, n);
}

/// weighted_rows_sum_group for a runtime number of heads `heads`: groups of up to 4. The
/// value rows are a row stream (`f32_rows`, or a 16-bit KV cache's `u16_rows`).
template <class W>
inline void weighted_rows_sum_heads(std::size_t heads, const float* a, std::size_t lda, std::size_t count,
                                    const W& v, float* out, std::size_t ldo, std::size_t n) noexcept {
  std::size_t h = 0;
  for (; h + 4 <= heads; h += 4) weighted_rows_sum_group<4>(a + h * lda, lda, count, v, out + h * ldo, ldo, n);
  switch (heads - h) {
    case 3: weighted_rows_sum_group<3>(a + h * lda, lda, count, v, out + h * ldo, ldo, n); break;
    case 2: weighted_rows_sum_group<2>(a + h * lda, lda, count, v, out + h * ldo, ldo, n); break;
    case 1: weighted_rows_sum_group<1>(a + h * lda, lda, count, v, out + h * ldo, ldo, n); break;
    default: break;
  }
}

/// weighted_rows_sum_heads over fp32 value rows v + p * ldv.
inline void weighted_rows_sum_heads(std::size_t heads, const float* a, std::size_t lda, std::size_t count,
                                    const float* v, std::size_t ldv, float* out, std::size_t ldo,
                                    std::size_t n) noexcept {
  weighted_rows_sum_heads(heads, a, lda, count, f32_rows{v, ldv}, out, ldo, n);
}

/// Inverse RMS of x as llama2.c computes it: 1 / sqrt(mean(x^2) + 1e-5), with the sum of
/// squares taken by the fixed-order `dot`.
inline float rms_inverse(const float* x, std::size_t n) noexcept {
  float ss = dot(x, x, n);
  ss /= static_cast<float>(n);
  ss += 1e-5f;
  return 1.0f / std::sqrt(ss);
}

typedef int vi16 __attribute__((vector_size(64)));

/// e^x in each of 16 lanes, elementwise: every lane goes through the same operations, so
/// a value's result depends on the value only (not on its lane, the vector length, the
/// block size or the thread). Cody-Waite range reduction x = n ln2 + r with
/// |r| <= ln2 / 2, Cephes' degree-5 polynomial for e^r, then 2^n through the exponent
/// bits; within 2 ulp of the correctly rounded e^x (tests compare it with std::exp over
/// the whole float range). Below -86.5 the result is 0 (e^-86.5 < 2^-124, which the
/// softmax and SiLU callers cannot tell from 0), above 88.0 it is +inf, NaN stays NaN.
/// It replaces a scalar libm call per element, which does not vectorise and runs once per
/// head and position (softmax) and once per hidden unit (SiLU) in every forward.
inline void exp16(v16& v) noexcept {
  constexpr float lo = -86.5f, hi = 88.0f;
  const v16 zero{};
  const v16 x = v;
  v16 xc = x < zero + lo ? zero + lo : x;
  xc = xc > zero + hi ? zero + hi : xc;
  xc = x == x ? xc : zero;  // NaN: computed as 0 (no float-to-int conversion of NaN), restored below
  // n = round-to-nearest-even(x / ln2) by the 1.5 * 2^23 trick; -125 <= n <= 127, so 2^n
  // is a normal float, built directly in the exponent bits.
  constexpr float magic = 12582912.0f;
  const v16 n = (xc * 1.44269504088896341f + magic) - magic;
  v16 r = xc - n * 0.693359375f;  // ln2 split in two: the first part has 9 bits
  r = r - n * -2.12194440e-4f;
  const v16 z = r * r;
  v16 p = 1.9875691500e-4f + zero;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  v16 y = p * z + r + 1.0f;
  const vi16 bits = (__builtin_convertvector(n, vi16) + 127) << 23;
  v16 scale;
  __builtin_memcpy(&scale, &bits, sizeof(scale));
  y = y * scale;
  y = x > zero + hi ? zero + __builtin_inff() : y;
  y = x < zero + lo ? zero : y;
  v = x == x ? y : x;
}

/// exp16 over x[0..n) in place: whole vectors, then the tail padded into one vector, so
/// every element takes the same path.
inline void exp_inplace(float* x, std::size_t n) noexcept {
  std::size_t i = 0;
  for (; i + lanes <= n; i += lanes) {
    v16 v;
    load16(v, x + i);
    exp16(v);
    store16(x + i, v);
  }
  if (i < n) {
    v16 v{};
    __builtin_memcpy(&v, x + i, (n - i) * sizeof(float));
    exp16(v);
    __builtin_memcpy(x + i, &v, (n - i) * sizeof(float));
  }
}

/// In-place softmax over x[0..n): max (exact in any order), e^(x - max) by `exp16`, their
/// sum in 16 lanes in index order (lane i % 16, the tail padded with zeros) reduced by
/// `hsum16`'s tree, then a division per element. The order depends on n only.
inline void softmax(float* x, std::size_t n) noexcept {
  // The maximum in 16 lanes (a scalar loop is one long dependency chain; GCC does not
  // vectorise a float max reduction without -ffast-math). Max is exact in any order.
  v16 vmax = v16{} - __builtin_inff();
  std::size_t i = 0;
  for (; i + lanes <= n; i += lanes) {
    v16 v;
    load16(v, x + i);
    vmax = v > vmax ? v : vmax;
  }
  float mx = x[0];
  for (std::size_t j = 0; j < lanes; ++j) mx = std::max(mx, vmax[j]);
  for (; i < n; ++i) mx = std::max(mx, x[i]);
  for (std::size_t j = 0; j < n; ++j) x[j] -= mx;
  exp_inplace(x, n);
  v16 acc{};
  for (i = 0; i + lanes <= n; i += lanes) {
    v16 v;
    load16(v, x + i);
    acc += v;
  }
  if (i < n) {
    v16 v{};
    __builtin_memcpy(&v, x + i, (n - i) * sizeof(float));
    acc += v;
  }
  const float sum = hsum16(acc);
  for (std::size_t j = 0; j < n; ++j) x[j] /= sum;
}

/// The rotation of pair i (0 <= i < head_size/2) of every head at position `pos`, as
/// llama2.c's run.c computes it in float: val = pos * 10000^(-2i/head_size).
inline void rope_angle(std::size_t pos, std::size_t i, std::size_t head_size, float& fcr,
                       float& fci) noexcept {
  const std::size_t head_dim = 2 * i;
  const float freq =
      1.0f / std::pow(10000.0f, static_cast<float>(head_dim) / static_cast<float>(head_size));
  const float val = static_cast<float>(pos) * freq;
  fcr = std::cos(val);
  fci = std::sin(val);
}

/// Rotary embedding of the pairs (2i, 2i+1) of every head of a row of `width` floats
/// (whole heads), with the cos/sin of the position precomputed by `rope_angle` (`fcr[i]`,
/// `fci[i]` for i < head_size/2). One plain loop per head, which GCC vectorises (16 pairs
/// per AVX-512 step; a scalar loop over the row with a per-element head index does not
/// vectorise, and this runs on the calling thread alone).
inline void rope_row(float* v, std::size_t width, std::size_t head_size, const float* fcr,
                     const float* fci) noexcept {
  const std::size_t half = head_size / 2;
  for (std::size_t h = 0; h + head_size <= width; h += head_size) {
    float* x = v + h;
    for (std::size_t i = 0; i < half; ++i) {
      const float v0 = x[2 * i];
      const float v1 = x[2 * i + 1];
      // Explicit fmadd: the rounding must not depend on whether the optimiser vectorised
      // (or alignment-peeled) this element.
      x[2 * i] = fmadd(v0, fcr[i], -(v1 * fci[i]));
      x[2 * i + 1] = fmadd(v0, fci[i], v1 * fcr[i]);
    }
  }
}

/// rope_row over a q row (width dim) and a k row (width kv_dim).
inline void rope(float* q, float* k, std::size_t dim, std::size_t kv_dim, std::size_t head_size,
                 const float* fcr, const float* fci) noexcept {
  rope_row(q, dim, head_size, fcr, fci);
  rope_row(k, kv_dim, head_size, fcr, fci);
}

/// hb[i] = silu(hb[i]) * hb2[i] over (a slice of) one token row: e^-x by `exp16`, which
/// is elementwise, so any slicing of the row (threads split it) gives the same bits. (Like
/// every kernel here it assumes no -ffast-math: reassociation would void the fixed
/// summation orders.)
inline void swiglu(float* hb, const float* hb2, std::size_t n) noexcept {
  const auto silu_times = [](v16& val, const v16& gate) {
    v16 e = -val;
    exp16(e);
    val *= 1.0f / (1.0f + e);
    val *= gate;
  };
  std::size_t i = 0;
  for (; i + lanes <= n; i += lanes) {
    v16 val, gate;
    load16(val, hb + i);
    load16(gate, hb2 + i);
    silu_times(val, gate);
    store16(hb + i, val);
  }
  if (i < n) {
    v16 val{}, gate{};
    __builtin_memcpy(&val, hb + i, (n - i) * sizeof(float));
    __builtin_memcpy(&gate, hb2 + i, (n - i) * sizeof(float));
    silu_times(val, gate);
    __builtin_memcpy(hb + i, &val, (n - i) * sizeof(float));
  }
}

}  // namespace specdec::cpu::detail
