// Tests for server/specdec_serve/batching.hpp: a verify block is held while other
// sessions' blocks are due, never longer than the documented bound (a fraction of the
// expected step, capped), never while completions have work, never for nobody; and a
// session counts as due only within `due_factor` of its measured turnaround.
#include <gtest/gtest.h>

#include <limits>
#include <string>

#include "specdec_serve/batching.hpp"

namespace {
using namespace specdec::serve;

// t(R) = 1 ms up to 8 rows, then 0.125 ms per row (linear between the points).
cost_curve knee() {
  cost_curve t;
  t.observe(1, 0.001);
  t.observe(8, 0.001);
  t.observe(16, 0.002);
  t.observe(32, 0.004);
  return t;
}

TEST(hold_seconds, holds_a_fraction_of_the_step_the_due_blocks_would_join) {
  const cost_curve t = knee();
  const hold_policy p{.hold_fraction = 0.5, .max_hold_seconds = 0.1};
  // One block of 2 rows waits, 3 more are due: the step would carry 2 + 3 * 2 = 8 rows,
  // t(8) = 1 ms, so the block may wait 0.5 ms from its arrival.
  EXPECT_DOUBLE_EQ(hold_seconds(p, t, {.ready_blocks = 1, .ready_rows = 2, .due_blocks = 3}), 0.0005);
  // ... of which 0.2 ms have passed.
  EXPECT_NEAR(hold_seconds(p, t, {.ready_blocks = 1, .ready_rows = 2, .due_blocks = 3, .oldest_wait_seconds = 0.0002}),
              0.0003, 1e-15);
  // Two blocks of 8 rows in all, 2 due at 4 rows each: 16 rows, t = 2 ms, half of it.
  EXPECT_DOUBLE_EQ(hold_seconds(p, t, {.ready_blocks = 2, .ready_rows = 8, .due_blocks = 2}), 0.001);
  // The bound spent: run now.
  EXPECT_EQ(hold_seconds(p, t, {.ready_blocks = 1, .ready_rows = 2, .due_blocks = 3, .oldest_wait_seconds = 0.0005}),
            0.0);
  EXPECT_EQ(hold_seconds(p, t, {.ready_blocks = 1, .ready_rows = 2, .due_blocks = 3, .oldest_wait_seconds = 1.0}), 0.0);
}

TEST(hold_seconds, never_longer_than_the_cap) {
  const cost_curve t = knee();
  const hold_policy p{.hold_fraction = 10.0, .max_hold_seconds = 0.003};
  // 10 * t(8) = 10 ms, capped at 3 ms.
  EXPECT_DOUBLE_EQ(hold_seconds(p, t, {.ready_blocks = 1, .ready_rows = 2, .due_blocks = 3}), 0.003);
  EXPECT_DOUBLE_EQ(hold_seconds(p, t, {.ready_blocks = 1, .ready_rows = 2, .due_blocks = 3, .oldest_wait_seconds = 0.001}),
                   0.002);
}

TEST(hold_seconds, does_not_hold_without_reason) {
  const cost_curve t = knee();
  const hold_policy p;
  EXPECT_GT(hold_seconds(p, t, {.ready_blocks = 1, .ready_rows = 2, .due_blocks = 1}), 0.0);
  // Nobody due, no block waiting, a completion in the step, holding switched off, no
  // measured curve: run now.
  EXPECT_EQ(hold_seconds(p, t, {.ready_blocks = 1, .ready_rows = 2, .due_blocks = 0}), 0.0);
  EXPECT_EQ(hold_seconds(p, t, {.ready_blocks = 0, .ready_rows = 5, .due_blocks = 3}), 0.0);
  EXPECT_EQ(hold_seconds(p, t, {.ready_blocks = 1, .ready_rows = 2, .due_blocks = 3, .completions = 1}), 0.0);
  EXPECT_EQ(hold_seconds({.hold_fraction = 0.0}, t, {.ready_blocks = 1, .ready_rows = 2, .due_blocks = 3}), 0.0);
  EXPECT_EQ(hold_seconds(p, cost_curve{}, {.ready_blocks = 1, .ready_rows = 2, .due_blocks = 3}), 0.0);
}

TEST(block_due, within_due_factor_turnarounds_of_the_last_verdict) {
  const hold_policy p{.due_factor = 2.0};
  EXPECT_TRUE(block_due(p, 0.0015, 0.001));
  EXPECT_TRUE(block_due(p, 0.002, 0.001));
  EXPECT_FALSE(block_due(p, 0.0021, 0.001));  // overdue: its device is not drafting for this server now
  EXPECT_TRUE(block_due(p, 5.0, 0.0));        // no turnaround measured yet: due
  EXPECT_FALSE(block_due({.due_factor = 0.5}, 0.0006, 0.001));
}

TEST(hold_policy, is_validated) {
  EXPECT_NO_THROW(hold_policy{}.validate());
  EXPECT_NO_THROW((hold_policy{.hold_fraction = 0.0, .max_hold_seconds = 0.0}.validate()));
  const double nan = std::numeric_limits<double>::quiet_NaN(), inf = std::numeric_limits<double>::infinity();
  for (const hold_policy bad : {hold_policy{.hold_fraction = -0.1}, hold_policy{.hold_fraction = nan},
                                hold_policy{.max_hold_seconds = -1.0}, hold_policy{.max_hold_seconds = inf},
                                hold_policy{.due_factor = 0.0}, hold_policy{.due_factor = nan}}) {
    try {
      bad.validate();
      ADD_FAILURE() << "accepted a bad hold_policy";
    } catch (const specdec::invalid_argument& e) {
      EXPECT_NE(std::string(e.what()).find("hold_policy"), std::string::npos) << e.what();
    }
  }
}

}  // namespace
