// Tests for include/specdec/hybrid/run_ahead.hpp: the seconds per token of drafting rounds
// and of a session run ahead, computed by hand; the rule's choice on both sides of its
// threshold; bad knobs throw naming them.
#include <gtest/gtest.h>

#include <stdexcept>
#include <string>

#include "specdec/error.hpp"
#include "specdec/hybrid/run_ahead.hpp"

namespace {

using namespace specdec::hybrid;

TEST(run_ahead, expected_tokens_sums_the_acceptance_powers) {
  EXPECT_DOUBLE_EQ(expected_tokens(0, 0.5), 1.0);
  EXPECT_DOUBLE_EQ(expected_tokens(3, 0.5), 1.875);
  EXPECT_DOUBLE_EQ(expected_tokens(4, 1.0), 5.0);
  EXPECT_DOUBLE_EQ(expected_tokens(4, 0.0), 1.0);
}

TEST(run_ahead, drafting_pays_a_turnaround_and_a_step_per_round) {
  // 30 ms turnaround, a 2.5 ms step of 5 rows, 4 drafts at a = 0.5: 32.5 ms per 1.9375 tokens.
  EXPECT_DOUBLE_EQ(drafting_seconds_per_token(0.030, 0.0025, 4, 0.5), 0.0325 / 1.9375);
  // Acceptance is clamped to [0, 1]: above 1 counts as 1.
  EXPECT_DOUBLE_EQ(drafting_seconds_per_token(0.030, 0.0025, 4, 1.5), 0.0325 / 5.0);
}

TEST(run_ahead, a_session_run_ahead_gets_a_token_a_step_at_most_depth_a_turnaround) {
  EXPECT_DOUBLE_EQ(run_ahead_seconds_per_token(0.030, 0.002, 32), 0.002);   // the step bounds it
  EXPECT_DOUBLE_EQ(run_ahead_seconds_per_token(0.150, 0.002, 32), 0.150 / 32);  // the depth does
  EXPECT_DOUBLE_EQ(run_ahead_seconds_per_token(0.030, 0.002, 1), 0.030);   // one deep: a token a turnaround
}

TEST(run_ahead, the_rule_runs_ahead_only_when_it_is_device_gain_times_faster) {
  const run_ahead_rule rule{.depth = 32, .device_gain = 1.2};
  EXPECT_TRUE(rule.prefers_run_ahead(0.0120, 0.0100));
  EXPECT_FALSE(rule.prefers_run_ahead(0.0119, 0.0100));
  // Over 30 ms, 4 drafts at a = 0.7 against a 2 ms step: run ahead; at RTT 0 (a 0.3 ms
  // turnaround), drafting.
  EXPECT_TRUE(rule.prefers_run_ahead(drafting_seconds_per_token(0.0303, 0.0025, 4, 0.7),
                                     run_ahead_seconds_per_token(0.0303, 0.002, 32)));
  EXPECT_FALSE(rule.prefers_run_ahead(drafting_seconds_per_token(0.0003, 0.0025, 4, 0.7),
                                      run_ahead_seconds_per_token(0.0003, 0.002, 32)));
}

TEST(run_ahead, bad_knobs_throw_naming_them) {
  const auto message = [](const run_ahead_rule& r) {
    try {
      r.validate();
    } catch (const specdec::invalid_argument& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  EXPECT_NE(message({.depth = 0}).find("depth = 0"), std::string::npos);
  EXPECT_NE(message({.device_gain = 0.9}).find("device_gain = 0.9"), std::string::npos);
  EXPECT_NE(message({.reply = 0}).find("reply = 0"), std::string::npos);
  EXPECT_EQ(message({}), "");
}

}  // namespace
