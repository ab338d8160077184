#pragma once
/// \file backend/cpu/detail/tiles.hpp
/// The tile shapes of the backend's products as named policy types, and which blocks take
/// which, in one table per product (in the manner of CUTLASS's MmaPolicy: a kernel is
/// written once over a policy's constants, and the policy names the shape).
///
/// A tile keeps (weight rows) x (input rows) accumulators in registers while it streams
/// its weights once; a family lists a main tile and the smaller tiles that cover the rows
/// it leaves; a table picks a family by block size (and, for the weight products, by how
/// many panels fit half the L1). Shapes decide only which loads are shared and what is
/// prefetched: every output has the same summation order in every tile, so nothing here
/// changes a result (tests/test_kernels.cpp runs every tile path against the plain chain).
///
/// ```cpp
/// namespace d = specdec::cpu::detail;
/// static_assert(d::panel_policy<2, 8, true>::panels == 2);
/// d::choose_tiles(d::panel_tile_table{}, /*tokens*/ 5, /*panels in half the L1*/ 2,
///                 [](auto family) { /* d::block_tiles: 2 x 8, then 1 x 8 */ });
/// ```
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <string>
#include <string_view>
#include <type_traits>

#include "specdec/backend/cpu/detail/arch/vector.hpp"
#include "specdec/error.hpp"

namespace specdec::cpu {

/// Which tile shapes the weight products of blocks and batches (fp32, bf16, fp16, q8_0;
/// w8a8 has one table) run in. Every configuration computes the same bits (each output is
/// one in-order multiply-add chain whatever the tile); they differ only in speed, which
/// depends on the microarchitecture (FMA width and count, load ports, L1 size, registers:
/// an AVX2 build has 16 of them, not 32). Named by the main block tile, panels x tokens:
///
/// | name   | blocks of 2-6 tokens | 7-8    | 9-12                 | 13-16                |
/// | ---    | ---                  | ---    | ---                  | ---                  |
/// | `4x6`  | 4 x 6, then 2 x 8    | 2 x 8  | 2 x 8, 2 token tiles | 2 x 8, 2 token tiles |
/// | `2x8`  | as `4x6` up to 4, then 2 x 8 | 2 x 8 | 2 x 12          | 2 x 12, 2 token tiles |
/// | `2x12` | 4 x 6, then 2 x 8    | 2 x 8  | 2 x 12               | 2 x 12, 2 token tiles |
/// | `1x6`  | 1 x 6                | 1 x 6, 2 token tiles | 1 x 6, 2 token tiles | 1 x 6, 3 token tiles |
/// | `2x8l2` | 4 x 6 up to 4 (2-3 padded to 4), then 2 x 8 | 2 x 8 | 2 x 8, 2 token tiles | 2 x 8, 2 token tiles |
/// | `2x8l2`, AVX2 | 1 x 6 (2-3 padded to 4) | 1 x 6, 2 token tiles | 1 x 6, 2 token tiles | 1 x 6, 3 token tiles |
///
/// (A single token takes 8 panels x 1, 6 x 1 in an AVX2 build, then 1 x 1; where
/// one panel of the matrix fills half the L1, blocks of 2-8 take 1 x 8 in `4x6` and
/// `2x12`, blocks of 2-4 in `2x8`. `2x8`'s blocks of 5 and more prefetch a fixed 16 KB
/// ahead of their reads, the others' the next tile's panels. `2x8l2` prefetches into the
/// L2 instead, 16 KB ahead, in every block size including a single token, and leaves
/// the last step into the L1 to the hardware: on a core whose L1 misses allow few
/// software prefetches in flight (AMD Zen 4), a stream prefetched into the L1 stalls the
/// FMAs it should hide under. Within AVX2's 16 registers only `1x6` and `2x8l2` (its AVX2
/// row) keep a whole tile in registers; the others spill, which can still pay where
/// decoding the weights dominates.)
/// `automatic`: the SPECDEC_TILES environment variable if set, else the fastest on this
/// host, timed once per process, weight format and model shape at the first load (see
/// `transformer_options::tiles`).
///
/// ```cpp
/// specdec::cpu::tile_config c = specdec::cpu::parse_tile_config("2x8");
/// // specdec::cpu::transformer m("models/kjv-big.bin", {.tiles = c});
/// ```
enum class tile_config : std::uint8_t { automatic, t4x6, t2x8, t2x12, t1x6, t2x8_l2 };

/// Every configuration but `automatic`, in the order `automatic` times them.
inline constexpr tile_config tile_configs[] = {tile_config::t4x6, tile_config::t2x8, tile_config::t2x12,
                                               tile_config::t1x6, tile_config::t2x8_l2};

/// "auto", "4x6", "2x8", "2x12", "1x6" or "2x8l2".
[[nodiscard]] inline std::string_view to_string(tile_config c) noexcept {
  switch (c) {
    case tile_config::automatic: return "auto";
    case tile_config::t4x6: return "4x6";
    case tile_config::t2x8: return "2x8";
    case tile_config::t2x12: return "2x12";
    case tile_config::t1x6: return "1x6";
    case tile_config::t2x8_l2: return "2x8l2";
  }
  return "?";
}

/// Parses a name as printed by `to_string`; throws `invalid_argument` naming `what` (the
/// option or variable it came from), the value and the accepted names.
[[nodiscard]] inline tile_config parse_tile_config(std::string_view s, std::string_view what = "tile configuration") {
  if (s == "auto") return tile_config::automatic;
  for (tile_config c : tile_configs)
    if (s == to_string(c)) return c;
  throw invalid_argument(std::string(what) + " '" + std::string(s) +
                         "' is unknown; expected auto, 4x6, 2x8, 2x12, 1x6 or 2x8l2");
}

}  // namespace specdec::cpu

namespace specdec::cpu::detail {

/// Half of a 48 KB L1 data cache, the size the tile shapes are chosen for; a smaller L1
/// changes only their cost, never a result.
inline constexpr std::size_t half_l1_bytes = 24 * 1024;

/// The cache a tile's software prefetches fill: the L1 (`prefetcht0`) or the L2
/// (`prefetcht1`, the L1 then filled by the hardware prefetcher or the load itself).
enum class prefetch_level : std::uint8_t { l1, l2 };

/// The locality argument of `__builtin_prefetch` that fills level L, as a variable: the
/// builtin needs a constant, and at -O0 GCC 12 does not always fold a constexpr call
/// there (tests/test_kernels.cpp did not compile unoptimised).
template <prefetch_level L>
inline constexpr int locality_of = L == prefetch_level::l1 ? 3 : 2;

/// A tile of a weight product over panel-major weights (matmul.hpp, int8_products.hpp):
/// `panels` panels of 16 weight rows x `tokens` input rows. With `prefetch`, the tile
/// prefetches weights into L1 while it computes: with `lead_bytes` 0, the first token
/// tile of each row tile prefetches the next row tile's panels at the column it reads
/// (a whole tile ahead); with `lead_bytes` > 0, every token tile prefetches its own
/// panels `lead_bytes` ahead of what it reads (lead_bytes / (panels x column bytes)
/// columns, at most the whole panel), and the first token tile continues into the next
/// row tile's first columns, so that the prefetched lines are a fixed distance ahead
/// whatever the tile's shape.
/// `Level` is the cache the prefetches fill (`prefetch_level`).
template <int Panels, int Tokens, bool Prefetch = false, std::size_t LeadBytes = 0,
          prefetch_level Level = prefetch_level::l1>
struct panel_policy {
  static constexpr int panels = Panels;
  static constexpr int tokens = Tokens;
  static constexpr bool prefetch = Prefetch;
  static constexpr std::size_t lead_bytes = LeadBytes;
  static constexpr prefetch_level level = Level;
};

/// A tile of a row-major dot-product (dot.hpp, `matmul_rows`): `rows` rows x `tokens`
/// vectors. Every row tile that has a successor prefetches it (the rows are a KV head's
/// keys, too short for the hardware prefetchers to ramp up on).
template <int Rows, int Tokens>
struct row_policy {
  static constexpr int rows = Rows;
  static constexpr int tokens = Tokens;
};

/// Tiles applied in order: each covers as many whole tiles of the remaining rows as fit,
/// the next takes the rest (the last is one panel or one row wide, so nothing remains).
/// A block of k tokens is cut into ceil(k / tokens) near-equal token tiles per tile.
template <class... Policies>
struct tile_family {};

/// A table row: `Family` for blocks of at most `MaxTokens` tokens (per token tile, where
/// the table says so) when at least `MinL1Panels` panels fit half the L1.
template <std::size_t MaxTokens, std::size_t MinL1Panels, class Family>
struct tile_choice {
  static constexpr std::size_t max_tokens = MaxTokens;
  static constexpr std::size_t min_l1_panels = MinL1Panels;
  using family = Family;
};
inline constexpr std::size_t any_tokens = std::numeric_limits<std::size_t>::max();

/// Rows tried in order; the last must admit every block.
template <class... Choices>
struct tile_table {};

/// Calls f(Family{}) with the family of the first row of the table that admits `tokens`
/// and `l1_panels`.
template <class... Choices, class F>
inline void choose_tiles(tile_table<Choices...>, std::size_t tokens, std::size_t l1_panels, F&& f) {
  constexpr std::size_t n = sizeof...(Choices);
  constexpr std::size_t max_tokens[] = {Choices::max_tokens...};
  constexpr std::size_t min_l1[] = {Choices::min_l1_panels...};
  static_assert(max_tokens[n - 1] == any_tokens && min_l1[n - 1] <= 1, "choose_tiles: the last row must admit every block");
  (void)((tokens <= Choices::max_tokens && l1_panels >= Choices::min_l1_panels && (f(typename Choices::family{}), true)) ||
         ...);
}

/// First token of token tile `idx` when k tokens are cut into `tiles` near-equal tiles
/// (sizes differ by at most one, the larger ones first).
inline std::size_t token_tile_begin(std::size_t k, std::size_t tiles, std::size_t idx) noexcept {
  return idx * (k / tiles) + std::min(idx, k % tiles);
}

/// Token tiles of at most `tokens` for a block of k: ceil(k / tokens).
inline constexpr std::size_t token_tile_count(std::size_t k, int tokens) noexcept {
  return (k + static_cast<std::size_t>(tokens) - 1) / static_cast<std::size_t>(tokens);
}

/// The tiles of a panel policy over panels [p, p_end) of a product whose output row 0 is
/// panel `first`'s first row and which has `rows` output rows and k tokens: calls
/// tile(p, r0, tile_rows, ti, t0, tokens) for every row tile (p advancing past the whole
/// tiles; output rows r0 .. r0 + tile_rows) and each of its ceil(k / Policy::tokens)
/// near-equal token tiles ti (tokens t0 .. t0 + tokens).
template <class Policy, class Tile>
inline void for_each_panel_tile(std::size_t& p, std::size_t first, std::size_t p_end, std::size_t rows, std::size_t k,
                                Tile&& tile) {
  const std::size_t tiles = token_tile_count(k, Policy::tokens);
  for (; p + Policy::panels <= p_end; p += Policy::panels) {
    const std::size_t r0 = (p - first) * lanes;
    const std::size_t tile_rows = std::min<std::size_t>(rows - r0, Policy::panels * lanes);
    for (std::size_t ti = 0; ti < tiles; ++ti) {
      const std::size_t t0 = token_tile_begin(k, tiles, ti);
      tile(p, r0, tile_rows, ti, t0, static_cast<int>(token_tile_begin(k, tiles, ti + 1) - t0));
    }
  }
}

// ---- Weight products (matmul_panels: fp32, bf16, fp16, q8_0) ----------------------------

/// One token: 8 panels, then single panels, without software prefetch: eight long
/// sequential streams, which the hardware prefetchers follow (prefetching the next tile
/// made it slower, see bench/bench_forward.cpp, k:1).
using wide_single_token_tiles = tile_family<panel_policy<8, 1>, panel_policy<1, 1>>;
/// One token with AVX2's 16 ymm registers: 6 panels (12 accumulators, the broadcast and
/// a decoded weight's temporaries; 8 panels would spill an accumulator every column).
using avx2_single_token_tiles = tile_family<panel_policy<6, 1>, panel_policy<1, 1>>;
/// The single-token family of this build's register file (arch/vector.hpp).
using single_token_tiles =
    std::conditional_t<(packet_registers >= 16), wide_single_token_tiles, avx2_single_token_tiles>;
/// Up to 6 tokens where 4 panels fit half the L1 (the tile being read plus the one being
/// prefetched within the L1): 4 panels x 6, then 2 x 8 and 1 x 8 for the rest.
using short_block_tiles = tile_family<panel_policy<4, 6, true>, panel_policy<2, 8, true>, panel_policy<1, 8, true>>;
/// 2 panels x 8 tokens, then 1 x 8. Blocks of more than 8 take several token tiles, the
/// second re-reading the tile's panels from L1/L2.
using block_tiles = tile_family<panel_policy<2, 8, true>, panel_policy<1, 8, true>>;
/// 1 panel x 8 tokens: rows so long that one panel fills half the L1.
using narrow_block_tiles = tile_family<panel_policy<1, 8, true>>;
/// How far ahead of their reads the `2x8` configuration's tiles prefetch (lead_bytes of
/// `panel_policy`): far enough that a line requested from memory arrives before it is
/// read (several hundred nanoseconds of a compute-bound tile's stream), near enough
/// that it is still in a 48 KB L1 then, whatever the tile's panels and the rows' length.
inline constexpr std::size_t prefetch_lead_bytes = 16 * 1024;
/// 2 panels x 8 tokens, then 1 x 8, prefetching `prefetch_lead_bytes` ahead: 16
/// independent accumulator chains per tile, and a prefetch distance that does not
/// depend on how many panels fit the L1.
using lead_block_tiles = tile_family<panel_policy<2, 8, true, prefetch_lead_bytes>,
                                     panel_policy<1, 8, true, prefetch_lead_bytes>>;
/// 2 panels x 12 tokens, then 1 x 12, prefetching `prefetch_lead_bytes` ahead: blocks of
/// 9-12 in one token tile (each panel read once), 13-24 in two.
using lead_wide_block_tiles = tile_family<panel_policy<2, 12, true, prefetch_lead_bytes>,
                                          panel_policy<1, 12, true, prefetch_lead_bytes>>;

/// The weight products' choice, by tokens in the block and panels that fit half the L1
/// (`half_l1_bytes / (columns x column bytes)`, at least 1; kjv-big's 384 columns: 1 in
/// fp32, 2 in bf16). Blocks of 2+ tokens prefetch the next tile's panels into L1 while
/// they compute: one fp32 panel ahead (24 KB at 384 columns) stays within a 48 KB L1,
/// where two panels x 6 tokens with two panels ahead would not, and the hardware
/// prefetchers alone do not keep up with several tokens' compute per panel. What each
/// choice costs per block size is what bench/bench_forward.cpp's k:1..16 rows show.
using panel_tile_table = tile_table<tile_choice<1, 1, single_token_tiles>,  //
                                    tile_choice<6, 4, short_block_tiles>,   //
                                    tile_choice<8, 2, block_tiles>,         //
                                    tile_choice<8, 1, narrow_block_tiles>,  //
                                    tile_choice<any_tokens, 1, block_tiles>>;

/// 2 panels x 12 tokens, then 1 x 12: blocks of 9-12 in one token tile, each panel read
/// once (2 x 12 + 2 + 1 registers).
using wide_block_tiles = tile_family<panel_policy<2, 12, true>, panel_policy<1, 12, true>>;
/// 1 panel x 6 tokens: 12 + 2 + 1 ymm registers as two 256-bit halves, within AVX2's 16.
using small_block_tiles = tile_family<panel_policy<1, 6, true>>;

/// `tile_config::t2x8`: blocks of up to 4 tokens as `panel_tile_table` (bound by the
/// weight stream, which one long prefetch stream per tile keeps fastest); from 5 tokens
/// on 2 x 8 tiles whatever the L1 holds, 16 independent accumulator chains even where
/// one panel fills half the L1 (a 1 x k tile has only k, fewer than two FMA pipes of
/// latency 4 need for k < 8), and 2 x 12 for 9-12 tokens, all prefetching a fixed
/// distance ahead (`prefetch_lead_bytes`): a whole 2-panel tile ahead, the prefetched
/// lines and the ones being read overflow a 48 KB L1 where a panel is 24 KB (kjv-big
/// fp32).
using block8_tile_table = tile_table<tile_choice<1, 1, single_token_tiles>,  //
                                     tile_choice<4, 4, short_block_tiles>,   //
                                     tile_choice<4, 2, block_tiles>,         //
                                     tile_choice<4, 1, narrow_block_tiles>,  //
                                     tile_choice<8, 1, lead_block_tiles>,    //
                                     tile_choice<any_tokens, 1, lead_wide_block_tiles>>;
/// `tile_config::t2x8_l2`'s tiles: every one prefetches into the L2, `prefetch_lead_bytes`
/// ahead of its reads (a single token too: the hardware prefetchers alone then leave
/// part of the stream's latency exposed). One token in 8 panels (6 with AVX2's
/// registers), 2-4 tokens in 4 x 6 tiles (2 and 3 padded to 4: `pad_blocks_to`), more in
/// 2 x 8 tiles over token tiles of at most 8. With AVX2's 16 registers every block takes
/// 1 x 6 tiles instead (`avx2_l2_tile_table`): 4 x 6 and 2 x 8 would spill accumulators
/// every column, and a 1 x 6 tile that prefetches its own panel into the L2 keeps a 32 KB
/// L1 for the panel it reads, where `1x6`'s whole next panel ahead (24 KB for kjv-big
/// fp32) does not fit beside it.
template <int Panels, int Tokens>
using l2_policy = panel_policy<Panels, Tokens, true, prefetch_lead_bytes, prefetch_level::l2>;
using l2_single_token_tiles = tile_family<l2_policy<(packet_registers >= 16 ? 8 : 6), 1>, l2_policy<1, 1>>;
using l2_short_block_tiles = tile_family<l2_policy<4, 6>, l2_policy<1, 6>>;
using l2_block_tiles = tile_family<l2_policy<2, 8>, l2_policy<1, 8>>;
using l2_small_block_tiles = tile_family<l2_policy<1, 6>>;
/// `tile_config::t2x8_l2` with 32 vector registers.
using wide_l2_tile_table = tile_table<tile_choice<1, 1, l2_single_token_tiles>,  //
                                      tile_choice<4, 1, l2_short_block_tiles>,   //
                                      tile_choice<any_tokens, 1, l2_block_tiles>>;
/// `tile_config::t2x8_l2` with AVX2's 16: 1 x 6 tiles for every block (2-3 tokens padded to 4).
using avx2_l2_tile_table = tile_table<tile_choice<1, 1, l2_single_token_tiles>,  //
                                      tile_choice<any_tokens, 1, l2_small_block_tiles>>;
/// `tile_config::t2x8_l2`: the table of this build's register file (arch/vector.hpp).
using l2_tile_table = std::conditional_t<(packet_registers >= 16), wide_l2_tile_table, avx2_l2_tile_table>;

/// Blocks of 2 .. P - 1 tokens that a table's products run as blocks of P =
/// `pad_blocks_to<Table>` (0: none): the added rows repeat the block's first and their
/// outputs are dropped, so every kept output is the same chain as without them. Where a
/// tile streams weights from memory faster when it does more FMAs per weight it reads, a
/// padded block costs less than the block itself: on the AMD EPYC family 25 model 17
/// host (Zen 4; `2x8l2`, kjv-big fp32, 1 thread, four runs) forwards of 2 and 3 tokens took
/// 1.08-1.16x and 1.09-1.24x one token's time (4 tokens: 0.99-1.09x), padded 1.03-1.06x
/// and 1.05-1.07x.
template <class Table>
inline constexpr std::size_t pad_blocks_to = 0;
template <>
inline constexpr std::size_t pad_blocks_to<l2_tile_table> = 4;

/// `tile_config::t2x12`: panel_tile_table with 2 x 12 tiles from 9 tokens on.
using wide_tile_table = tile_table<tile_choice<1, 1, single_token_tiles>,  //
                                   tile_choice<6, 4, short_block_tiles>,   //
                                   tile_choice<8, 2, block_tiles>,         //
                                   tile_choice<8, 1, narrow_block_tiles>,  //
                                   tile_choice<any_tokens, 1, wide_block_tiles>>;
/// `tile_config::t1x6`: 1 x 6 tiles for every block.
using small_tile_table = tile_table<tile_choice<1, 1, single_token_tiles>, tile_choice<any_tokens, 1, small_block_tiles>>;

/// Calls f(Table{}) with the weight products' table of configuration `c` (`automatic`,
/// unresolved, takes the default, `panel_tile_table`).
template <class F>
inline void with_panel_table(tile_config c, F&& f) {
  switch (c) {
    case tile_config::t2x8: return f(block8_tile_table{});
    case tile_config::t2x12: return f(wide_tile_table{});
    case tile_config::t1x6: return f(small_tile_table{});
    case tile_config::t2x8_l2: return f(l2_tile_table{});
    case tile_config::automatic:
    case tile_config::t4x6: break;
  }
  f(panel_tile_table{});
}

// ---- Attention scores (matmul_rows: one KV head's keys x its query heads) -------------

/// The query heads (k of them) are cut into ceil(k / 3) near-equal token tiles, and the
/// table is keyed on the tokens per token tile: rows in tiles of 12, 12 or 8 for 1, 2 or
/// 3 tokens, then 4 and 1 for the rest (at most 3 x 12 + 12 + 1 + 1 registers).
using wide_row_tile_table =
    tile_table<tile_choice<1, 0, tile_family<row_policy<12, 1>, row_policy<4, 3>, row_policy<1, 3>>>,
               tile_choice<2, 0, tile_family<row_policy<12, 2>, row_policy<4, 3>, row_policy<1, 3>>>,
               tile_choice<any_tokens, 0, tile_family<row_policy<8, 3>, row_policy<4, 3>, row_policy<1, 3>>>>;
/// The same within AVX2's 8 packets (16 ymm): 4 rows x 1 token (4 accumulators, the
/// input, a row), 2 x 2 and 1 x 3 (accumulators, the rows and an input).
using avx2_row_tile_table =
    tile_table<tile_choice<1, 0, tile_family<row_policy<4, 1>, row_policy<1, 1>>>,
               tile_choice<2, 0, tile_family<row_policy<2, 2>, row_policy<1, 2>>>,
               tile_choice<any_tokens, 0, tile_family<row_policy<1, 3>>>>;
/// The attention scores' table of this build's register file (arch/vector.hpp).
using row_tile_table = std::conditional_t<(packet_registers >= 16), wide_row_tile_table, avx2_row_tile_table>;

// ---- w8a8 products (matmul_i8, AVX512-VNNI tiles) --------------------------------------

/// One token: 8 panels, then 4, 2 and 1.
using i8_single_token_tiles = tile_family<panel_policy<8, 1>, panel_policy<4, 1>, panel_policy<2, 1>, panel_policy<1, 1>>;
/// More tokens: 2 panels x 6 tokens, then 1 x 6 (int and float accumulators: 2 P T + P + 2
/// registers).
using i8_block_tiles = tile_family<panel_policy<2, 6>, panel_policy<1, 6>>;

using i8_tile_table = tile_table<tile_choice<1, 0, i8_single_token_tiles>, tile_choice<any_tokens, 0, i8_block_tiles>>;

/// Without VNNI, where the build has AVX2 (`SPECDEC_DETAIL_I8_SIGN_DOTS`): 1 panel x 4
/// tokens (8 float accumulators, a group's integer sums, its scales and the products'
/// temporaries within 16 ymm registers).
using i8_sign_tile_policy = panel_policy<1, 4>;

}  // namespace specdec::cpu::detail
