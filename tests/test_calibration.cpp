// Tests for include/specdec/hybrid/calibration.hpp: the budget threshold is the right
// quantile of the scores, with ties, the all-cloud and no-cloud ends, and bad input.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

#include "specdec/hybrid/calibration.hpp"

namespace {
using specdec::hybrid::calibrate_threshold;

TEST(calibrate_threshold, quantiles_and_edge_cases) {
  const std::vector<double> s{0.1, 0.9, 0.5, 0.7};
  EXPECT_EQ(calibrate_threshold(s, 0.5), 0.5);  // k = 2: only 0.9 and 0.7 exceed 0.5
  EXPECT_EQ(calibrate_threshold(s, 0.3), 0.7);  // k = floor(1.2) = 1: only 0.9 exceeds 0.7
  EXPECT_EQ(calibrate_threshold(s, 0.0), 0.9);  // k = 0: nothing exceeds the maximum
  EXPECT_EQ(calibrate_threshold(s, 1.0), -std::numeric_limits<double>::infinity());
  const std::vector<double> ties{1.0, 1.0, 1.0, 1.0};
  EXPECT_EQ(calibrate_threshold(ties, 0.5), 1.0);  // ties: at most, here none
  EXPECT_THROW((void)calibrate_threshold(s, 1.5), specdec::invalid_argument);
  EXPECT_THROW((void)calibrate_threshold(s, std::nan("")), specdec::invalid_argument);
  EXPECT_THROW((void)calibrate_threshold(std::vector<double>{}, 0.5), specdec::invalid_argument);
  EXPECT_THROW((void)calibrate_threshold(std::vector<double>{1.0, std::nan("")}, 0.5), specdec::invalid_argument);
}

TEST(calibrate_threshold, routes_at_most_the_budget_of_a_larger_sample) {
  // 1000 distinct scores: "cloud iff score > t" must select exactly floor(f n) of them.
  std::vector<double> s;
  for (int i = 0; i < 1000; ++i) s.push_back(std::sin(0.37 * i));
  for (double f : {0.0, 0.05, 0.333, 0.5, 0.999}) {
    const double t = calibrate_threshold(s, f);
    std::size_t above = 0;
    for (double v : s) above += v > t;
    EXPECT_EQ(above, static_cast<std::size_t>(std::floor(f * 1000 + 1e-9))) << f;
  }
}
}  // namespace
