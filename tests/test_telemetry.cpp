// Tests for include/specdec/telemetry.hpp: bookkeeping invariants of generation_stats,
// merge, JSON output (checked with a small strict JSON parser written here), the printed
// summary, and scoped_timer.
#include <gtest/gtest.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <ios>
#include <limits>
#include <map>
#include <memory>
#include <numeric>
#include <random>
#include <sstream>
#include <string>
#include <stdexcept>
#include <thread>
#include <type_traits>
#include <vector>

#include <nlohmann/json.hpp>

#include "specdec/telemetry.hpp"

namespace {
using specdec::generation_stats;

// to_json's output is read back with nlohmann/json, a strict RFC 8259 parser: a syntax
// error, a NaN/inf literal or trailing garbage fails the parse.
using json = nlohmann::json;
json parse_json(const std::string& s) { return json::parse(s); }

std::vector<std::size_t> as_counts(const json& a) { return a.get<std::vector<std::size_t>>(); }

void expect_invariants(const generation_stats& s) {
  EXPECT_LE(s.draft_tokens_accepted, s.draft_tokens_proposed);
  EXPECT_EQ(std::accumulate(s.per_position_proposed.begin(), s.per_position_proposed.end(), std::size_t{0}),
            s.draft_tokens_proposed);
  EXPECT_EQ(std::accumulate(s.per_position_accepted.begin(), s.per_position_accepted.end(), std::size_t{0}),
            s.draft_tokens_accepted);
  ASSERT_EQ(s.per_position_accepted.size(), s.per_position_proposed.size());
  for (std::size_t i = 0; i < s.per_position_proposed.size(); ++i) {
    EXPECT_LE(s.per_position_accepted[i], s.per_position_proposed[i]) << "position " << i;
    if (i > 0) {
      // A block reaching position i also reached i - 1; a token kept at i means i - 1 was kept.
      EXPECT_LE(s.per_position_proposed[i], s.per_position_proposed[i - 1]);
      EXPECT_LE(s.per_position_accepted[i], s.per_position_accepted[i - 1]);
    }
  }
  EXPECT_LE(s.rollbacks, s.per_position_proposed.empty() ? 0 : s.per_position_proposed[0]);
}

// ---------------------------------------------------------------------------------------

TEST(generation_stats, record_verification_hand_computed) {
  generation_stats s;
  s.record_verification(4, 3);
  s.record_verification(4, 4);
  s.record_verification(2, 0);
  s.record_verification(3, 1);
  // proposed 4 + 4 + 2 + 3 = 13, accepted 3 + 4 + 0 + 1 = 8;
  // rollbacks: every block but (4, 4) rejected something = 3.
  EXPECT_EQ(s.draft_tokens_proposed, 13u);
  EXPECT_EQ(s.draft_tokens_accepted, 8u);
  EXPECT_EQ(s.rollbacks, 3u);
  // per position proposed: pos 0 in all 4 blocks, pos 1 in all 4, pos 2 in the blocks of
  // size 4, 4, 3 = 3, pos 3 in the two blocks of size 4.
  EXPECT_EQ(s.per_position_proposed, (std::vector<std::size_t>{4, 4, 3, 2}));
  // per position accepted: pos 0 kept where accepted >= 1 (3, 4, 1) = 3; pos 1 (3, 4) = 2;
  // pos 2 (3, 4) = 2; pos 3 (4) = 1.
  EXPECT_EQ(s.per_position_accepted, (std::vector<std::size_t>{3, 2, 2, 1}));
  EXPECT_DOUBLE_EQ(s.acceptance_rate(), 8.0 / 13.0);
  EXPECT_DOUBLE_EQ(s.position_acceptance_rate(2), 2.0 / 3.0);
  EXPECT_EQ(s.position_acceptance_rate(9), 0.0);
  expect_invariants(s);
}

TEST(generation_stats, record_verification_rejects_accepted_above_proposed) {
  generation_stats s;
  s.record_verification(2, 1);
  const generation_stats before = s;
  EXPECT_THROW(s.record_verification(2, 3), specdec::invalid_argument);
  EXPECT_EQ(s.draft_tokens_proposed, before.draft_tokens_proposed);
  EXPECT_EQ(s.per_position_proposed, before.per_position_proposed);
  s.record_verification(0, 0);  // an empty block changes nothing
  EXPECT_EQ(s.draft_tokens_proposed, 2u);
  EXPECT_EQ(s.rollbacks, 1u);
  expect_invariants(s);
}

TEST(generation_stats, invariants_hold_over_random_verifications) {
  std::mt19937 rng(42);
  generation_stats s;
  std::size_t proposed = 0, accepted = 0;
  for (int i = 0; i < 1000; ++i) {
    const std::size_t k = std::uniform_int_distribution<std::size_t>(0, 8)(rng);
    const std::size_t a = std::uniform_int_distribution<std::size_t>(0, k)(rng);
    s.record_verification(k, a);
    proposed += k;
    accepted += a;
  }
  EXPECT_EQ(s.draft_tokens_proposed, proposed);
  EXPECT_EQ(s.draft_tokens_accepted, accepted);
  EXPECT_DOUBLE_EQ(s.acceptance_rate(), double(accepted) / double(proposed));
  expect_invariants(s);
}

TEST(generation_stats, rates_are_zero_when_undefined) {
  generation_stats s;
  EXPECT_EQ(s.acceptance_rate(), 0.0);
  EXPECT_EQ(s.mean_accepted_per_target_call(), 0.0);
  EXPECT_EQ(s.tokens_per_second(), 0.0);
  s.tokens_emitted = 12;
  s.target_calls = 4;
  s.total_seconds = 0.5;
  EXPECT_DOUBLE_EQ(s.mean_accepted_per_target_call(), 3.0);  // 12 / 4
  EXPECT_DOUBLE_EQ(s.tokens_per_second(), 24.0);             // 12 / 0.5
}

// Note: GCC 12.2 with -O2 and -mavx512f (our default -march=native on AVX-512 hosts)
// miscompiles some constant vectors in gtest bodies, e.g. std::vector<std::size_t>{2, 2, 0, 0}
// is materialised as {2, 2, 2, 2} (a vpbroadcastq of the first element). The data below
// avoids that pattern; see the report accompanying this file.
generation_stats hand_filled() {
  generation_stats s;
  s.method = "bild \"fast\"\\path\n\ttab\x01 caf\xc3\xa9";  // quotes, backslash, controls, UTF-8
  s.prompt_tokens = 7;
  s.tokens_emitted = 20;
  s.record_verification(4, 2);  // proposed {1,1,1,1}, accepted {1,1,0,0}
  s.record_verification(3, 3);  // proposed {2,2,2,1}, accepted {2,2,1,0}
  s.fallbacks = 3;
  s.draft_calls = 11;
  s.target_calls = 5;
  s.draft_seconds = 0.1;
  s.target_seconds = 1.0 / 3.0;
  s.policy_seconds = 1e-7;
  s.total_seconds = 0.5;
  return s;
}

TEST(generation_stats, json_parses_with_expected_values) {
  const generation_stats s = hand_filled();
  const std::string text = s.to_json();
  json j;
  ASSERT_NO_THROW(j = parse_json(text)) << text;
  ASSERT_TRUE(j.is_object());
  EXPECT_EQ(j.at("method").get<std::string>(), s.method);  // escapes round-trip
  EXPECT_EQ(j.at("prompt_tokens").get<double>(), 7);
  EXPECT_EQ(j.at("tokens_emitted").get<double>(), 20);
  EXPECT_EQ(j.at("draft_tokens_proposed").get<double>(), 7);  // 4 + 3
  EXPECT_EQ(j.at("draft_tokens_accepted").get<double>(), 5);  // 2 + 3
  EXPECT_EQ(j.at("acceptance_rate").get<double>(), 5.0 / 7.0);
  EXPECT_EQ(j.at("mean_accepted_per_target_call").get<double>(), 4.0);  // 20 / 5
  EXPECT_EQ(as_counts(j.at("per_position_proposed")), (std::vector<std::size_t>{2, 2, 2, 1}));
  EXPECT_EQ(as_counts(j.at("per_position_accepted")), (std::vector<std::size_t>{2, 2, 1, 0}));
  const auto& rates = j.at("per_position_acceptance_rate");
  ASSERT_EQ(rates.size(), 4u);
  EXPECT_EQ(rates[0].get<double>(), 1.0);
  EXPECT_EQ(rates[3].get<double>(), 0.0);
  EXPECT_EQ(j.at("fallbacks").get<double>(), 3);
  EXPECT_EQ(j.at("rollbacks").get<double>(), 1);
  EXPECT_EQ(j.at("draft_calls").get<double>(), 11);
  EXPECT_EQ(j.at("target_calls").get<double>(), 5);
  // Doubles round-trip exactly (shortest round-trip formatting).
  EXPECT_EQ(j.at("draft_seconds").get<double>(), 0.1);
  EXPECT_EQ(j.at("target_seconds").get<double>(), 1.0 / 3.0);
  EXPECT_EQ(j.at("policy_seconds").get<double>(), 1e-7);
  EXPECT_EQ(j.at("total_seconds").get<double>(), 0.5);
  EXPECT_EQ(j.at("tokens_per_second").get<double>(), 40.0);  // 20 / 0.5
  EXPECT_EQ(j.at("first_token_seconds").get<double>(), 0.0);
  EXPECT_EQ(j.at("first_step_tokens").get<double>(), 0);
  EXPECT_EQ(j.at("decode_tokens_per_second").get<double>(), 40.0);  // no first step recorded: all of it
  EXPECT_EQ(j.size(), 22u) << text;

  generation_stats t = s;
  t.record_step_end(0.125);  // first step: all 20 tokens, nothing after it
  const json k = parse_json(t.to_json());
  EXPECT_EQ(k.at("first_token_seconds").get<double>(), 0.125);
  EXPECT_EQ(k.at("first_step_tokens").get<double>(), 20);
  EXPECT_TRUE(k.at("decode_tokens_per_second").is_null());
}

TEST(generation_stats, first_step_is_recorded_once_and_only_once_tokens_exist) {
  generation_stats s;
  EXPECT_FALSE(s.awaiting_first_step());
  s.record_step_end(0.5);  // a step that emitted nothing (e.g. the draft ran, no commit yet)
  EXPECT_EQ(s.first_step_tokens, 0u);
  EXPECT_EQ(s.first_token_seconds, 0.0);
  s.tokens_emitted = 3;  // a verification emitted three tokens at once
  EXPECT_TRUE(s.awaiting_first_step());
  s.record_step_end(0.75);
  EXPECT_FALSE(s.awaiting_first_step());
  EXPECT_EQ(s.first_step_tokens, 3u);
  EXPECT_EQ(s.first_token_seconds, 0.75);
  s.tokens_emitted = 11;
  s.record_step_end(2.0);  // later steps change nothing
  EXPECT_EQ(s.first_step_tokens, 3u);
  EXPECT_EQ(s.first_token_seconds, 0.75);
}

TEST(generation_stats, decode_rate_excludes_the_first_step) {
  generation_stats s;
  EXPECT_EQ(s.decode_tokens_per_second(), 0.0);
  s.tokens_emitted = 3;
  s.record_step_end(0.6);
  s.tokens_emitted = 10;
  s.total_seconds = 2.0;
  EXPECT_DOUBLE_EQ(s.decode_tokens_per_second(), 5.0);  // (10 - 3) / (2.0 - 0.6)
  EXPECT_DOUBLE_EQ(s.tokens_per_second(), 5.0 * 1.4 / 2.0 + 3.0 / 2.0);  // 10 / 2.0, for contrast

  // Aggregating runs aggregates the phases: (7 + 4) / (1.4 + 0.5).
  generation_stats b;
  b.tokens_emitted = 1;
  b.record_step_end(0.25);
  b.tokens_emitted = 5;
  b.total_seconds = 0.75;
  s.merge(b);
  EXPECT_EQ(s.first_step_tokens, 4u);
  EXPECT_DOUBLE_EQ(s.first_token_seconds, 0.85);
  EXPECT_DOUBLE_EQ(s.decode_tokens_per_second(), 11.0 / 1.9);

  // Nothing after the first step: undefined, reported as 0 (and null in JSON).
  generation_stats one;
  one.tokens_emitted = 4;
  one.record_step_end(0.5);
  one.total_seconds = 0.5;
  EXPECT_EQ(one.decode_tokens_per_second(), 0.0);
}

TEST(generation_stats, json_of_empty_stats_has_no_nan_or_inf) {
  generation_stats s;
  const std::string text = s.to_json();
  for (const char* bad : {"nan", "NaN", "inf", "Inf"}) EXPECT_EQ(text.find(bad), std::string::npos) << text;
  json j;
  ASSERT_NO_THROW(j = parse_json(text)) << text;
  EXPECT_TRUE(j.at("acceptance_rate").is_null());
  EXPECT_TRUE(j.at("mean_accepted_per_target_call").is_null());
  EXPECT_TRUE(j.at("tokens_per_second").is_null());
  EXPECT_EQ(j.at("per_position_proposed").size(), 0u);
  EXPECT_EQ(j.at("method").get<std::string>(), "");

  // Non-finite timings (a broken clock, a bad division upstream) become null too.
  s.total_seconds = std::numeric_limits<double>::quiet_NaN();
  s.draft_seconds = std::numeric_limits<double>::infinity();
  const std::string bad_text = s.to_json();
  ASSERT_NO_THROW(j = parse_json(bad_text)) << bad_text;
  EXPECT_TRUE(j.at("total_seconds").is_null());
  EXPECT_TRUE(j.at("draft_seconds").is_null());
  EXPECT_TRUE(j.at("tokens_per_second").is_null());
}

TEST(generation_stats, merge_adds_counts_times_and_positions) {
  generation_stats a = hand_filled();
  a.method = "bild";
  generation_stats b;
  b.method = "bild";
  b.prompt_tokens = 3;
  b.tokens_emitted = 10;
  b.record_verification(6, 5);  // longer block: positions 4 and 5 are new
  b.fallbacks = 1;
  b.draft_calls = 6;
  b.target_calls = 2;
  b.draft_seconds = 0.25;
  b.target_seconds = 0.5;
  b.policy_seconds = 0.125;
  b.total_seconds = 1.0;
  a.merge(b);
  EXPECT_EQ(a.method, "bild");
  EXPECT_EQ(a.prompt_tokens, 10u);           // 7 + 3
  EXPECT_EQ(a.tokens_emitted, 30u);          // 20 + 10
  EXPECT_EQ(a.draft_tokens_proposed, 13u);   // 7 + 6
  EXPECT_EQ(a.draft_tokens_accepted, 10u);   // 5 + 5
  // {2,2,2,1} + {1,1,1,1,1,1}; {2,2,1,0} + {1,1,1,1,1,0}
  EXPECT_EQ(a.per_position_proposed, (std::vector<std::size_t>{3, 3, 3, 2, 1, 1}));
  EXPECT_EQ(a.per_position_accepted, (std::vector<std::size_t>{3, 3, 2, 1, 1, 0}));
  EXPECT_EQ(a.fallbacks, 4u);
  EXPECT_EQ(a.rollbacks, 2u);  // 1 + 1
  EXPECT_EQ(a.draft_calls, 17u);
  EXPECT_EQ(a.target_calls, 7u);
  EXPECT_DOUBLE_EQ(a.draft_seconds, 0.35);
  EXPECT_DOUBLE_EQ(a.target_seconds, 1.0 / 3.0 + 0.5);
  EXPECT_DOUBLE_EQ(a.policy_seconds, 0.125 + 1e-7);
  EXPECT_DOUBLE_EQ(a.total_seconds, 1.5);
  expect_invariants(a);

  // Merging into a default-constructed accumulator reproduces the run.
  generation_stats total;
  total.merge(b);
  EXPECT_EQ(total.method, "bild");
  EXPECT_EQ(total.to_json(), b.to_json());

  generation_stats other;
  other.method = "speculative";
  EXPECT_THROW(total.merge(other), specdec::invalid_argument);
}

TEST(generation_stats, summary_is_readable_and_leaves_stream_flags_alone) {
  generation_stats s = hand_filled();
  s.method = "bild";
  std::ostringstream os;
  os << std::hex;
  os << s;
  const std::string text = os.str();
  EXPECT_NE(text.find("method bild"), std::string::npos) << text;
  EXPECT_NE(text.find("5/7 accepted (71.4%)"), std::string::npos) << text;
  EXPECT_NE(text.find("0:100.0%"), std::string::npos) << text;
  EXPECT_NE(text.find("5 target (4.00 tokens per target call)"), std::string::npos) << text;
  EXPECT_NE(text.find("40.0 tokens/s"), std::string::npos) << text;
  EXPECT_GE(std::count(text.begin(), text.end(), '\n'), 4) << text;
  EXPECT_EQ(text.find("first step"), std::string::npos) << text;  // not recorded: not printed
  s.tokens_emitted = 4;
  s.record_step_end(0.1);
  s.tokens_emitted = 20;
  std::ostringstream with_first;
  with_first << s;
  // 16 tokens in 0.4 s after the first step.
  EXPECT_NE(with_first.str().find("first step: 4 tokens after 0.100 s; then 40.0 tokens/s"), std::string::npos)
      << with_first.str();
  generation_stats one;
  one.tokens_emitted = 1;
  one.record_step_end(0.25);
  std::ostringstream single;
  single << one;
  EXPECT_NE(single.str().find("first step: 1 token after 0.250 s\n"), std::string::npos) << single.str();
  os.str("");
  os << 255;
  EXPECT_EQ(os.str(), "ff");  // the caller's hex flag survived

  std::ostringstream empty;
  empty << generation_stats{};
  EXPECT_EQ(empty.str().find("nan"), std::string::npos) << empty.str();
}

TEST(scoped_timer, adds_elapsed_time_on_destruction) {
  double seconds = 1.0;
  {
    specdec::scoped_timer t(seconds);
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    EXPECT_GE(t.elapsed(), 0.019);
    EXPECT_EQ(seconds, 1.0);  // nothing added until the scope ends
  }
  EXPECT_GE(seconds, 1.019);
  EXPECT_LT(seconds, 1.0 + 5.0);  // generous upper bound for a loaded machine
  const double after_first = seconds;
  { specdec::scoped_timer t(seconds); }
  EXPECT_GE(seconds, after_first);  // accumulates, never resets
  static_assert(!std::is_copy_constructible_v<specdec::scoped_timer>);
  static_assert(!std::is_move_constructible_v<specdec::scoped_timer>);
}

}  // namespace

TEST(cpu_clocks, count_this_process_and_this_thread_work) {
  const double p0 = specdec::process_cpu_seconds(), t0 = specdec::thread_cpu_seconds();
  ASSERT_GT(p0, 0.0);  // the process has run: a readable clock is never 0 here
  ASSERT_GT(t0, 0.0);
  // Work until the thread clock moves (a sleep would not move it).
  volatile double sink = 0.0;
  double t1 = t0;
  for (int i = 0; t1 <= t0 + 1e-3 && i < 1000; ++i) {
    for (int j = 0; j < 100000; ++j) sink = sink + 1e-9 * j;
    t1 = specdec::thread_cpu_seconds();
  }
  EXPECT_GT(t1, t0 + 1e-3);
  // The process clock counts this thread's work too, and neither runs backwards.
  EXPECT_GE(specdec::process_cpu_seconds() - p0, t1 - t0 - 1e-4);
}
