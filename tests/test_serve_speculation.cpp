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
    const std::size_t n = choose_draft(t, {.sessions = static_cast<double>(s), .completions = 3}, 0.6, 8);
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

TEST(batch_estimate, averages_the_verify_blocks_per_step) {
  batch_estimate b;
  EXPECT_TRUE(b.empty());
  // Nothing measured: the active sessions, as many as there are (at least 1).
  EXPECT_EQ(b.for_announcement(8, 2).sessions, 8.0);
  EXPECT_EQ(b.for_announcement(8, 2).completions, 2.0);
  EXPECT_EQ(b.for_announcement(0, 0).sessions, 1.0);
  b.observe(0);  // a step without verify blocks says nothing about their batch
  EXPECT_TRUE(b.empty());
  b.observe(2);
  b.observe(4);
  EXPECT_DOUBLE_EQ(b.blocks(), 3.0);  // the first observations average plainly
  EXPECT_EQ(b.for_announcement(8, 0).sessions, 3.0);
  EXPECT_EQ(b.for_announcement(2, 0).sessions, 2.0);  // never more than are active
  for (int i = 0; i < 8; ++i) b.observe(1);
  EXPECT_NEAR(b.blocks(), (2.0 + 4.0 + 8.0) / 10.0, 1e-12);  // weights 1/n: the plain mean of the first 10
  EXPECT_NEAR(b.for_announcement(8, 0).sessions, 1.4, 1e-12);
  b.observe(30, 1.0);  // weight 1: the last step alone
  EXPECT_DOUBLE_EQ(b.blocks(), 30.0);
}

TEST(speculation, announces_for_the_batch_the_server_forms_not_the_active_count) {
  // Eight sessions active but each block runs alone: priced as one forward of 8 (n + 1)
  // rows the drafts look costly (compute-bound); priced as the forward of one block that
  // really runs they are nearly free.
  const cost_curve t = cpu_like();
  batch_estimate alone;
  for (int i = 0; i < 5; ++i) alone.observe(1);
  batch_estimate together;
  for (int i = 0; i < 5; ++i) together.observe(64);
  const std::size_t priced_alone = choose_draft(t, alone.for_announcement(64, 0), 0.7, 8);
  const std::size_t priced_together = choose_draft(t, together.for_announcement(64, 0), 0.7, 8);
  EXPECT_EQ(priced_alone, choose_draft(t, {.sessions = 1}, 0.7, 8));
  EXPECT_EQ(priced_together, choose_draft(t, {.sessions = 64}, 0.7, 8));
  EXPECT_EQ(priced_together, 0u);
  EXPECT_GE(priced_alone, 6u);
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
