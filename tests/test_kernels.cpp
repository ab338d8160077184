// Tests for include/specdec/backend/cpu/detail/kernels.hpp and the family it gathers
// (arch/vector.hpp, tiles.hpp, matmul.hpp, int8_products.hpp, dot.hpp, attention.hpp,
// activations.hpp): the fixed summation orders every product keeps, bit for bit, whatever
// the tile, the alignment or the grouping, and the accuracy of the vector exp, softmax and
// SwiGLU.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <type_traits>
#include <vector>

#include "cpu_fixtures.hpp"
#include "specdec/backend/cpu/detail/aligned.hpp"
#include "specdec/backend/cpu/detail/kernels.hpp"
#include "specdec/backend/cpu/detail/weights.hpp"

namespace {
using namespace cpu_fixtures;

// The 8-bit formats' quantization of a row, written out from its definition: per group of
// 32 (the last one possibly partial) scale = max|v| / 127, q = nearest-even(v * (1 /
// scale)) clamped to [-127, 127]; q is padded with zeros to whole groups.
void quantize_q8(const float* v, std::size_t n, std::vector<int>& q, std::vector<float>& scale) {
  const std::size_t groups = (n + 31) / 32;
  q.assign(groups * 32, 0);
  scale.assign(groups, 0.0f);
  for (std::size_t g = 0; g < groups; ++g) {
    float amax = 0.0f;
    for (std::size_t j = g * 32; j < std::min(n, g * 32 + 32); ++j) amax = std::max(amax, std::abs(v[j]));
    scale[g] = amax / 127.0f;
    const float inv = scale[g] > 0.0f ? 1.0f / scale[g] : 0.0f;
    for (std::size_t j = g * 32; j < std::min(n, g * 32 + 32); ++j)
      q[j] = static_cast<int>(std::clamp(std::nearbyint(v[j] * inv), -127.0f, 127.0f));
  }
}

// The q8_0 product rule (detail::grouped_panel_tile), written out: per group of 32 columns
// in order, part = the in-order fmadd chain of float(q) x input from 0, then acc =
// fmadd(part, scale, acc) from 0.
float q8_0_chain(const std::vector<int>& q, const std::vector<float>& scale, const float* x, std::size_t n) {
  float acc = 0.0f;
  for (std::size_t g = 0; g * 32 < n; ++g) {
    float part = 0.0f;
    for (std::size_t j = g * 32; j < std::min(n, g * 32 + 32); ++j)
      part = specdec::cpu::detail::fmadd(static_cast<float>(q[j]), x[j], part);
    acc = specdec::cpu::detail::fmadd(part, scale[g], acc);
  }
  return acc;
}

// Grouped-query attention reads each value row once for all heads of a KV group. Grouping
// must change no bit: every head's outputs equal the one-head kernel's, for any group size
// (1..4 use one register tile, 5 and 7 split into 4 + 1 and 4 + 3) and widths that
// exercise the 64-wide, 16-wide and scalar paths; and they are the weighted sums (checked
// against a double-precision sum, since whether the vector path fuses its multiply-adds
// depends on the optimisation level).
TEST(kernels, grouped_weighted_value_sums_equal_one_head_sums_bit_for_bit) {
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  const std::size_t count = 37, ldv = 160, lda = 41;
  std::vector<float> v(count * ldv), a(7 * lda);
  for (float& x : v) x = u(rng);
  for (float& x : a) x = u(rng);
  for (std::size_t heads : {1u, 2u, 3u, 4u, 5u, 7u}) {
    for (std::size_t n : {64u, 16u, 5u, 64u + 16u + 3u, 150u}) {
      const std::size_t ldo = n + 2;
      std::vector<float> out(heads * ldo, -1.0f), one(n);
      specdec::cpu::detail::weighted_rows_sum_heads(heads, a.data(), lda, count, v.data(), ldv, out.data(), ldo, n);
      for (std::size_t m = 0; m < heads; ++m) {
        specdec::cpu::detail::weighted_rows_sum_group<1>(a.data() + m * lda, lda, count, v.data(), ldv, one.data(), n,
                                                         n);
        for (std::size_t i = 0; i < n; ++i) {
          ASSERT_EQ(out[m * ldo + i], one[i]) << "heads " << heads << " n " << n << " head " << m << " i " << i;
          double want = 0.0;
          for (std::size_t p = 0; p < count; ++p) want += double(a[m * lda + p]) * double(v[p * ldv + i]);
          ASSERT_NEAR(out[m * ldo + i], want, 1e-5) << "heads " << heads << " n " << n << " head " << m;
        }
        EXPECT_EQ(out[m * ldo + n], -1.0f) << "wrote past the head's n outputs";
      }
    }
  }
}

// The buffers the kernels stream are cache-line aligned for speed (detail/aligned.hpp),
// but no result may depend on alignment: a matmul over weights and inputs at every
// 4-byte offset within a cache line, for token counts that take each tile path (1, 2, 3,
// 4-6, 7+ tokens) and in every weight format, gives the same bits as over aligned copies.
TEST(kernels, matmul_results_do_not_depend_on_buffer_alignment) {
  namespace d = specdec::cpu::detail;
  // The storage of the 1-, 2- and 4-byte formats starts on a cache line at any size.
  for (std::size_t size : {1u, 3u, 45u, 1000u, 300000u}) {
    const d::aligned_vector<std::int8_t> q(size);
    const d::aligned_vector<std::uint16_t> h(size);
    const d::aligned_vector<float> f(size);
    EXPECT_EQ(reinterpret_cast<std::uintptr_t>(q.data()) % d::cache_line, 0u) << size;
    EXPECT_EQ(reinterpret_cast<std::uintptr_t>(h.data()) % d::cache_line, 0u) << size;
    EXPECT_EQ(reinterpret_cast<std::uintptr_t>(f.data()) % d::cache_line, 0u) << size;
  }
  std::mt19937 rng(11);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  for (std::size_t n : {std::size_t{48}, std::size_t{530}}) {
    const std::size_t rows = 29, kmax = 16;
    d::aligned_vector<float> w(rows * n + 16), x(kmax * n + 16);
    for (float& v : w) v = u(rng);
    for (float& v : x) v = u(rng);
    for (const auto f : all_formats) {
      for (std::size_t k : {1u, 2u, 3u, 4u, 5u, 6u, 7u, 16u}) {
        std::vector<float> want(k * rows), got(k * rows);
        const d::weight_matrix wa(w.data(), rows, n, f);
        wa.matmul(0, rows, x.data(), k, n, want.data(), rows);
        for (std::size_t off = 1; off < 16; off += 3) {
          // The same values, shifted off the cache line.
          d::aligned_vector<float> ws(rows * n + 16), xs(kmax * n + 16);
          std::copy_n(w.data(), rows * n, ws.data() + off);
          std::copy_n(x.data(), k * n, xs.data() + (15 - off));
          const d::weight_matrix wb(ws.data() + off, rows, n, f);
          wb.matmul(0, rows, xs.data() + (15 - off), k, n, got.data(), rows);
          ASSERT_EQ(0, std::memcmp(want.data(), got.data(), want.size() * sizeof(float)))
              << specdec::cpu::to_string(f) << " n " << n << " k " << k << " offset " << off;
        }
      }
    }
  }
}

// The summation order every weight product keeps (detail::matmul_panels): output (t, r)
// is one multiply-add chain over the columns in order, starting from 0, over the
// decoded weights (q8_0: the grouped rule of q8_0_chain, over its quantized weights). Checked bit for bit against that chain written out one element at a
// time, for row counts with partial 16-row panels, every tile path (1-9, 16, 17 tokens),
// every weight format, and products cut into two calls at a panel boundary (as the
// thread split cuts them). The chain is written with detail::fmadd (a fused multiply-add
// where the target has one), the rounding rule the kernels' fmadd_lanes keeps at every
// optimisation level.
TEST(kernels, weight_products_are_one_in_order_multiply_add_chain_per_output) {
  namespace d = specdec::cpu::detail;
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  for (const std::size_t rows : {1u, 16u, 37u, 100u}) {
    for (const std::size_t n : {1u, 45u, 64u}) {
      std::vector<float> w(rows * n), x(17 * n);
      for (float& v : w) v = u(rng);
      for (float& v : x) v = u(rng);
      std::vector<std::vector<int>> wq(rows);
      std::vector<std::vector<float>> ws(rows);
      for (std::size_t r = 0; r < rows; ++r) quantize_q8(w.data() + r * n, n, wq[r], ws[r]);
      for (const auto f : {weight_format::fp32, weight_format::bf16, weight_format::fp16, weight_format::q8_0}) {
        const d::weight_matrix wm(w.data(), rows, n, f);
        if (f == weight_format::q8_0) {  // the stored weights decode to q * scale
          for (std::size_t r = 0; r < rows; ++r)
            for (std::size_t j = 0; j < n; ++j) ASSERT_EQ(wm.at(r, j), float(wq[r][j]) * ws[r][j / 32]) << r << "," << j;
        }
        for (const std::size_t k : {1u, 2u, 3u, 4u, 5u, 6u, 7u, 8u, 9u, 12u, 13u, 16u, 17u}) {
          for (const auto tiles : specdec::cpu::tile_configs) {
            std::vector<float> whole(k * rows), split(k * rows);
            wm.matmul(0, rows, x.data(), k, n, whole.data(), rows, false, nullptr, tiles);
            const std::size_t cut = rows > 16 ? 16 : rows;
            wm.matmul(0, cut, x.data(), k, n, split.data(), rows, true, nullptr, tiles);
            wm.matmul(cut, rows - cut, x.data(), k, n, split.data() + cut, rows, false, nullptr, tiles);
            for (std::size_t t = 0; t < k; ++t) {
              for (std::size_t r = 0; r < rows; ++r) {
                float chain = 0.0f;
                if (f == weight_format::q8_0) chain = q8_0_chain(wq[r], ws[r], x.data() + t * n, n);
                else
                  for (std::size_t j = 0; j < n; ++j) chain = d::fmadd(wm.at(r, j), x[t * n + j], chain);
                ASSERT_EQ(whole[t * rows + r], chain) << specdec::cpu::to_string(f) << " rows " << rows << " n " << n
                                                      << " k " << k << " t " << t << " r " << r << " tiles "
                                                      << specdec::cpu::to_string(tiles);
                ASSERT_EQ(split[t * rows + r], chain) << specdec::cpu::to_string(f) << " split, k " << k;
              }
            }
          }
        }
      }
    }
  }
}

// The w8a8 product rule (detail/int8_products.hpp), written out here from its definition:
// weights and inputs quantized per row and group of 32 (scale = max|v| / 127, q =
// nearest-even(v * (1 / scale)) in [-127, 127]), then per output (t, r):
// acc = fmadd(float(integer dot of the group), w_scale * x_scale, acc) over the groups in
// order. The VNNI tiles (every tile path: 1-9 and 16 tokens, partial panels, partial
// groups, a product cut at a panel boundary) and the portable scalar path must both give
// exactly that.
TEST(kernels, w8a8_products_follow_the_integer_group_rule) {
  namespace d = specdec::cpu::detail;
  const auto quantize = quantize_q8;
  std::mt19937 rng(9);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  for (const std::size_t rows : {1u, 16u, 37u, 130u}) {
    for (const std::size_t n : {1u, 45u, 64u, 172u}) {
      const std::size_t groups = (n + 31) / 32;
      std::vector<float> w(rows * n), x(17 * n);
      for (float& v : w) v = u(rng);
      for (float& v : x) v = u(rng);
      x[3] = 0.0f;
      for (std::size_t j = 0; j < std::min<std::size_t>(n, 32); ++j) x[n + j] = 0.0f;  // an all-zero group
      const d::weight_matrix wm(w.data(), rows, n, weight_format::w8a8);
      std::vector<std::vector<int>> wq(rows), xq(17);
      std::vector<std::vector<float>> ws(rows), xs(17);
      for (std::size_t r = 0; r < rows; ++r) quantize(w.data() + r * n, n, wq[r], ws[r]);
      for (std::size_t t = 0; t < 17; ++t) quantize(x.data() + t * n, n, xq[t], xs[t]);
      // The stored weights decode to q * scale.
      for (std::size_t r = 0; r < rows; ++r)
        for (std::size_t j = 0; j < n; ++j) ASSERT_EQ(wm.at(r, j), float(wq[r][j]) * ws[r][j / 32]) << r << "," << j;
      for (const std::size_t k : {1u, 2u, 3u, 4u, 5u, 6u, 7u, 8u, 9u, 16u}) {
        std::vector<float> whole(k * rows), split(k * rows), scalar(k * rows);
        wm.matmul(0, rows, x.data(), k, n, whole.data(), rows);
        const std::size_t cut = rows > 16 ? 16 : rows;
        d::i8_inputs in;
        in.reserve(k, n);
        in.quantize(x.data(), k, n, n);
        wm.matmul(0, cut, x.data(), k, n, split.data(), rows, true, &in);
        wm.matmul(cut, rows - cut, x.data(), k, n, split.data() + cut, rows, false, &in);
        for (std::size_t t = 0; t < k; ++t)
          for (std::size_t j = 0; j < groups * 32; ++j) ASSERT_EQ(int(in.q[t * groups * 32 + j]), xq[t][j]) << t << "," << j;
        for (std::size_t t = 0; t < k; ++t) {
          for (std::size_t r = 0; r < rows; ++r) {
            float acc = 0.0f;
            for (std::size_t g = 0; g < groups; ++g) {
              int dot = 0;
              for (std::size_t j = g * 32; j < g * 32 + 32; ++j) dot += wq[r][j] * xq[t][j];
              acc = d::fmadd(float(dot), ws[r][g] * xs[t][g], acc);
            }
            ASSERT_EQ(whole[t * rows + r], acc) << "rows " << rows << " n " << n << " k " << k << " t " << t << " r " << r;
            ASSERT_EQ(split[t * rows + r], acc) << "split, k " << k;
          }
        }
        if (k == 3 || k == 9) {  // the portable path (what builds without AVX512-VNNI run)
          for (std::size_t p = 0; p * 16 < rows; ++p) {
            const std::size_t prow = std::min<std::size_t>(16, rows - p * 16);
            std::vector<float> part(k * 16);
            // Through the public accessors: the weights' layout is the header's business.
            d::i8_product_scalar(wm.i8_view(), p, prow, in, 0, k, part.data(), 16);
            for (std::size_t t = 0; t < k; ++t)
              for (std::size_t i = 0; i < prow; ++i)
                ASSERT_EQ(part[t * 16 + i], whole[t * rows + p * 16 + i]) << "scalar path, k " << k;
          }
        }
      }
    }
  }
}

// Input quantization: whole groups take a vector path, a partial last group a scalar one;
// both round half to even, clamp to +-127, skip NaN in the maximum and quantize it to 0.
TEST(kernels, w8a8_input_quantization_rounds_to_nearest_even_and_tolerates_nan) {
  namespace d = specdec::cpu::detail;
  for (const std::size_t n : {32u, 40u}) {  // the tie group is whole, or the partial last one
    std::vector<float> x(n, 0.0f);
    const std::size_t g0 = n == 32 ? 0 : 32;  // the group under test
    // max |x| = 127 gives scale 1 and inverse 1: every value is rounded as written.
    x[g0] = 127.0f;
    x[g0 + 1] = 2.5f;   // tie -> 2
    x[g0 + 2] = 3.5f;   // tie -> 4
    x[g0 + 3] = -2.5f;  // tie -> -2
    x[g0 + 4] = -0.4f;  // -> 0
    x[g0 + 5] = std::numeric_limits<float>::quiet_NaN();  // skipped in the max, quantized to 0
    x[g0 + 6] = 126.6f;  // -> 127
    d::i8_inputs in;
    in.reserve(1, n);
    in.quantize(x.data(), 1, n, n);
    const std::int8_t* q = in.q.data() + g0;
    const int want[] = {127, 2, 4, -2, 0, 0, 127};
    for (int i = 0; i < 7; ++i) EXPECT_EQ(int(q[i]), want[i]) << "n " << n << " i " << i;
    for (std::size_t i = 7; i < 32; ++i) EXPECT_EQ(int(q[i]), 0) << i;
    EXPECT_EQ(in.scale[g0 / 32], 1.0f);
    EXPECT_EQ(in.correction[g0 / 32], -128 * (127 + 2 + 4 - 2 + 127));
  }
}

// Rows of 4 and more whole groups are quantized four groups at a time, their scales in
// one pass and their values in a second; the rest one group at a time. Every group, in
// every position of a quad, of a row and of a block of rows, must give the definition's
// values: scale, q and the VNNI correction -128 * sum(q).
TEST(kernels, w8a8_input_quantization_is_the_same_in_every_position) {
  namespace d = specdec::cpu::detail;
  std::mt19937 rng(23);
  std::uniform_real_distribution<float> u(-4.0f, 4.0f);
  for (const std::size_t n : {128u, 160u, 172u, 256u, 288u, 300u}) {
    for (const std::size_t k : {1u, 3u}) {
      const std::size_t ldx = n + 5, groups = (n + 31) / 32;
      std::vector<float> x(k * ldx, 1e30f);  // the gap between rows is never read
      for (std::size_t t = 0; t < k; ++t) {
        for (std::size_t j = 0; j < n; ++j) {
          float& v = x[t * ldx + j];
          switch (rng() % 8) {
            case 0: v = 0.0f; break;
            case 1: v = -0.0f; break;
            case 2: v = std::ldexp(u(rng), static_cast<int>(rng() % 60) - 30); break;  // scales far apart
            default: v = u(rng);
          }
        }
        for (std::size_t j = 64; j < std::min<std::size_t>(n, 96); ++j) x[t * ldx + j] = 0.0f;  // an all-zero group
      }
      d::i8_inputs in;
      in.reserve(k, n);
      in.quantize(x.data(), k, ldx, n);
      for (std::size_t t = 0; t < k; ++t) {
        std::vector<int> q;
        std::vector<float> scale;
        quantize_q8(x.data() + t * ldx, n, q, scale);
        for (std::size_t g = 0; g < groups; ++g) {
          ASSERT_EQ(in.scale[t * groups + g], scale[g]) << "n " << n << " t " << t << " g " << g;
          int sum = 0;
          for (std::size_t j = g * 32; j < g * 32 + 32; ++j) {
            ASSERT_EQ(int(in.q[t * groups * 32 + j]), q[j]) << "n " << n << " t " << t << " j " << j;
            sum += q[j];
          }
          ASSERT_EQ(in.correction[t * groups + g], -128 * sum) << "n " << n << " t " << t << " g " << g;
        }
      }
    }
  }
}

// exp_lanes replaces std::exp in the softmax and SiLU: it must stay within 2 ulp of the
// correctly rounded e^x over the range it computes, give 0 / +inf / NaN outside it, and
// depend on the value only, whatever lane (or tail position) the value lands in.
TEST(kernels, vector_exp_is_within_two_ulp_and_elementwise) {
  namespace d = specdec::cpu::detail;
  const auto ulps = [](float a, float b) {
    std::int32_t ia, ib;
    std::memcpy(&ia, &a, 4);
    std::memcpy(&ib, &b, 4);
    return std::abs(ia - ib);
  };
  int worst = 0;
  std::vector<float> xs;
  for (float x = -86.5f; x <= 88.0f; x = std::nextafter(x + 0.0173f * std::abs(x) + 1e-6f, 100.0f)) xs.push_back(x);
  for (float x : {0.0f, -0.0f, 1e-30f, -1e-30f, 0.34657359f, -0.34657359f, 1.0f, -86.5f, 88.0f}) xs.push_back(x);
  ASSERT_GT(xs.size(), 1000u);
  std::vector<float> got = xs;
  d::exp_inplace(got.data(), got.size());
  for (std::size_t i = 0; i < xs.size(); ++i) {
    const float want = static_cast<float>(std::exp(static_cast<double>(xs[i])));
    worst = std::max(worst, ulps(got[i], want));
    ASSERT_LE(ulps(got[i], want), 2) << "exp(" << xs[i] << ") = " << got[i] << ", want " << want;
  }
  std::printf("exp_lanes: max %d ulp over %zu values\n", worst, xs.size());
  // Outside the range, and special values.
  std::vector<float> sp = {-86.6f, -1000.0f, -INFINITY, 88.1f, 1000.0f, INFINITY, NAN};
  d::exp_inplace(sp.data(), sp.size());
  EXPECT_EQ(sp[0], 0.0f);
  EXPECT_EQ(sp[1], 0.0f);
  EXPECT_EQ(sp[2], 0.0f);
  EXPECT_TRUE(std::isinf(sp[3]) && sp[3] > 0);
  EXPECT_TRUE(std::isinf(sp[4]) && sp[4] > 0);
  EXPECT_TRUE(std::isinf(sp[5]) && sp[5] > 0);
  EXPECT_TRUE(std::isnan(sp[6]));
  // Elementwise: the same values at every offset and in every tail length give the same bits.
  for (std::size_t off = 0; off < 17; ++off) {
    for (std::size_t n : {1u, 15u, 16u, 17u, 40u}) {
      std::vector<float> buf(off + n);
      for (std::size_t i = 0; i < n; ++i) buf[off + i] = xs[(i * 97) % xs.size()];
      d::exp_inplace(buf.data() + off, n);
      for (std::size_t i = 0; i < n; ++i)
        ASSERT_EQ(buf[off + i], got[(i * 97) % xs.size()]) << "offset " << off << " n " << n << " i " << i;
    }
  }
}

// The softmax sum runs in 16 lanes by index and one fixed tree, so the result depends on
// the values and the length only (not on the buffer's alignment; the attention's scaled
// form divides first, with the same bits), and the SiLU gate is
// elementwise, so any slicing of a hidden row (threads split it) gives the same bits.
TEST(kernels, softmax_and_swiglu_are_fixed_order_and_accurate) {
  namespace d = specdec::cpu::detail;
  std::mt19937 rng(11);
  std::uniform_real_distribution<float> u(-12.0f, 12.0f);
  for (std::size_t n : {1u, 7u, 16u, 33u, 221u}) {
    std::vector<float> x(n);
    for (float& v : x) v = u(rng);
    std::vector<float> a = x;
    d::softmax(a.data(), n);
    double mx = x[0], sum = 0.0;
    for (float v : x) mx = std::max(mx, double(v));
    for (float v : x) sum += std::exp(double(v) - mx);
    double total = 0.0;
    for (std::size_t i = 0; i < n; ++i) {
      ASSERT_NEAR(a[i], std::exp(double(x[i]) - mx) / sum, 1e-6) << "n " << n << " i " << i;
      total += a[i];
    }
    EXPECT_NEAR(total, 1.0, 1e-5);
    for (std::size_t off = 1; off < 4; ++off) {
      std::vector<float> b(n + off);
      std::copy(x.begin(), x.end(), b.begin() + off);
      d::softmax(b.data() + off, n);
      ASSERT_TRUE(std::equal(a.begin(), a.end(), b.begin() + off)) << "n " << n << " offset " << off;
    }
  }
  // The attention's scaled_softmax is the division of every score, then softmax, bit for
  // bit, for every length (whole vectors, a tail, both) and divisor.
  for (std::size_t n : {1u, 5u, 16u, 17u, 33u, 48u, 221u}) {
    for (float divisor : {8.0f, std::sqrt(48.0f), 0.75f}) {
      std::vector<float> x(n);
      for (float& v : x) v = u(rng) * 4.0f;
      std::vector<float> want = x, got = x;
      for (float& v : want) v /= divisor;
      d::softmax(want.data(), n);
      d::scaled_softmax(got.data(), n, divisor);
      ASSERT_EQ(got, want) << "n " << n << " divisor " << divisor;
    }
  }
  const std::size_t hid = 101;
  std::vector<float> h(hid), g(hid);
  for (float& v : h) v = u(rng) * 8.0f;  // reaches both ends of exp_lanes's range
  for (float& v : g) v = u(rng);
  std::vector<float> whole = h;
  d::swiglu(whole.data(), g.data(), hid);
  for (std::size_t i = 0; i < hid; ++i) {
    const double want = double(h[i]) / (1.0 + std::exp(-double(h[i]))) * double(g[i]);
    ASSERT_NEAR(whole[i], want, 1e-5 * std::max(1.0, std::abs(want))) << "i " << i;
  }
  for (std::size_t cut : {1u, 5u, 16u, 37u, 100u}) {
    std::vector<float> parts = h;
    d::swiglu(parts.data(), g.data(), cut);
    d::swiglu(parts.data() + cut, g.data() + cut, hid - cut);
    ASSERT_EQ(parts, whole) << "split at " << cut;
  }
}

// The vector layer's widening conversions (arch/vector.hpp, from the instruction-set file
// this build selected) give exactly the scalar conversions' values: every bf16 and fp16
// bit pattern (bit for bit; a NaN stays a NaN: the hardware quiets signalling NaN halves,
// which no conversion from fp32 stores), every int8 value times scales of every sign, at
// an address off any vector alignment.
TEST(kernels, vector_widening_equals_the_scalar_conversions) {
  namespace d = specdec::cpu::detail;
  std::vector<std::uint16_t> h(65536 + 1);
  for (std::size_t i = 0; i < 65536; ++i) h[i + 1] = static_cast<std::uint16_t>(i);
  for (std::size_t i = 0; i < 65536; i += 16) {
    d::v16 b, f;
    d::widen_bf16(b, h.data() + 1 + i);
    d::widen_fp16(f, h.data() + 1 + i);
    for (std::size_t l = 0; l < 16; ++l) {
      const auto v = static_cast<std::uint16_t>(i + l);
      ASSERT_EQ(d::float_bits(b[l]), d::float_bits(d::bf16_to_float(v))) << "bf16 " << v;
      const float want = d::fp16_to_float(v);
      if (std::isnan(want)) ASSERT_TRUE(std::isnan(f[l])) << "fp16 " << v;
      else ASSERT_EQ(d::float_bits(f[l]), d::float_bits(want)) << "fp16 " << v;
    }
  }
  std::vector<std::int8_t> q(256 + 1);
  std::vector<float> s(256 + 1);
  std::mt19937 rng(4);
  std::uniform_real_distribution<float> u(-0.1f, 0.1f);
  for (std::size_t i = 0; i < 256; ++i) q[i + 1] = static_cast<std::int8_t>(int(i) - 128), s[i + 1] = u(rng);
  s[1 + 7] = 0.0f, s[1 + 8] = -0.0f, s[1 + 9] = 1e-30f;
  for (std::size_t i = 0; i < 256; i += 16) {
    d::v16 out;
    d::widen_q8(out, q.data() + 1 + i, s.data() + 1 + i);
    for (std::size_t l = 0; l < 16; ++l)
      ASSERT_EQ(d::float_bits(out[l]), d::float_bits(static_cast<float>(q[1 + i + l]) * s[1 + i + l])) << i + l;
  }
}

// Every tile family of every selection table (tiles.hpp) computes every output of its
// product exactly once and exactly as the summation rule says, whatever the table would
// choose for the block: each family of the weight products over fp32 and bf16 panels
// (the in-order fmadd chain) and q8_0 panels (the grouped rule), of the attention scores
// (`dot` per row and vector, this build's table and the AVX2 one) and of the w8a8 products
// (the portable scalar path: the build's matmul_i8 and, with VNNI, every family), for
// partial panels, every token tile count up to 17, and nothing written past the product's
// rows.
template <class... Choices, class F>
void for_each_family(specdec::cpu::detail::tile_table<Choices...>, F&& f) {
  (f(typename Choices::family{}), ...);
}

// Every family of every tile configuration's weight-product table.
template <class F>
void for_each_panel_family(F&& f) {
  for (const auto c : specdec::cpu::tile_configs)
    specdec::cpu::detail::with_panel_table(c, [&](auto table) { for_each_family(table, f); });
}

TEST(kernels, every_tile_family_computes_every_output_by_the_summation_rule) {
  namespace d = specdec::cpu::detail;
  std::mt19937 rng(13);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  const std::size_t n = 45, kmax = 17;
  std::vector<float> x(kmax * n);
  for (float& v : x) v = u(rng);
  for (const std::size_t rows : {1u, 13u, 16u, 37u, 100u, 130u}) {
    std::vector<float> w(rows * n);
    for (float& v : w) v = u(rng);
    const auto f32 = d::to_panels<float>(rows, n, [&](std::size_t r, std::size_t j) { return w[r * n + j]; });
    const auto b16 =
        d::to_panels<std::uint16_t>(rows, n, [&](std::size_t r, std::size_t j) { return d::float_to_bf16(w[r * n + j]); });
    std::vector<std::vector<int>> wq(rows);
    std::vector<std::vector<float>> ws(rows);
    for (std::size_t r = 0; r < rows; ++r) quantize_q8(w.data() + r * n, n, wq[r], ws[r]);
    const std::size_t groups = (n + 31) / 32;
    const auto q8 = d::to_panels<std::int8_t>(rows, n, [&](std::size_t r, std::size_t j) { return std::int8_t(wq[r][j]); });
    const auto q8s = d::to_panels<float>(rows, groups, [&](std::size_t r, std::size_t g) { return ws[r][g]; });
    const std::size_t ldy = rows + 3;
    for (std::size_t k = 1; k <= kmax; ++k) {
      // want(t, r): output (t, r) by the stream's summation rule.
      const auto check_panels = [&](const auto& stream, auto want, const char* what) {
        for_each_panel_family([&](auto family) {
          std::vector<float> y(k * ldy, -7.0f);
          const std::size_t panels = (rows + 15) / 16;
          d::run_panel_tiles(family, d::panel_product<std::decay_t<decltype(stream)>>{
                                         stream, 0, panels, rows, n, x.data(), k, n, y.data(), ldy, panels});
          for (std::size_t t = 0; t < k; ++t) {
            for (std::size_t r = 0; r < rows; ++r)
              ASSERT_EQ(y[t * ldy + r], want(t, r)) << what << " rows " << rows << " k " << k << " t " << t << " r " << r;
            for (std::size_t r = rows; r < ldy; ++r) ASSERT_EQ(y[t * ldy + r], -7.0f) << what << " wrote past the rows";
          }
        });
      };
      const auto chain = [&](auto decode) {
        return [&, decode](std::size_t t, std::size_t r) {
          float c = 0.0f;
          for (std::size_t j = 0; j < n; ++j) c = d::fmadd(decode(w[r * n + j]), x[t * n + j], c);
          return c;
        };
      };
      check_panels(d::f32_panels{f32.data(), n}, chain([](float v) { return v; }), "fp32 panels");
      check_panels(d::u16_panels<d::bf16_code>{b16.data(), n},
                   chain([](float v) { return d::bf16_to_float(d::float_to_bf16(v)); }), "bf16 panels");
      check_panels(d::q8_panels{q8.data(), q8s.data(), n, groups},
                   [&](std::size_t t, std::size_t r) { return q8_0_chain(wq[r], ws[r], x.data() + t * n, n); },
                   "q8_0 panels");
      const auto check_rows = [&](auto family) {
        std::vector<float> y(k * ldy, -7.0f);
        const d::f32_rows keys{w.data(), n};
        d::run_row_tiles(family, d::row_product<d::f32_rows>{keys, rows, n, x.data(), k, n, y.data(), ldy});
        for (std::size_t t = 0; t < k; ++t) {
          for (std::size_t r = 0; r < rows; ++r)
            ASSERT_EQ(y[t * ldy + r], d::dot(w.data() + r * n, x.data() + t * n, n)) << "rows " << rows << " k " << k;
          for (std::size_t r = rows; r < ldy; ++r) ASSERT_EQ(y[t * ldy + r], -7.0f) << "row tiles wrote past the rows";
        }
      };
      // This build's table and the AVX2 one (which fits every register file).
      for_each_family(d::row_tile_table{}, check_rows);
      for_each_family(d::avx2_row_tile_table{}, check_rows);
      const d::weight_matrix wm(w.data(), rows, n, weight_format::w8a8);
      d::i8_inputs in;
      in.reserve(k, n);
      in.quantize(x.data(), k, n, n);
      std::vector<float> want(k * ldy);
      d::i8_product_scalar(wm.i8_view(), 0, rows, in, 0, k, want.data(), ldy);
      {  // the build's own path: VNNI tiles, AVX2 sign-dot tiles or the portable one
        std::vector<float> y(k * ldy, -7.0f);
        d::matmul_i8(wm.i8_view(), 0, rows, in, k, y.data(), ldy);
        for (std::size_t t = 0; t < k; ++t) {
          for (std::size_t r = 0; r < rows; ++r) ASSERT_EQ(y[t * ldy + r], want[t * ldy + r]) << "matmul_i8 rows " << rows << " k " << k;
          for (std::size_t r = rows; r < ldy; ++r) ASSERT_EQ(y[t * ldy + r], -7.0f) << "matmul_i8 wrote past the rows";
        }
      }
#if SPECDEC_DETAIL_VNNI
      for_each_family(d::i8_tile_table{}, [&](auto family) {
        std::vector<float> y(k * ldy, -7.0f);
        const d::i8_panels view = wm.i8_view();
        d::run_i8_tiles(family, d::i8_product{view, 0, wm.panels(), rows, in, k, y.data(), ldy});
        for (std::size_t t = 0; t < k; ++t) {
          for (std::size_t r = 0; r < rows; ++r) ASSERT_EQ(y[t * ldy + r], want[t * ldy + r]) << "w8a8 rows " << rows << " k " << k;
          for (std::size_t r = rows; r < ldy; ++r) ASSERT_EQ(y[t * ldy + r], -7.0f) << "w8a8 tiles wrote past the rows";
        }
      });
#endif
    }
  }
}

}  // namespace
