#pragma once
/// \file backend/cpu/detail/weights.hpp
/// Weight formats of the CPU transformer: fp32 (the checkpoint's values), bf16, fp16
/// and q8_0 (int8 with one fp32 scale per group of 32 consecutive weights of a row, like
/// llama.cpp's Q8_0), converted once at load time into panels of 16 rows (see
/// matmul_panels in matmul.hpp). Each format is a "panel stream" that the tile kernels
/// decode to fp32 in registers: the decoded value of a weight is an exact function of its
/// stored bits (bf16/fp16 widen exactly), so the fixed summation order of the fp32
/// kernels, and with it batch invariance, carries over unchanged to bf16 and fp16. q8_0
/// is a grouped stream (`grouped_panels`, matmul.hpp): each group of 32 columns is one
/// in-order chain over float(q) (exact), scaled once per group by one FMA into the
/// output's chain over the groups (`grouped_panel_tile`); a fixed order too, so just as
/// batch-invariant, and one rounding per group where a decoded weight had one per weight.
///
/// The decoding, 16 values at a time, is the vector layer's `widen_bf16`, `widen_fp16` and
/// `widen_i8` (arch/vector.hpp): AVX-512 or AVX2 instructions where the target has them,
/// scalar code elsewhere, the same values in every build.
///
/// w8a8 is the exception: q8_0's weights, but its products also quantize their inputs
/// and run as integer dot products (int8_products.hpp); batch-invariant by the same
/// rules, not the same values as q8_0.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <iterator>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "specdec/backend/cpu/detail/aligned.hpp"
#include "specdec/backend/cpu/detail/int8_products.hpp"
#include "specdec/backend/cpu/detail/linkage.hpp"
#include "specdec/backend/cpu/detail/arch/vector.hpp"
#include "specdec/backend/cpu/detail/float16.hpp"
#include "specdec/backend/cpu/detail/matmul.hpp"
#include "specdec/error.hpp"

namespace specdec::cpu {

/// How the weight matrices of a transformer are held in memory (chosen at load time).
enum class weight_format {
  fp32,  ///< as stored in the checkpoint, 4 bytes a weight
  bf16,  ///< bfloat16 (round to nearest even), 2 bytes a weight
  fp16,  ///< IEEE half precision (round to nearest even), 2 bytes a weight
  q8_0,  ///< int8 with one fp32 scale per 32 weights of a row: 1.125 bytes a weight
  /// q8_0's weights, and every product quantizes its input rows the same way (one fp32
  /// scale per 32 inputs) and multiplies int8 by int8 (AVX512-VNNI where the build has
  /// it): 1.125 bytes a weight, a fraction of q8_0's instructions, less accurate. Meant
  /// for drafts, whose numerics change only their proposals (docs/performance.md).
  w8a8,
};

/// "fp32", "bf16", "fp16", "q8_0" or "w8a8".
[[nodiscard]] inline std::string_view to_string(weight_format f) noexcept {
  switch (f) {
    case weight_format::fp32: return "fp32";
    case weight_format::bf16: return "bf16";
    case weight_format::fp16: return "fp16";
    case weight_format::q8_0: return "q8_0";
    case weight_format::w8a8: return "w8a8";
  }
  return "?";
}

/// Parses a format name as printed by `to_string` ("q8" is accepted for "q8_0");
/// throws `invalid_argument` naming the accepted values.
[[nodiscard]] inline weight_format parse_weight_format(std::string_view s) {
  if (s == "fp32") return weight_format::fp32;
  if (s == "bf16") return weight_format::bf16;
  if (s == "fp16") return weight_format::fp16;
  if (s == "q8_0" || s == "q8") return weight_format::q8_0;
  if (s == "w8a8") return weight_format::w8a8;
  throw invalid_argument("weight format '" + std::string(s) + "' is unknown; expected fp32, bf16, fp16, q8_0 or w8a8");
}

namespace detail {

/// Decoding of bf16 weights: 16 at a time into a vector, or one.
struct bf16_code {
  static void load(packet16& out, const std::uint16_t* p) noexcept { widen_bf16(out, p); }
  static float one(std::uint16_t v) noexcept { return bf16_to_float(v); }
};

/// Decoding of fp16 weights: 16 at a time into a vector, or one.
struct fp16_code {
  static void load(packet16& out, const std::uint16_t* p) noexcept { widen_fp16(out, p); }
  static float one(std::uint16_t v) noexcept { return fp16_to_float(v); }
};

/// A 16-bit row stream (row-major, row stride ld elements), decoded by `Code` (`bf16_code`
/// or `fp16_code`): a 16-bit KV cache's keys and values.
template <class Code>
struct u16_rows {
  const std::uint16_t* w;
  std::size_t ld;
  [[nodiscard]] u16_rows advance(std::size_t rows) const noexcept { return {w + rows * ld, ld}; }
  void load(packet16& out, std::size_t r, std::size_t j) const noexcept { Code::load(out, w + r * ld + j); }
  [[nodiscard]] float at(std::size_t r, std::size_t j) const noexcept { return Code::one(w[r * ld + j]); }
  /// Prefetches (into L1) the line holding element (r, j); one call per 64 bytes.
  [[gnu::always_inline]] void prefetch_line(std::size_t r, std::size_t j) const noexcept {
    if (j % 32 == 0) __builtin_prefetch(w + r * ld + j, 0, 3);
  }
};
using bf16_rows = u16_rows<bf16_code>;
using fp16_rows = u16_rows<fp16_code>;

/// A 16-bit weight panel stream (panel-major like `f32_panels`, see matmul_panels; n
/// columns), decoded by `Code` (`bf16_code` or `fp16_code`).
template <class Code>
struct u16_panels {
  static constexpr std::size_t column_bytes = 32;  ///< bytes of one column of a panel
  const std::uint16_t* w;
  std::size_t n;
  void load(packet16& out, std::size_t p, std::size_t j) const noexcept { Code::load(out, w + (p * n + j) * lanes); }
  /// Prefetches (into the cache `L`) the line holding column j of panel p; one call per
  /// 64 bytes.
  template <prefetch_level L = prefetch_level::l1>
  [[gnu::always_inline]] void prefetch_line(std::size_t p, std::size_t j) const noexcept {
    if (j % 2 == 0) __builtin_prefetch(w + (p * n + j) * lanes, 0, locality_of<L>);
  }
};

/// q8_0 panel stream, grouped (`grouped_panels`, matmul.hpp): int8 weights panel-major
/// (column j of panel p: 16 bytes at q + (p n + j) 16), loaded as float(q), and the fp32
/// scales of the 16 rows side by side per group of 32 columns (s + (p groups + g) 16),
/// applied once per group to the group's partial sum (`grouped_panel_tile`).
struct q8_panels {
  static constexpr std::size_t column_bytes = 18;  ///< 16 weights and 1/32 of 16 scales
  static constexpr std::size_t group = q8_group;
  const std::int8_t* q;
  const float* s;
  std::size_t n, groups;
  void load(packet16& out, std::size_t p, std::size_t j) const noexcept { widen_i8(out, q + (p * n + j) * lanes); }
  /// Panel p's columns: load(out, j) is load(out, p, j).
  struct cursor {
    const std::int8_t* q = nullptr;
    void load(packet16& out, std::size_t j) const noexcept { widen_i8(out, q + j * lanes); }
  };
  [[nodiscard]] cursor columns(std::size_t p) const noexcept { return {q + p * n * lanes}; }
  void load_scales(packet16& out, std::size_t p, std::size_t g) const noexcept {
    load16(out, s + (p * groups + g) * lanes);
  }
  /// Prefetches (into the cache `L`) the lines holding column j of panel p and its
  /// scales; one call per 64 bytes of each.
  template <prefetch_level L = prefetch_level::l1>
  [[gnu::always_inline]] void prefetch_line(std::size_t p, std::size_t j) const noexcept {
    if (j % 4 == 0) __builtin_prefetch(q + (p * n + j) * lanes, 0, locality_of<L>);
    if (j % q8_group == 0) __builtin_prefetch(s + (p * groups + j / q8_group) * lanes, 0, locality_of<L>);
  }
};

/// Where element (r, j) of a [rows][cols] matrix lives in panel-major order: panels of 16
/// rows, column j of panel p at (p cols + j) 16.
[[nodiscard]] inline std::size_t panel_offset(std::size_t r, std::size_t j, std::size_t cols) noexcept {
  return ((r / lanes) * cols + j) * lanes + r % lanes;
}

/// Row-major [rows][cols] values (converted by `conv(r, j)`) in panel-major order; the
/// padding rows of a partial last panel hold T{}.
template <class T, class Conv>
[[nodiscard]] aligned_vector<T> to_panels(std::size_t rows, std::size_t cols, Conv&& conv) {
  aligned_vector<T> out((rows + lanes - 1) / lanes * cols * lanes, T{});
  for (std::size_t r = 0; r < rows; ++r)
    for (std::size_t j = 0; j < cols; ++j) out[panel_offset(r, j, cols)] = conv(r, j);
  return out;
}

/// One weight matrix `[rows][cols]` in a chosen format, converted from the checkpoint's
/// row-major fp32 at construction, every format panel-major (see matmul_panels).
class weight_matrix {
 public:
  weight_matrix() = default;
  weight_matrix(const float* src, std::size_t rows, std::size_t cols, weight_format f);

  [[nodiscard]] weight_format format() const noexcept { return format_; }
  [[nodiscard]] std::size_t rows() const noexcept { return rows_; }
  [[nodiscard]] std::size_t cols() const noexcept { return cols_; }
  /// Bytes a full pass over the matrix reads (weights and scales, padding rows included).
  [[nodiscard]] std::size_t bytes() const noexcept {
    return f32_.size() * 4 + u16_.size() * 2 + q8_.size() + u8_.size() + scales_.size() * 4;
  }
  /// The decoded weight (r, c), for tests and tools (q8_0 and w8a8: float(q) x scale,
  /// one rounding; their products apply the scale to a group's sum instead).
  [[nodiscard]] float at(std::size_t r, std::size_t c) const noexcept {
    const std::size_t i = panel_offset(r, c, cols_);
    switch (format_) {
      case weight_format::fp32: return f32_[i];
      case weight_format::bf16: return bf16_to_float(u16_[i]);
      case weight_format::fp16: return fp16_to_float(u16_[i]);
      case weight_format::q8_0: return static_cast<float>(q8_[i]) * scales_[panel_offset(r, c / q8_group, q8_groups())];
      case weight_format::w8a8:
        return static_cast<float>(static_cast<int>(u8_[i8_offset(r, c, q8_groups())]) - 128) *
               scales_[panel_offset(r, c / q8_group, q8_groups())];
    }
    return 0.0f;
  }

  /// A w8a8 matrix as its product kernels read it (for tests and tools).
  [[nodiscard]] i8_panels i8_view() const noexcept { return {u8_.data(), scales_.data(), q8_groups()}; }

  /// Panels of 16 rows (the last one possibly partial).
  [[nodiscard]] std::size_t panels() const noexcept { return (rows_ + lanes - 1) / lanes; }

  /// Y[t][i] = W[row0 + i] . X[t] for i < nrows, t < k (see detail::matmul_panels); row0
  /// is a multiple of 16; tiles of configuration `tiles` (never a different result). With
  /// `prefetch_on`, the last tiles prefetch the rows after
  /// row0 + nrows (if any), for a next call that continues there. A w8a8 matrix reads
  /// the inputs from `xq` (X quantized by `i8_inputs::quantize`, which a caller running
  /// several products over one X does once); without it, it quantizes X itself (which
  /// allocates, and so may throw).
  void matmul(std::size_t row0, std::size_t nrows, const float* x, std::size_t k, std::size_t ldx, float* y,
              std::size_t ldy, bool prefetch_on = false, const i8_inputs* xq = nullptr,
              tile_config tiles = tile_config::t4x6) const;


 private:
  [[nodiscard]] std::size_t q8_groups() const noexcept { return i8_groups(cols_); }
  weight_format format_ = weight_format::fp32;
  std::size_t rows_ = 0, cols_ = 0;
  aligned_vector<float> f32_;
  aligned_vector<std::uint16_t> u16_;
  aligned_vector<std::int8_t> q8_;
  aligned_vector<std::uint8_t> u8_;  ///< w8a8: q + 128 in i8_offset order
  aligned_vector<float> scales_;
};

#if SPECDEC_CPU_DEFINITIONS
SPECDEC_CPU_FUNC weight_matrix::weight_matrix(const float* src, std::size_t rows, std::size_t cols, weight_format f)
    : format_(f), rows_(rows), cols_(cols) {
  const auto at = [&](std::size_t r, std::size_t j) { return src[r * cols + j]; };
  switch (f) {
    case weight_format::fp32: f32_ = to_panels<float>(rows, cols, at); break;
    case weight_format::bf16:
      u16_ = to_panels<std::uint16_t>(rows, cols, [&](std::size_t r, std::size_t j) { return float_to_bf16(at(r, j)); });
      break;
    case weight_format::fp16:
      u16_ = to_panels<std::uint16_t>(rows, cols, [&](std::size_t r, std::size_t j) { return float_to_fp16(at(r, j)); });
      break;
    case weight_format::q8_0:
    case weight_format::w8a8: {
      // Per row and group of 32 columns: scale = max |w| / 127, q = round(w / scale).
      const std::size_t groups = q8_groups();
      std::vector<float> scale(rows * groups);
      for (std::size_t r = 0; r < rows; ++r)
        for (std::size_t g = 0; g < groups; ++g) {
          float amax = 0.0f;
          for (std::size_t j = g * q8_group; j < std::min(cols, (g + 1) * q8_group); ++j)
            amax = std::max(amax, std::abs(at(r, j)));
          scale[r * groups + g] = amax / 127.0f;
        }
      const auto quantized = [&](std::size_t r, std::size_t j) {
        const float sc = scale[r * groups + j / q8_group];
        return q8_round(at(r, j) * (sc > 0.0f ? 1.0f / sc : 0.0f));
      };
      if (f == weight_format::q8_0) {
        q8_ = to_panels<std::int8_t>(rows, cols, quantized);
      } else {
        // Biased by 128 in VNNI order (int8_products.hpp); padding rows and columns 0.
        u8_.assign(panels() * groups * q8_group * lanes, std::uint8_t{128});
        for (std::size_t r = 0; r < rows; ++r)
          for (std::size_t j = 0; j < cols; ++j)
            u8_[i8_offset(r, j, groups)] = static_cast<std::uint8_t>(quantized(r, j) + 128);
      }
      scales_ = to_panels<float>(rows, groups, [&](std::size_t r, std::size_t g) { return scale[r * groups + g]; });
      break;
    }
  }
}

SPECDEC_CPU_FUNC void weight_matrix::matmul(std::size_t row0, std::size_t nrows, const float* x, std::size_t k,
                                            std::size_t ldx, float* y, std::size_t ldy, bool prefetch_on,
                                            const i8_inputs* xq, tile_config tiles) const {
  const std::size_t p0 = row0 / lanes, pf = prefetch_on ? panels() - p0 : 0;
  switch (format_) {
    case weight_format::w8a8: {
      if (xq == nullptr) {
        i8_inputs own;
        own.reserve(k, cols_);
        own.quantize(x, k, ldx, cols_);
        return matmul_i8(i8_view(), p0, nrows, own, k, y, ldy);
      }
      return matmul_i8(i8_view(), p0, nrows, *xq, k, y, ldy);
    }
    case weight_format::fp32:
      return matmul_panels(f32_panels{f32_.data(), cols_}, p0, nrows, cols_, x, k, ldx, y, ldy, pf, tiles);
    case weight_format::bf16:
      return matmul_panels(u16_panels<bf16_code>{u16_.data(), cols_}, p0, nrows, cols_, x, k, ldx, y, ldy, pf, tiles);
    case weight_format::fp16:
      return matmul_panels(u16_panels<fp16_code>{u16_.data(), cols_}, p0, nrows, cols_, x, k, ldx, y, ldy, pf, tiles);
    case weight_format::q8_0:
      return matmul_panels(q8_panels{q8_.data(), scales_.data(), cols_, q8_groups()}, p0, nrows, cols_, x, k, ldx,
                           y, ldy, pf, tiles);
  }
}
#endif  // SPECDEC_CPU_DEFINITIONS

/// The fastest tile configuration for the products of the matrices `ws` (one weight format)
/// on the calling core (w8a8, which has one table: `t4x6`). Every candidate of
/// `tile_configs` runs blocks of 4, 5, 8, 12 and 16 tokens (one in each block-size range
/// the tables tell apart: 2-4, 5-6, 7-8, 9-12, 13-16; `2x8` and `2x8l2` leave 4 x 6 from 5
/// tokens on) through every matrix in turn, the candidates interleaved, best of `reps`
/// each; a candidate's score is the sum over the blocks of its time over the best time of
/// that block, and the lowest score wins (ties: the earlier candidate). A range left out
/// would go unweighed, and a configuration that wins only there (`2x8`'s one 2 x 12 tile
/// for 9-12 tokens against two token tiles of 2 x 8) could lose the choice to one that wins
/// elsewhere (docs/performance.md, the tile timing). Which tiles win depends on where the
/// weights come from: a matrix that stays in the L2 favours the most accumulator chains,
/// weights streamed from beyond the caches the tiles whose prefetching fits the L1 (kjv-big
/// fp32: 2 x 8 beats 1 x 8 at 8 tokens from the L2, loses in a forward), so a model passes
/// as many of its matrices as a forward streams past its caches. A single token is not
/// timed: a configuration's single-token tiles come with its blocks, and a memory-bound
/// token's gain would outweigh the blocks the choice is for (on the Zen 4 host `2x8l2`'s
/// single bf16 token is up to 20 % faster, where `1x6` runs bf16 blocks of 5 15 % faster).
/// Every candidate gives the same results, so this chooses a speed, never a value.
[[nodiscard]] SPECDEC_CPU_FUNC tile_config fastest_tile_config(std::span<const weight_matrix* const> ws, int reps = 5);
#if SPECDEC_CPU_DEFINITIONS
SPECDEC_CPU_FUNC tile_config fastest_tile_config(std::span<const weight_matrix* const> ws, int reps) {
  std::size_t max_rows = 0, max_cols = 0;
  for (const weight_matrix* w : ws) {
    if (w->format() == weight_format::w8a8) return tile_config::t4x6;
    max_rows = std::max(max_rows, w->rows());
    max_cols = std::max(max_cols, w->cols());
  }
  if (max_rows == 0 || max_cols == 0) return tile_config::t4x6;
  constexpr std::size_t blocks[] = {4, 5, 8, 12, 16};
  constexpr std::size_t n_conf = std::size(tile_configs), n_blocks = std::size(blocks);
  std::vector<float> x(blocks[n_blocks - 1] * max_cols), y(blocks[n_blocks - 1] * max_rows);
  for (std::size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>(static_cast<int>(i % 61) - 30) / 32.0f;
  double best[n_conf][n_blocks];
  for (auto& row : best)
    for (double& b : row) b = 1e300;
  for (int r = 0; r < std::max(1, reps); ++r)
    for (std::size_t c = 0; c < n_conf; ++c)
      for (std::size_t b = 0; b < n_blocks; ++b) {
        const auto t0 = std::chrono::steady_clock::now();
        for (const weight_matrix* w : ws)
          w->matmul(0, w->rows(), x.data(), blocks[b], w->cols(), y.data(), w->rows(), false, nullptr, tile_configs[c]);
        best[c][b] = std::min(best[c][b], std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
      }
  std::size_t winner = 0;
  double winner_score = 1e300;
  for (std::size_t c = 0; c < n_conf; ++c) {
    double score = 0;
    for (std::size_t b = 0; b < n_blocks; ++b) {
      double fastest = best[0][b];
      for (std::size_t o = 1; o < n_conf; ++o) fastest = std::min(fastest, best[o][b]);
      score += best[c][b] / std::max(fastest, 1e-12);
    }
    if (score < winner_score) winner = c, winner_score = score;
  }
  return tile_configs[winner];
}
#endif  // SPECDEC_CPU_DEFINITIONS
/// fastest_tile_config over one matrix.
[[nodiscard]] inline tile_config fastest_tile_config(const weight_matrix& w, int reps = 5) {
  const weight_matrix* one = &w;
  return fastest_tile_config(std::span(&one, 1), reps);
}

}  // namespace detail
}  // namespace specdec::cpu
