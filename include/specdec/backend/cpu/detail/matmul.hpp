#pragma once
/// \file backend/cpu/detail/matmul.hpp
/// Weight products over panel-major weights (`matmul_panels`, every weight format but
/// w8a8, whose integer products are in int8_products.hpp).
#include <algorithm>
#include <concepts>
#include <cstddef>
#include <cstring>
#include <vector>

#include "specdec/backend/cpu/detail/arch/vector.hpp"
#include "specdec/backend/cpu/detail/tiles.hpp"

namespace specdec::cpu::detail {

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

/// fp32 panels (see above): column j of panel p at w + (p n + j) 16.
struct f32_panels {
  static constexpr std::size_t column_bytes = 64;  ///< bytes of one column of a panel
  const float* w;
  std::size_t n;  ///< columns
  void load(packet16& out, std::size_t p, std::size_t j) const noexcept { load16(out, w + (p * n + j) * lanes); }
  /// Prefetches (into the cache `L`) the line holding column j of panel p; one call per
  /// 64 bytes.
  template <prefetch_level L = prefetch_level::l1>
  [[gnu::always_inline]] void prefetch_line(std::size_t p, std::size_t j) const noexcept {
    __builtin_prefetch(w + (p * n + j) * lanes, 0, locality_of<L>);
  }
};

/// Y[t][16 p + l] = acc[p][t][l] for the first `rows` (at most 16 P) rows: a panel tile's
/// outputs, the last panel possibly partial (`V`: v16 or packet16).
template <int P, int T, class V>
inline void store_tile(const V (&acc)[P][T], float* y, std::size_t ldy, std::size_t rows) noexcept {
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

/// The prefetches of column j of a tile over panels p0 .. p0 + P - 1 (n columns) whose
/// next tile starts at panel `pf` (0: no next tile to prefetch). `lead` 0: column j of
/// the next tile's panels. Otherwise column j + lead of the tile's own panels, and past
/// their end the next tile's columns, the same distance ahead (`lead` <= n). Into the
/// cache `L`.
template <int P, prefetch_level L, class W>
[[gnu::always_inline]] inline void prefetch_column(const W& w, std::size_t p0, std::size_t pf, std::size_t n,
                                                   std::size_t lead, std::size_t j) noexcept {
  const std::size_t a = j + lead;
  if (lead != 0 && a < n) {
#pragma GCC unroll 16
    for (int p = 0; p < P; ++p) w.template prefetch_line<L>(p0 + static_cast<std::size_t>(p), a);
  } else if (pf != 0) {
#pragma GCC unroll 16
    for (int p = 0; p < P; ++p) w.template prefetch_line<L>(pf + static_cast<std::size_t>(p), a - n * (lead != 0));
  }
}

/// The lead in columns of a tile of P panels that prefetches `lead_bytes` ahead (see
/// `panel_policy`): at least one column, at most the whole panel; 0 for lead_bytes 0.
template <int P, class W>
[[nodiscard]] constexpr std::size_t prefetch_lead_columns(std::size_t lead_bytes, std::size_t n) noexcept {
  if (lead_bytes == 0) return 0;
  const std::size_t columns = lead_bytes / (static_cast<std::size_t>(P) * W::column_bytes);
  return std::clamp<std::size_t>(columns, 1, std::max<std::size_t>(n, 1));
}

/// A panel stream whose columns come in groups of `W::group`, each with one scale per row
/// (q8_0): `load` gives the unscaled values and `load_scales(v, p, g)` the 16 rows' scales
/// of group g. Its products follow the grouped rule of `grouped_panel_tile`, not the plain
/// chain over decoded weights.
template <class W>
concept grouped_panels = requires(const W& w, packet16& v) {
  { W::group } -> std::convertible_to<std::size_t>;
  w.load_scales(v, std::size_t{}, std::size_t{});
  w.columns(std::size_t{}).load(v, std::size_t{});  // panel p's column j, by a cursor
};

/// panel_tile's grouped form: output (t, r) is, over the groups g in order,
///   acc = fmadd(part_g, scale[r][g], acc),  acc from 0,
/// where part_g is the in-order multiply-add chain, from 0, of the group's unscaled
/// weights times the inputs (the columns 32 g .. min(n, 32 g + 32) - 1 for q8_0). One
/// conversion per 16 weights and one scale FMA per group and output, against q8_0's
/// former rule (every weight scaled, one rounded multiply per 16 weights on the FMA
/// pipes); llama.cpp's q8_0 products also apply the block scale to a partial sum. Every
/// step depends on the output's row, token and column order only, so every tile shape,
/// block size and thread split gives the same bits. The partial sums live in registers
/// (P T + P + 1, as panel_tile's accumulators), the accumulators in the L1: each is read
/// and written once per group, as the addend of its scale FMA.
template <int P, int T, bool Prefetch, std::size_t LeadBytes, prefetch_level L, class W>
inline void grouped_panel_tile(const W& w, std::size_t p0, std::size_t n, const float* x, std::size_t ldx, float* y,
                               std::size_t ldy, std::size_t rows, std::size_t pf) noexcept {
  static_assert(P * T + P + 1 <= 32, "grouped_panel_tile: P x T partial sums, P weights and a broadcast must fit 32 registers");
  alignas(64) float acc_mem[P * T * lanes] = {};
  // Opaque to the optimiser, so that it keeps the accumulators in memory instead of
  // spilling the partial sums to make room for them.
  float* acc_p = acc_mem;
  asm("" : "+r"(acc_p));
  using cursor = decltype(w.columns(std::size_t{}));
  cursor cols[P];
#pragma GCC unroll 16
  for (int p = 0; p < P; ++p) cols[p] = w.columns(p0 + static_cast<std::size_t>(p));
  // The loops below run whole 4-column steps (one 64-byte line of a q8_0 panel, one
  // prefetch each), then the last columns of a partial group one at a time.
  constexpr std::size_t step = 4;
  static_assert(W::group % step == 0);
  // A multiple of the step, so that every prefetch lands on a line's first column.
  const std::size_t lead = prefetch_lead_columns<P, W>(LeadBytes, n) / step * step;
  for (std::size_t j0 = 0, g = 0; j0 < n; j0 += W::group, ++g) {
    const std::size_t j1 = std::min(n, j0 + W::group);
    packet16 part[P][T];
#pragma GCC unroll 16
    for (int p = 0; p < P; ++p)
#pragma GCC unroll 16
      for (int t = 0; t < T; ++t) part[p][t] = packet16{};
    const auto column = [&](std::size_t j) __attribute__((always_inline)) {
      packet16 wv[P];
#pragma GCC unroll 16
      for (int p = 0; p < P; ++p) {
        cols[p].load(wv[p], j);
        if constexpr (T > 1) pin_register(wv[p]);
      }
#pragma GCC unroll 16
      for (int t = 0; t < T; ++t) {
        const float xs = x[static_cast<std::size_t>(t) * ldx + j];
#pragma GCC unroll 16
        for (int p = 0; p < P; ++p) fmadd_lanes(part[p][t], wv[p], xs);
      }
    };
    std::size_t j = j0;
    for (; j + step <= j1; j += step) {
      if constexpr (Prefetch) prefetch_column<P, L>(w, p0, pf, n, lead, j);
#pragma GCC unroll 4
      for (std::size_t u = 0; u < step; ++u) column(j + u);
    }
    for (; j < j1; ++j) {
      if constexpr (Prefetch) prefetch_column<P, L>(w, p0, pf, n, lead, j);
      column(j);
    }
#pragma GCC unroll 16
    for (int p = 0; p < P; ++p) {
      packet16 sc;
      w.load_scales(sc, p0 + static_cast<std::size_t>(p), g);
#pragma GCC unroll 16
      for (int t = 0; t < T; ++t) {
        float* a = acc_p + (p * T + t) * static_cast<int>(lanes);
        packet16 acc;
        load16(acc, a);
        fmadd_lanes(acc, part[p][t], sc);
        store16(a, acc);
      }
    }
  }
  packet16 acc[P][T];
#pragma GCC unroll 16
  for (int p = 0; p < P; ++p)
#pragma GCC unroll 16
    for (int t = 0; t < T; ++t) load16(acc[p][t], acc_p + (p * T + t) * static_cast<int>(lanes));
  store_tile<P, T>(acc, y, ldy, rows);
}

/// Y[t][16 (p0 + p) + l] for the P panels p0 .. p0 + P - 1 and T tokens: `rows` (at most
/// 16 P) output rows from the tile's first are written (the last panel of a matrix may be
/// partial; its padding rows are zero and not written). With `Prefetch`, the loop also
/// prefetches as it goes (`prefetch_column`): with LeadBytes 0 column j of panels
/// `pf .. pf + P - 1` (the next tile), else LeadBytes ahead of its reads, into the next
/// tile at `pf` (0: none) past its own panels' end; into the cache `L`. Never inlined:
/// inlined into a large caller (a header-only program's main), GCC 12 kept a 2 x 8
/// tile's accumulators on the stack, storing them every column, which halved its speed;
/// a tile is n columns of P x T FMAs, so the call costs nothing.
template <int P, int T, bool Prefetch, std::size_t LeadBytes, prefetch_level L, class W>
[[gnu::noinline]] inline void panel_tile(const W& w, std::size_t p0, std::size_t n, const float* x, std::size_t ldx,
                                         float* y, std::size_t ldy, std::size_t rows, std::size_t pf) noexcept {
  if constexpr (grouped_panels<W>) {
    return grouped_panel_tile<P, T, Prefetch, LeadBytes, L>(w, p0, n, x, ldx, y, ldy, rows, pf);
  } else {
  const std::size_t lead = prefetch_lead_columns<P, W>(LeadBytes, n);
  static_assert(P * T + P + 1 <= 32, "panel_tile: P x T accumulators, P weights and a broadcast must fit 32 registers");
  // The loops over panels and tokens are unrolled explicitly: at -O2 GCC otherwise kept
  // the accumulators in memory.
  packet16 acc[P][T];
#pragma GCC unroll 16
  for (int p = 0; p < P; ++p)
#pragma GCC unroll 16
    for (int t = 0; t < T; ++t) acc[p][t] = packet16{};
  for (std::size_t j = 0; j < n; ++j) {
    packet16 wv[P];
#pragma GCC unroll 16
    for (int p = 0; p < P; ++p) {
      w.load(wv[p], p0 + static_cast<std::size_t>(p), j);
      if constexpr (T > 1) pin_register(wv[p]);
    }
    if constexpr (Prefetch) prefetch_column<P, L>(w, p0, pf, n, lead, j);
#pragma GCC unroll 16
    for (int t = 0; t < T; ++t) {
      const float xs = x[static_cast<std::size_t>(t) * ldx + j];
#pragma GCC unroll 16
      for (int p = 0; p < P; ++p) fmadd_lanes(acc[p][t], wv[p], xs);
    }
  }
  store_tile<P, T>(acc, y, ldy, rows);
  }
}

/// panel_tile<P, tokens> for a runtime tokens <= T.
template <int P, int T, bool Prefetch, std::size_t LeadBytes, prefetch_level L, class W>
inline void panel_tile_upto(int tokens, const W& w, std::size_t p0, std::size_t n, const float* x, std::size_t ldx,
                            float* y, std::size_t ldy, std::size_t rows, std::size_t pf) noexcept {
  if constexpr (T > 1) {
    if (tokens < T)
      return panel_tile_upto<P, T - 1, Prefetch, LeadBytes, L>(tokens, w, p0, n, x, ldx, y, ldy, rows, pf);
  }
  panel_tile<P, T, Prefetch, LeadBytes, L>(w, p0, n, x, ldx, y, ldy, rows, pf);
}

/// The operands of one `matmul_panels` call: panels [first, p_end) of `w` (n columns),
/// `rows` output rows from panel `first`'s first row, k input rows at x (stride ldx),
/// outputs at y (stride ldy); prefetches stay below panel `pf_end`.
template <class W>
struct panel_product {
  const W& w;
  std::size_t first, p_end, rows, n;
  const float* x;
  std::size_t k, ldx;
  float* y;
  std::size_t ldy, pf_end;
};

/// Panels [p, p_end) in tiles of Policy::panels (advancing p past the whole tiles) for all
/// k tokens, cut into ceil(k / Policy::tokens) near-equal token tiles. With
/// Policy::prefetch, the first token tile of a row tile prefetches the next tile's panels
/// when they exist below `pf_end`; with a lead (Policy::lead_bytes), every token tile
/// also prefetches its own panels ahead of its reads.
template <class Policy, class W>
inline void panel_tiles(std::size_t& p, const panel_product<W>& m) noexcept {
  constexpr int P = Policy::panels, T = Policy::tokens;
  constexpr std::size_t lead = Policy::lead_bytes;
  const auto tile = [&](std::size_t pt, std::size_t r0, std::size_t rows, std::size_t ti, std::size_t t0, int tokens) {
    const float* xt = m.x + t0 * m.ldx;
    float* yt = m.y + t0 * m.ldy + r0;
    if constexpr (Policy::prefetch) {
      const bool next = ti == 0 && pt + 2 * P <= m.pf_end;
      if (next || lead != 0)
        return panel_tile_upto<P, T, true, lead, Policy::level>(tokens, m.w, pt, m.n, xt, m.ldx, yt, m.ldy, rows,
                                                                next ? pt + P : 0);
    }
    panel_tile_upto<P, T, false, 0, prefetch_level::l1>(tokens, m.w, pt, m.n, xt, m.ldx, yt, m.ldy, rows, 0);
  };
  for_each_panel_tile<Policy>(p, m.first, m.p_end, m.rows, m.k, tile);
}

/// Every tile of `family`, in order, over all panels of the product.
template <class... Policies, class W>
inline void run_panel_tiles(tile_family<Policies...>, const panel_product<W>& m) noexcept {
  std::size_t p = m.first;
  (panel_tiles<Policies>(p, m), ...);
}

/// Y[t][i] = sum_j W[16 p0 + i][j] X[t][j] for i < rows, t < k over a panel stream `w`
/// (fp32, or a 16-bit or q8_0 format decoded exactly to fp32 in registers), starting at
/// panel p0; output row stride ldy. `pf_panels` (at least the panels the rows span) says
/// how many panels the stream has from p0: when the caller's next call continues after
/// these rows (a thread's next chunk), the last tile prefetches its first panels. Tiles
/// as the table of configuration `tiles` (tiles.hpp) chooses them; shapes never change a
/// result.
template <class W>
inline void matmul_panels(const W& w, std::size_t p0, std::size_t rows, std::size_t n, const float* x,
                          std::size_t k, std::size_t ldx, float* y, std::size_t ldy, std::size_t pf_panels = 0,
                          tile_config tiles = tile_config::t4x6) noexcept {
  if (k == 0 || rows == 0) return;
  const std::size_t p_end = p0 + (rows + lanes - 1) / lanes;
  const std::size_t pf_end = std::max(p_end, p0 + pf_panels);
  const std::size_t l1_panels = std::max<std::size_t>(1, half_l1_bytes / std::max<std::size_t>(1, n * W::column_bytes));
  with_panel_table(tiles, [&](auto table) {
    const auto run = [&](const float* xt, std::size_t kt, std::size_t ldxt, float* yt, std::size_t ldyt) {
      const panel_product<W> m{w, p0, p_end, rows, n, xt, kt, ldxt, yt, ldyt, pf_end};
      choose_tiles(table, kt, l1_panels, [&](auto family) { run_panel_tiles(family, m); });
    };
    constexpr std::size_t pad = pad_blocks_to<decltype(table)>;
    if constexpr (pad > 1) {
      if (k > 1 && k < pad) {
        // Padded (tiles.hpp, `pad_blocks_to`): inputs and outputs in per-thread scratch.
        thread_local std::vector<float> xs, ys;
        xs.resize(pad * n);
        ys.resize(pad * rows);
        for (std::size_t t = 0; t < pad; ++t) std::memcpy(xs.data() + t * n, x + (t < k ? t : 0) * ldx, n * sizeof(float));
        run(xs.data(), pad, n, ys.data(), rows);
        for (std::size_t t = 0; t < k; ++t) std::memcpy(y + t * ldy, ys.data() + t * rows, rows * sizeof(float));
        return;
      }
    }
    run(x, k, ldx, y, ldy);
  });
}

}  // namespace specdec::cpu::detail
