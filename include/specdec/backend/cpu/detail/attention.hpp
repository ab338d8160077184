#pragma once
/// \file backend/cpu/detail/attention.hpp
/// The attention's kernels besides its scores (`matmul_rows`, dot.hpp): rotary
/// embeddings, the scores' softmax, and the attention-weighted sums of value rows.
#include <algorithm>
#include <cmath>
#include <cstddef>

#include "specdec/backend/cpu/detail/activations.hpp"
#include "specdec/backend/cpu/detail/arch/vector.hpp"
#include "specdec/backend/cpu/detail/dot.hpp"

namespace specdec::cpu::detail {

/// Chunks of 16 columns that one step of `weighted_rows_sum_group` keeps per head: 4 where
/// 32 registers hold M x 4 accumulators and the 4 loaded chunks (AVX-512), 1 with AVX2's
/// 16 ymm (M x 2 accumulators, 2 for the chunk, 1 broadcast).
inline constexpr int value_chunks = packet_registers >= 16 ? 4 : 1;

/// acc[m][c] = fmadd(a_m[p], (row p of `rows`, columns i + 16 c .. i + 16 c + 15), acc[m][c]):
/// one step of `weighted_rows_sum_group`'s main loop.
template <int M, int C, class W>
[[gnu::always_inline]] inline void add_weighted_row(packet16 (&acc)[M][C], const float* a, std::size_t lda,
                                                    std::size_t p, const W& rows, std::size_t i) noexcept {
  packet16 vv[C];
  for (int c = 0; c < C; ++c) {
    rows.load(vv[c], p, i + c * lanes);
    pin_register(vv[c]);
  }
  for (int m = 0; m < M; ++m) {
    const float ap = a[static_cast<std::size_t>(m) * lda + p];
    for (int c = 0; c < C; ++c) fmadd_lanes(acc[m][c], vv[c], ap);
  }
}
/// acc = fmadd(ap, (row p of `rows`, columns i..i+15), acc): one step of its 16-column loop.
template <class W>
[[gnu::always_inline]] inline void add_weighted_row(packet16& acc, float ap, const W& rows, std::size_t p,
                                                    std::size_t i) noexcept {
  packet16 vv;
  rows.load(vv, p, i);
  fmadd_lanes(acc, vv, ap);
}

/// out_m[i] = sum over p < count of a_m[p] * v_p[i] for i < n and each of M weight vectors
/// a_m = a + m * lda (output out_m = out + m * ldo), where v_p is row p of the row stream
/// `v` (fp32, or a 16-bit KV cache decoded exactly to fp32 in registers): the
/// attention-weighted sums of value rows for M query heads sharing one KV head (grouped-
/// query attention), so each value row is loaded once for all M heads. Each element is
/// one multiply-add chain in p order starting from 0 (`fmadd_lanes`, rounded like
/// `fmadd`), computed the same way whatever M and `value_chunks`: grouping changes no
/// result. Up to 16 `value_chunks` elements per head stay in registers instead of being
/// stored and reloaded per p.
template <int M, class W>
inline void weighted_rows_sum_group(const float* a, std::size_t lda, std::size_t count, const W& v, float* out,
                                    std::size_t ldo, std::size_t n) noexcept {
  constexpr int C = value_chunks;
  static_assert(M >= 1 && M * C + C + 1 <= packet_registers,
                "weighted_rows_sum_group: M heads x value_chunks must fit the registers");
  std::size_t i = 0;
  for (; i + C * lanes <= n; i += C * lanes) {
    packet16 acc[M][C];
    for (int m = 0; m < M; ++m)
      for (int c = 0; c < C; ++c) acc[m][c] = packet16{};
    const auto split = split_rows(v, count);
    for (std::size_t p = 0; p < split.direct; ++p) add_weighted_row<M, C>(acc, a, lda, p, split.head, i);
    for (std::size_t p = split.direct; p < count; ++p) add_weighted_row<M, C>(acc, a, lda, p, v, i);
    for (int m = 0; m < M; ++m)
      for (int c = 0; c < C; ++c)
        store16(out + static_cast<std::size_t>(m) * ldo + i + c * lanes, acc[m][c]);
  }
  for (; i + lanes <= n; i += lanes) {
    for (int m = 0; m < M; ++m) {
      const float* am = a + static_cast<std::size_t>(m) * lda;
      packet16 acc{};
      const auto split = split_rows(v, count);
      for (std::size_t p = 0; p < split.direct; ++p) add_weighted_row(acc, am[p], split.head, p, i);
      for (std::size_t p = split.direct; p < count; ++p) add_weighted_row(acc, am[p], v, p, i);
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

namespace softmax_detail {
/// The softmax of `softmax` over M rows x + m ld side by side (their passes interleaved:
/// each pass is a chain of dependent steps, which M independent rows overlap), over the
/// scores divided by `divisor` first when `Scaled`. Every row's operations are those of
/// a single row. The passes compute in `elem_vec`s; the sum keeps 16 lanes (element i
/// in lane i % 16) as lanes / elem_lanes vectors, so its order is the same in every build.
template <int M, bool Scaled>
inline void softmax_rows(float* x, std::size_t ld, std::size_t n, float divisor) noexcept {
  using V = elem_vec;
  constexpr std::size_t W = elem_lanes;
  constexpr std::size_t H = lanes / W;  // vectors per 16 lanes
  const std::size_t full = n - n % lanes, tail = n - full;
  const auto row = [&](int m) { return x + static_cast<std::size_t>(m) * ld; };
  // Pass 1: the division (elementwise: vector or scalar, the same correctly rounded
  // quotient) and the maximum in vector lanes, then across them (GCC does not vectorise a
  // float max reduction without -ffast-math). Max is exact in any order.
  const V d = splat_lanes<V>(divisor);
  V vmax[M];
  for (int m = 0; m < M; ++m) vmax[m] = V{} - __builtin_inff();
  for (std::size_t i = 0; i < full; i += W)
    for (int m = 0; m < M; ++m) {
      V v = load_lanes<V>(row(m) + i);
      if constexpr (Scaled) {
        v = v / d;
        store_lanes(row(m) + i, v);
      }
      vmax[m] = v > vmax[m] ? v : vmax[m];
    }
  V mx[M];
  for (int m = 0; m < M; ++m) {
    float* xm = row(m);
    if constexpr (Scaled)
      for (std::size_t i = full; i < n; ++i) xm[i] /= divisor;
    float mm = std::max(xm[0], max_lanes(vmax[m]));
    for (std::size_t i = full; i < n; ++i) mm = std::max(mm, xm[i]);
    mx[m] = splat_lanes<V>(mm);
  }
  // Pass 2: e^(x - max) by `exp_lanes` and their sum in 16 lanes in index order (the
  // tail's unused lanes add zeros), reduced by `hsum16`'s tree.
  V acc[M][H];
  for (int m = 0; m < M; ++m)
    for (std::size_t h = 0; h < H; ++h) acc[m][h] = V{};
  for (std::size_t i = 0; i < full; i += lanes)
    for (int m = 0; m < M; ++m)
      for (std::size_t h = 0; h < H; ++h) {
        float* at = row(m) + i + h * W;
        V v = load_lanes<V>(at) - mx[m];
        exp_lanes(v);
        store_lanes(at, v);
        acc[m][h] += v;
      }
  if (tail != 0) {
    using VI = typename int_lanes<V>::type;
    VI lane;
    for (std::size_t l = 0; l < W; ++l) lane[l] = static_cast<int>(l);
    for (int m = 0; m < M; ++m)
      for (std::size_t h = 0; h < H && h * W < tail; ++h) {
        float* at = row(m) + full + h * W;
        const std::size_t count = std::min(W, tail - h * W);
        V v;
        load_first(v, at, count);
        v = v - mx[m];
        exp_lanes(v);
        store_first(at, v, count);
        acc[m][h] += lane < static_cast<int>(count) ? v : V{};
      }
  }
  // Pass 3: the division by the sum.
  V sum[M];
  for (int m = 0; m < M; ++m) {
    v16 all;
    __builtin_memcpy(&all, acc[m], sizeof(all));
    sum[m] = splat_lanes<V>(hsum16(all));
  }
  for (std::size_t i = 0; i < full; i += W)
    for (int m = 0; m < M; ++m) store_lanes(row(m) + i, load_lanes<V>(row(m) + i) / sum[m]);
  for (int m = 0; m < M; ++m) {
    float* xm = row(m);
    for (std::size_t i = full; i < n; ++i) xm[i] /= sum[m][0];
  }
}
}  // namespace softmax_detail

/// In-place softmax over x[0..n), n >= 1: max (exact in any order), e^(x - max) by
/// `exp_lanes`, their sum in 16 lanes in index order (lane i % 16, the tail padded with
/// zeros) reduced by `hsum16`'s tree, then a division per element. The order depends on
/// n only.
inline void softmax(float* x, std::size_t n) noexcept { softmax_detail::softmax_rows<1, false>(x, 0, n, 1.0f); }

/// The attention's softmax of scores divided by `divisor` (sqrt(head_size)): x[j] /=
/// divisor for each j, then `softmax`, the same bits, with the division folded into the
/// maximum's pass.
inline void scaled_softmax(float* x, std::size_t n, float divisor) noexcept {
  softmax_detail::softmax_rows<1, true>(x, 0, n, divisor);
}

/// scaled_softmax over each of `rows` rows x + m ld (m < rows), up to 4 at a time side by
/// side: the query heads of one KV head, whose passes then overlap. The same bits as one
/// row at a time.
inline void scaled_softmax_rows(float* x, std::size_t ld, std::size_t rows, std::size_t n, float divisor) noexcept {
  std::size_t m = 0;
  for (; m + 4 <= rows; m += 4) softmax_detail::softmax_rows<4, true>(x + m * ld, ld, n, divisor);
  switch (rows - m) {
    case 3: softmax_detail::softmax_rows<3, true>(x + m * ld, ld, n, divisor); break;
    case 2: softmax_detail::softmax_rows<2, true>(x + m * ld, ld, n, divisor); break;
    case 1: softmax_detail::softmax_rows<1, true>(x + m * ld, ld, n, divisor); break;
    default: break;
  }
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

}  // namespace specdec::cpu::detail
