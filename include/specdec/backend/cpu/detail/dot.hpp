#pragma once
/// \file backend/cpu/detail/dot.hpp
/// Row-major dot-product tiles: `dot` (sums of squares, every fixed-order dot product)
/// and `matmul_rows` (attention scores: one KV head's keys against its query heads).
#include <algorithm>
#include <cstddef>

#include "specdec/backend/cpu/detail/arch/vector.hpp"
#include "specdec/backend/cpu/detail/tiles.hpp"

namespace specdec::cpu::detail {

/// An fp32 row stream: a row-major matrix with row stride `ld` (in floats), e.g. the keys
/// or values of a KV cache.
struct f32_rows {
  const float* w;
  std::size_t ld;
  [[nodiscard]] f32_rows advance(std::size_t rows) const noexcept { return {w + rows * ld, ld}; }
  /// 16 elements of row r starting at column j.
  void load(packet16& out, std::size_t r, std::size_t j) const noexcept { load16(out, w + r * ld + j); }
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
  void load(packet16& out, std::size_t r, std::size_t j) const noexcept { base.load(out, slot(r), j); }
  [[nodiscard]] float at(std::size_t r, std::size_t j) const noexcept { return base.at(slot(r), j); }
  [[gnu::always_inline]] void prefetch_line(std::size_t r, std::size_t j) const noexcept {
    base.prefetch_line(slot(r), j);
  }
};

/// The rows 0..direct-1 of a row stream as a plain stream `head` (row p of the stream is
/// row p of `head` there): all of a plain stream, and a `gathered_rows`' contiguous prefix
/// as its base stream. Kernels run those rows through `head` (no per-row map lookup, so a
/// tree node's long cached prefix runs the chain's code) and the rest through the stream
/// itself, in one p order, so every sum they build is the same either way.
template <class W>
struct row_split {
  W head;
  std::size_t direct;
};
template <class W>
[[nodiscard]] inline row_split<W> split_rows(const W& v, std::size_t count) noexcept {
  return {v, count};
}
template <class B>
[[nodiscard]] inline row_split<B> split_rows(const gathered_rows<B>& v, std::size_t count) noexcept {
  return {v.base.advance(v.first), v.first < v.prefix ? std::min(count, v.prefix - v.first) : 0};
}

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
  packet16 acc[R][T];
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) acc[r][t] = packet16{};
  const std::size_t n16 = n - n % lanes;
  // Which operand stays in registers: all R decoded weight vectors (token-outer order)
  // when they fit next to the accumulators in the 32 AVX-512 registers, else the T input
  // vectors (row-outer order, one weight register at a time). Pinning R weights next to
  // R x T accumulators would spill an accumulator to the stack, putting a store-to-load
  // round trip into every iteration's dependency chain. Either order computes every
  // accumulator identically. (Counted in packets: 32 with AVX-512, 8 with AVX2.)
  if constexpr (R * T + R + 1 <= packet_registers) {
    for (std::size_t j = 0; j < n16; j += lanes) {
      packet16 wv[R];
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
        packet16 xv;
        load16(xv, x + t * ldx + j);
        pin_register(xv);
        for (int r = 0; r < R; ++r) fmadd_lanes(acc[r][t], wv[r], xv);
      }
    }
  } else {
    static_assert(R * T + T + 1 <= packet_registers,
                  "dot_tile: R x T accumulators and T inputs must fit the registers");
    for (std::size_t j = 0; j < n16; j += lanes) {
      packet16 xv[T];
      for (int t = 0; t < T; ++t) {
        load16(xv[t], x + t * ldx + j);
        pin_register(xv[t]);
      }
      const std::size_t pc = pf.column();
      for (int r = 0; r < R; ++r) {
        packet16 wv;
        w.load(wv, static_cast<std::size_t>(r), j);
        pin_register(wv);
        if (pc != no_column) pf.at(static_cast<std::size_t>(r), pc);
        for (int t = 0; t < T; ++t) fmadd_lanes(acc[r][t], wv, xv[t]);
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
    // (if constexpr: at -O0 GCC warns of the memcpy below for R < 4, loop or no loop)
    if constexpr (R4 > 0) {
#pragma GCC unroll 16
      for (int r = 0; r < R4; r += 4) {
        const v4 h = hsum16x4(acc[r][t], acc[r + 1][t], acc[r + 2][t], acc[r + 3][t]);
        // The four sums plus their tails in one vector add and store (lane by lane the
        // scalar adds' results; the build vectorises no straight-line code by itself).
        v4 tail;
        __builtin_memcpy(&tail, tails + r, sizeof tail);
        store4(yt + r, h + tail);
      }
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

/// The operands of one `matmul_rows` call.
template <class W>
struct row_product {
  const W& w;
  std::size_t rows, n;
  const float* x;
  std::size_t k, ldx;
  float* y;
  std::size_t ldy;
};

/// Rows [i, rows) of a row-stream product in tiles of Policy::rows (advancing i past the
/// whole tiles), the k vectors cut into ceil(k / Policy::tokens) near-equal token tiles;
/// each row tile prefetches the next one.
template <class Policy, class W>
inline void row_tiles(std::size_t& i, const row_product<W>& m) noexcept {
  constexpr int R = Policy::rows, T = Policy::tokens;
  const std::size_t tiles = token_tile_count(m.k, T);
  for (; i + R <= m.rows; i += R) {
    const W wi = m.w.advance(i);
    if (i + 2 * R <= m.rows) {
      const W next = m.w.advance(i + R);
      token_tiles<R, T>(wi, &next, m.n, m.x, m.k, m.ldx, m.y + i, m.ldy, tiles);
    } else {
      token_tiles<R, T>(wi, static_cast<const W*>(nullptr), m.n, m.x, m.k, m.ldx, m.y + i, m.ldy, tiles);
    }
  }
}

/// Every tile of `family`, in order, over all rows.
template <class... Policies, class W>
inline void run_row_tiles(tile_family<Policies...>, const row_product<W>& m) noexcept {
  std::size_t i = 0;
  (row_tiles<Policies>(i, m), ...);
}

/// Y[t][i] = dot(W[i], X[t]) for i < rows, t < k over a row stream `w` (fp32 or a 16-bit
/// KV cache; row-major, stride from the stream): attention scores, where the "weight rows"
/// are one KV head's keys and the k vectors its query heads (k = n_heads / n_kv_heads).
/// Tiles as `row_tile_table` (tiles.hpp) chooses them. Every (row, vector) result is
/// exactly `dot(W[i], X[t])`, whatever the tiles. (The weight products use panel-major
/// weights instead, see matmul.hpp.)
template <class W>
inline void matmul_rows(const W& w, std::size_t rows, std::size_t n, const float* x, std::size_t k,
                        std::size_t ldx, float* y, std::size_t ldy) noexcept {
  if (k == 0 || rows == 0) return;
  const std::size_t tiles = token_tile_count(k, 3);
  const std::size_t per_tile = (k + tiles - 1) / tiles;  // the table's key
  const row_product<W> m{w, rows, n, x, k, ldx, y, ldy};
  choose_tiles(row_tile_table{}, per_tile, 0, [&](auto family) { run_row_tiles(family, m); });
}
/// matmul_rows over a `gathered_rows` stream: its contiguous prefix as the base stream
/// (the chain's code, no per-row map lookup), then its mapped rows. Each result depends on
/// its row's values only, so the split changes no bit.
template <class B>
inline void matmul_rows(const gathered_rows<B>& w, std::size_t rows, std::size_t n, const float* x, std::size_t k,
                        std::size_t ldx, float* y, std::size_t ldy) noexcept {
  const row_split<B> split = split_rows(w, rows);
  const std::size_t direct = split.direct;
  matmul_rows(split.head, direct, n, x, k, ldx, y, ldy);
  if (rows > direct) {
    const row_product<gathered_rows<B>> m{w.advance(direct), rows - direct, n, x, k, ldx, y + direct, ldy};
    const std::size_t tiles = token_tile_count(k, 3);
    choose_tiles(row_tile_table{}, (k + tiles - 1) / tiles, 0, [&](auto family) { run_row_tiles(family, m); });
  }
}

}  // namespace specdec::cpu::detail
