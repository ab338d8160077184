// Tests for include/specdec/hybrid/link_monitor.hpp: the RTT EWMA and percentiles, the
// capacity read off the slope of RTT against message size (and the prior kept when the
// measurements do not show one), failures, and bad knobs.
#include <gtest/gtest.h>

#include "specdec/hybrid/link_monitor.hpp"

namespace {
using namespace specdec;

TEST(link_monitor, ewma_quantiles_and_failures) {
  hybrid::link_monitor m({.ewma_weight = 0.5, .window = 4});
  EXPECT_EQ(m.estimate().rtt_seconds, hybrid::link_estimate{}.rtt_seconds);  // the prior
  m.record(0.010, 100, 50);
  m.record(0.030, 100, 50);
  EXPECT_DOUBLE_EQ(m.rtt_ewma(), 0.020);
  EXPECT_DOUBLE_EQ(m.estimate().rtt_seconds, 0.020);
  for (double r : {0.040, 0.050, 0.060}) m.record(r, 0, 0);  // the window keeps the last 4
  EXPECT_DOUBLE_EQ(m.rtt_quantile(0.0), 0.030);
  EXPECT_DOUBLE_EQ(m.rtt_quantile(1.0), 0.060);
  EXPECT_EQ(m.bytes_up(), 200u);
  EXPECT_DOUBLE_EQ(m.goodput_bps(), 8.0 * 300 / 0.19);
  m.record_failure();
  EXPECT_EQ(m.failures(), 1u);
  EXPECT_THROW(hybrid::link_monitor({.ewma_weight = 0.0}), invalid_argument);
  EXPECT_THROW(hybrid::link_monitor({.window = 0}), invalid_argument);
  EXPECT_THROW(m.record(-1.0, 0, 0), invalid_argument);
  EXPECT_THROW((void)m.rtt_quantile(1.5), invalid_argument);
}

TEST(link_monitor, capacity_comes_from_the_slope_of_rtt_against_bytes) {
  // rtt = 30 ms + 8 b / 1 Mbit/s, with +-0.5 ms of alternating noise: the slope shows.
  hybrid::link_monitor m;
  for (int i = 0; i < 64; ++i) {
    const std::uint64_t b = 100 + 400 * static_cast<std::uint64_t>(i % 8);
    m.record(0.030 + 8.0 * static_cast<double>(b) / 1e6 + (i % 2 ? 5e-4 : -5e-4), b, 0);
  }
  EXPECT_NEAR(m.capacity_bps(), 1e6, 0.05e6);
  EXPECT_NEAR(m.estimate().up_bps, 1e6, 0.05e6);
  EXPECT_NEAR(m.estimate().down_bps, 1e6, 0.05e6);
}

TEST(link_monitor, equal_or_noise_dominated_messages_keep_the_prior_rates) {
  const hybrid::link_estimate prior{.rtt_seconds = 0.05, .up_bps = 5e6, .down_bps = 20e6};
  hybrid::link_monitor same({.prior = prior});
  for (int i = 0; i < 32; ++i) same.record(0.030 + 1e-3 * (i % 3), 40, 10);  // one size: no slope
  EXPECT_EQ(same.capacity_bps(), 0.0);
  EXPECT_EQ(same.estimate().up_bps, 5e6);
  EXPECT_EQ(same.estimate().down_bps, 20e6);
  EXPECT_NEAR(same.estimate().rtt_seconds, 0.031, 0.002);
  // Sizes vary but the RTT does not follow them (it falls): no capacity is read off.
  hybrid::link_monitor noisy({.prior = prior});
  for (int i = 0; i < 32; ++i) noisy.record(0.040 - 1e-4 * (i % 8), 20 + 10 * static_cast<std::uint64_t>(i % 8), 0);
  EXPECT_EQ(noisy.capacity_bps(), 0.0);
  EXPECT_EQ(noisy.estimate().up_bps, 5e6);
}

}  // namespace
