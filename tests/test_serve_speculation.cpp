// Tests for server/specdec_serve/speculation.hpp: the measured step-time curve
// interpolates and extrapolates as documented, and the announced draft length follows
// the throughput rule: long drafts when a verify block is nearly free, none once the
// forward is compute-bound (so split decoding never costs the server throughput).
#include <gtest/gtest.h>

#include <cmath>

#include "specdec_serve/speculation.hpp"

namespace {
using namespace specdec::serve;

TEST(cost_curve, interpolates_and_extrapolates) {
  cost_curve t;
  EXPECT_TRUE(t.empty());
  EXPECT_EQ(t.seconds(10), 0.0);
  t.observe(4, 0.004);
  t.observe(16, 0.010);
  EXPECT_FALSE(t.empty());
  EXPECT_DOUBLE_EQ(t.seconds(1), 0.004);                  // below: the first point
  EXPECT_DOUBLE_EQ(t.seconds(10), 0.004 + 0.5 * 0.006);   // between: linear
  EXPECT_DOUBLE_EQ(t.seconds(32), 0.020);                 // above: proportional to rows
  // Repeated observations average (plainly at first, then weighted towards recent ones).
  t.observe(16, 0.020);
  EXPECT_DOUBLE_EQ(t.seconds(16), 0.015);
  t.observe(0, 1.0);  // ignored
  t.observe(8, std::nan(""));
  EXPECT_EQ(t.points().size(), 2u);
}

TEST(speculation, expected_tokens) {
  EXPECT_DOUBLE_EQ(expected_tokens(0, 0.5), 1.0);
  EXPECT_DOUBLE_EQ(expected_tokens(3, 0.5), 1.875);
  EXPECT_DOUBLE_EQ(expected_tokens(4, 1.0), 5.0);
}

// A curve of a bandwidth-bound forward turning compute-bound: 1 ms + 0.05 ms per row up
// to 32 rows, then 0.25 ms per row.
cost_curve cpu_like() {
  cost_curve t;
  for (std::size_t r = 1; r <= 512; r *= 2) {
    const double rows = static_cast<double>(r);
    t.observe(r, r <= 32 ? 0.001 + 0.00005 * rows : 0.001 + 0.00005 * 32 + 0.00025 * (rows - 32));
  }
  return t;
}

TEST(speculation, announces_long_drafts_when_verification_is_nearly_free_and_none_under_load) {
  const cost_curve t = cpu_like();
  const std::size_t alone = choose_draft(t, {.sessions = 1}, 0.7, 8);
  const std::size_t busy = choose_draft(t, {.sessions = 16}, 0.7, 8);
  const std::size_t crowded = choose_draft(t, {.sessions = 64}, 0.7, 8);
  EXPECT_GE(alone, 6u);
  EXPECT_LT(busy, alone);
  EXPECT_EQ(crowded, 0u);
  // The rule's promise: the chosen n serves at least as many tokens per second as n = 0.
  for (std::size_t s : {1u, 2u, 4u, 8u, 16u, 32u, 64u}) {
    const std::size_t n = choose_draft(t, {.sessions = s, .completions = 3}, 0.6, 8);
    const double rate_n = (static_cast<double>(s) * expected_tokens(n, 0.6) + 3) /
                          t.seconds(static_cast<double>(s * (n + 1) + 3));
    const double rate_0 = (static_cast<double>(s) + 3) / t.seconds(static_cast<double>(s + 3));
    EXPECT_GE(rate_n, rate_0) << s;
  }
  // Low acceptance makes drafting pointless sooner; no measurement yet = the maximum.
  EXPECT_LE(choose_draft(t, {.sessions = 4}, 0.1, 8), choose_draft(t, {.sessions = 4}, 0.9, 8));
  EXPECT_EQ(choose_draft(cost_curve{}, {.sessions = 4}, 0.7, 8), 8u);
  EXPECT_EQ(choose_draft(t, {.sessions = 1}, 0.7, 0), 0u);
}

TEST(speculation, options_are_validated) {
  speculation_options o;
  EXPECT_NO_THROW(o.validate(16));
  o.max_draft = 17;
  EXPECT_THROW(o.validate(16), specdec::invalid_argument);
  o.max_draft = 8;
  o.fixed = 20;
  EXPECT_THROW(o.validate(16), specdec::invalid_argument);
  o.fixed.reset();
  o.prior_acceptance = 2;
  EXPECT_THROW(o.validate(16), specdec::invalid_argument);
}

}  // namespace
