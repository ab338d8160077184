// Tests for bench/speedup_formula.hpp: the analytic speed-up model specdec-bench prints
// beside its measurements (formula_speedup, refined_speedup), against hand values, its
// limits, and the library's own implementation of the same formula
// (expected_speedup_gamma::expected_speedup, written independently as a Horner sum).
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "../bench/speedup_formula.hpp"
#include "specdec/error.hpp"
#include "specdec/fallback.hpp"

namespace {
using specdec::bench::expected_tokens_per_call;
using specdec::bench::formula_speedup;
using specdec::bench::refined_speedup;

TEST(speedup_formula, hand_values_and_limits) {
  // a = 0.8, gamma = 4, c = 0.1: (1 - 0.8^5) / 0.2 = 3.3616 tokens per call, / 1.4.
  EXPECT_NEAR(expected_tokens_per_call(0.8, 4), 3.3616, 1e-12);
  EXPECT_NEAR(formula_speedup(0.8, 4, 0.1), 3.3616 / 1.4, 1e-12);
  // Everything accepted: gamma + 1 tokens per call; nothing accepted: one.
  EXPECT_DOUBLE_EQ(expected_tokens_per_call(1.0, 5), 6.0);
  EXPECT_DOUBLE_EQ(formula_speedup(1.0, 5, 0.05), 6.0 / 1.25);
  EXPECT_DOUBLE_EQ(expected_tokens_per_call(0.0, 5), 1.0);
  EXPECT_DOUBLE_EQ(formula_speedup(0.0, 5, 0.1), 1.0 / 1.5);
  // No drafting is plain decoding; a free draft gains exactly the tokens per call.
  EXPECT_DOUBLE_EQ(formula_speedup(0.7, 0, 0.3), 1.0);
  EXPECT_DOUBLE_EQ(formula_speedup(0.7, 3, 0.0), expected_tokens_per_call(0.7, 3));
  // Continuous in a at 1 (the closed form's 0/0).
  EXPECT_NEAR(expected_tokens_per_call(1.0 - 1e-9, 4), 5.0, 1e-6);
}

TEST(speedup_formula, equals_the_librarys_expected_speedup_at_integer_gamma) {
  for (double a : {0.0, 0.1, 0.5, 0.73, 0.9, 0.999, 1.0})
    for (std::size_t g : {1u, 2u, 4u, 7u, 16u})
      for (double c : {0.0, 0.02, 0.1, 0.5})
        EXPECT_NEAR(formula_speedup(a, double(g), c), specdec::expected_speedup_gamma::expected_speedup(a, g, c), 1e-9)
            << "a " << a << ", gamma " << g << ", c " << c;
}

TEST(speedup_formula, fractional_gamma_lies_between_its_neighbours) {
  for (double a : {0.3, 0.72, 0.95}) {
    const double lo = expected_tokens_per_call(a, 3), mid = expected_tokens_per_call(a, 3.5),
                 hi = expected_tokens_per_call(a, 4);
    EXPECT_LT(lo, mid);
    EXPECT_LT(mid, hi);
  }
}

TEST(speedup_formula, refined_reads_the_block_cost_of_gamma_plus_one_tokens) {
  // block_cost[k] = cost of a k-token block in single-token forwards, k = 0..6.
  const std::vector<double> block_cost{0.0, 1.0, 1.02, 1.05, 1.08, 1.12, 1.2};
  const double a = 0.75, c = 0.08;
  // Integer gamma 3 reads block_cost[4].
  EXPECT_NEAR(refined_speedup(a, 3, c, block_cost), expected_tokens_per_call(a, 3) / (3 * c + 1.08), 1e-12);
  // Gamma 3.5 interpolates between the 4- and 5-token costs.
  EXPECT_NEAR(refined_speedup(a, 3.5, c, block_cost), expected_tokens_per_call(a, 3.5) / (3.5 * c + 1.10), 1e-12);
  // Beyond the table: the last cost.
  EXPECT_NEAR(refined_speedup(a, 20, c, block_cost), expected_tokens_per_call(a, 20) / (20 * c + 1.2), 1e-12);
  // A verify block that costs one forward whatever its size: the textbook formula.
  const std::vector<double> flat(13, 1.0);
  for (double g : {1.0, 2.5, 4.0, 11.0}) EXPECT_NEAR(refined_speedup(a, g, c, flat), formula_speedup(a, g, c), 1e-12);
  EXPECT_THROW((void)refined_speedup(a, 3, c, std::vector<double>{1.0}), specdec::invalid_argument);
}

}  // namespace
