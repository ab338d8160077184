// Tests for server/specdec_serve/speculation.hpp: the measured step-time curve
// interpolates and extrapolates as documented, and the announced draft length follows
// the throughput rule: long drafts when a verify block is nearly free, none once the
// forward is compute-bound (so split decoding never costs the server throughput). Then
// the engine's anticipation at n* = 0: the request that follows a 0-draft verdict is
// answered from the row the engine ran ahead, with exactly the verdicts of an engine that
// does not anticipate (greedy, and sampled with a request that breaks the anticipation),
// and nothing is anticipated while drafts are announced.
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <limits>
#include <optional>
#include <string>
#include <thread>
#include <variant>
#include <vector>

#include "specdec/backend/cpu/batched_transformer.hpp"
#include "specdec_serve/engine.hpp"
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

// With a calibrated shape the online observations learn one load level: the knee stays
// where it was measured (an octave's mean seconds would draw a line across it).
TEST(cost_curve, keeps_the_calibrated_knee_and_learns_the_load_level_online) {
  cost_curve t;
  // 1 ms up to 8 rows, then 0.2 ms per row more: flat, then compute-bound.
  std::vector<std::pair<double, double>> shape;
  for (std::size_t r = 1; r <= 32; ++r)
    shape.emplace_back(static_cast<double>(r), 0.001 + 0.0002 * static_cast<double>(r > 8 ? r - 8 : 0));
  t.calibrate(shape);
  EXPECT_FALSE(t.empty());
  EXPECT_DOUBLE_EQ(t.seconds(8), 0.001);
  EXPECT_DOUBLE_EQ(t.seconds(12), 0.0018);
  EXPECT_DOUBLE_EQ(t.seconds(64), 0.0058 * 2);  // beyond the shape: proportional to rows
  // Under load forwards take 1.5x their calibrated time (one observation 2x, one 1x).
  t.observe(4, 0.002);
  t.observe(12, 0.0018);
  EXPECT_DOUBLE_EQ(t.level(), 1.5);
  for (int i = 0; i < 30; ++i) t.observe(10, 1.5 * 0.0014);
  EXPECT_NEAR(t.level(), 1.5, 1e-12);
  EXPECT_NEAR(t.seconds(8), 0.0015, 1e-12);  // the knee where it was measured
  EXPECT_NEAR(t.seconds(12), 1.5 * 0.0018, 1e-12);
  // Bucket means alone (no shape) put these 8-15-row forwards at one point, (10.0x rows,
  // 2.1 ms), and read t(8) off the line from the 4-row bucket: above the 1.5 ms measured.
  cost_curve plain;
  plain.observe(4, 0.0015);
  for (int i = 0; i < 30; ++i) plain.observe(10, 1.5 * 0.0014);
  EXPECT_GT(plain.seconds(8), 0.0017);
  // The points report the shape's rows at their current times.
  const auto p = t.points();
  EXPECT_DOUBLE_EQ(p.back().first, 32.0);
  EXPECT_NEAR(p.back().second, t.seconds(32), 1e-15);
  // Observations decay towards the recent level.
  for (int i = 0; i < 100; ++i) t.observe(6, 0.001);
  EXPECT_NEAR(t.level(), 1.0, 1e-4);
}

// Calibration timings taken while another tenant ran have bumps; each timing is made no
// slower than those of more rows, so a bump neither stays in the curve nor moves the knee.
TEST(cost_curve, calibrates_the_non_decreasing_envelope_of_its_timings) {
  std::vector<std::pair<double, double>> timings;
  for (std::size_t r = 1; r <= 32; ++r)
    timings.emplace_back(static_cast<double>(r), 0.001 + 0.0002 * static_cast<double>(r > 8 ? r - 8 : 0));
  timings[9].second *= 1.6;    // 10 rows during a burst
  timings[4].second *= 1.3;    // 5 rows too
  timings[0].second = 0.0012;  // 1 row slower than 2 (a cold first forward)
  cost_curve t;
  t.calibrate(timings);
  EXPECT_NEAR(t.seconds(10), 0.0016, 1e-12);  // no more than 11 rows
  EXPECT_NEAR(t.seconds(5), 0.001, 1e-12);
  EXPECT_NEAR(t.seconds(12), 0.0018, 1e-12);
  for (double r = 1; r < 40; r += 0.5) EXPECT_LE(t.seconds(r), t.seconds(r + 0.5)) << r;  // non-decreasing
  EXPECT_NEAR(t.seconds(1), 0.001, 1e-12);  // no more than 2 rows
}

// Timings of a kernel that runs rows in tiles of 8: 1 ms up to 8 rows, 0.6 ms more per 8
// rows after.
std::vector<std::pair<double, double>> tiled_timings() {
  std::vector<std::pair<double, double>> timings;
  for (std::size_t r = 1; r <= 32; ++r)
    timings.emplace_back(static_cast<double>(r), 0.001 + 0.0006 * static_cast<double>((r - 1) / 8));
  return timings;
}

// A kernel that runs rows in tiles of 8: 9 rows cost what 16 do. The steps stay in the
// curve, so one draft each for 4 sessions (8 rows) beats two (12 rows) as it does in the
// forwards; a convex fit across the step would price 12 rows at about 1.2 ms, not 1.6.
TEST(cost_curve, keeps_the_steps_of_a_tiled_kernel) {
  std::vector<std::pair<double, double>> timings = tiled_timings();
  timings[10].second *= 0.97;  // noise within a step stays below the next step
  cost_curve t;
  t.calibrate(timings);
  EXPECT_NEAR(t.seconds(8), 0.001, 1e-12);
  EXPECT_NEAR(t.seconds(9), 0.0016 * 0.97, 1e-12);
  EXPECT_NEAR(t.seconds(12), 0.0016, 1e-12);
  EXPECT_NEAR(t.seconds(16), 0.0016, 1e-12);
  EXPECT_NEAR(t.seconds(17), 0.0022, 1e-12);
  EXPECT_EQ(choose_draft(t, {.sessions = 4}, 0.7, 4), 1u);
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
  // A draft length must promise min_gain times n = 0's rate: at 1 session drafting
  // promises far more and stays; where its best promise is a few percent, none is announced.
  EXPECT_EQ(choose_draft(t, {.sessions = 1}, 0.7, 8, 1.2), alone);
  std::size_t drafting = 0;
  for (std::size_t s : {4u, 8u, 16u, 24u, 32u}) {
    const std::size_t n = choose_draft(t, {.sessions = static_cast<double>(s)}, 0.6, 8);
    if (n == 0) continue;
    ++drafting;
    const double gain = (static_cast<double>(s) * expected_tokens(n, 0.6)) / t.seconds(static_cast<double>(s * (n + 1))) /
                        (static_cast<double>(s) / t.seconds(static_cast<double>(s)));
    EXPECT_EQ(choose_draft(t, {.sessions = static_cast<double>(s)}, 0.6, 8, gain * 0.999), n) << s;
    EXPECT_EQ(choose_draft(t, {.sessions = static_cast<double>(s)}, 0.6, 8, gain * 1.001), 0u) << s;
  }
  EXPECT_GE(drafting, 2u);
  // Low acceptance makes drafting pointless sooner; no measurement yet = the maximum.
  EXPECT_LE(choose_draft(t, {.sessions = 4}, 0.1, 8), choose_draft(t, {.sessions = 4}, 0.9, 8));
  EXPECT_EQ(choose_draft(cost_curve{}, {.sessions = 4}, 0.7, 8), 8u);
  EXPECT_EQ(choose_draft(t, {.sessions = 1}, 0.7, 0), 0u);
}

TEST(speculation, a_drafting_session_keeps_drafting_down_to_keep_gain) {
  const cost_curve t = cpu_like();
  speculation_options o;
  o.min_gain = 1.2;
  o.keep_gain = 1.0;
  EXPECT_EQ(o.gain_threshold(0), 1.2);
  EXPECT_EQ(o.gain_threshold(1), 1.0);
  EXPECT_EQ(o.gain_threshold(8), 1.0);
  // A load whose best draft length promises between keep_gain and min_gain: a session at
  // n = 0 stays there, one drafting goes on drafting (the boundary would otherwise split
  // the sessions between the regimes).
  bool found = false;
  for (double s = 1.0; s <= 64.0 && !found; s += 0.25) {
    const std::size_t n = choose_draft(t, {.sessions = s}, 0.6, 8);
    if (n == 0) continue;
    const double gain = (s * expected_tokens(n, 0.6)) / t.seconds(s * static_cast<double>(n + 1)) / (s / t.seconds(s));
    if (gain >= o.min_gain || gain < o.keep_gain) continue;
    found = true;
    EXPECT_EQ(choose_draft(t, {.sessions = s}, 0.6, 8, o.gain_threshold(0)), 0u) << s;
    EXPECT_EQ(choose_draft(t, {.sessions = s}, 0.6, 8, o.gain_threshold(n)), n) << s;
  }
  EXPECT_TRUE(found) << "no load on the test curve promises a gain between keep_gain and min_gain";
}

TEST(speculation, a_drafting_length_changes_only_for_switch_gain) {
  cost_curve t;
  t.calibrate(tiled_timings());
  speculation_options o;
  o.switch_gain = 1.1;
  bool small = false, large = false;
  for (double s = 1.0; s <= 16.0; s += 0.25) {
    const load l{.sessions = s};
    const std::size_t n = choose_draft(t, l, 0.7, o.max_draft, o.keep_gain);
    if (n < 2) continue;
    // From one draft less (still worth keeping): the better length wins only by 10 %.
    const std::size_t last = n - 1;
    if (predicted_rate(t, l, 0.7, last) < o.keep_gain * predicted_rate(t, l, 0.7, 0)) continue;
    const double gain = predicted_rate(t, l, 0.7, n) / predicted_rate(t, l, 0.7, last);
    EXPECT_GT(gain, 1.0);
    EXPECT_EQ(o.next_draft(t, l, 0.7, last), gain >= 1.1 ? n : last) << s;
    (gain >= 1.1 ? large : small) = true;
    // From none, or with no hysteresis between lengths, n* itself.
    EXPECT_EQ(o.next_draft(t, l, 0.7, 0), choose_draft(t, l, 0.7, o.max_draft, o.min_gain)) << s;
    speculation_options free = o;
    free.switch_gain = 1.0;
    EXPECT_EQ(free.next_draft(t, l, 0.7, last), n) << s;
  }
  EXPECT_TRUE(small && large) << "the test curve should offer gains on both sides of switch_gain";
  // Drafting that no longer promises keep_gain stops whatever the last length.
  EXPECT_EQ(o.next_draft(t, {.sessions = 64}, 0.7, 3), choose_draft(t, {.sessions = 64}, 0.7, o.max_draft, o.keep_gain));
}

TEST(speculation, pools_the_acceptance_of_the_active_sessions) {
  speculation_options o;
  o.prior_acceptance = 0.6;
  o.prior_weight = 4.0;
  EXPECT_DOUBLE_EQ(pooled_acceptance({}, o), 0.6);
  const std::vector<draft_record> active{{9, 10}, {1, 10}};
  EXPECT_DOUBLE_EQ(pooled_acceptance(active, o), (10.0 + 2.4) / 24.0);
  // One rate for all: the session accepting 90 % and the one accepting 10 % are priced alike.
  const std::vector<draft_record> swapped{{1, 10}, {9, 10}};
  EXPECT_DOUBLE_EQ(pooled_acceptance(swapped, o), pooled_acceptance(active, o));
  // Many positions outweigh the prior.
  EXPECT_NEAR(pooled_acceptance(std::vector<draft_record>{{7000, 10000}}, o), 0.7, 1e-3);
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
  // 64 sessions active but each device answers 100 steps later: priced as one forward of
  // 64 (n + 1) rows the drafts look costly (compute-bound); priced as the forward of the
  // blocks that really meet they are nearly free.
  const cost_curve t = cpu_like();
  const std::vector<double> slow(64, 100 * t.seconds(128));
  const std::vector<double> fast(64, 1e-6);
  const auto priced = [&](const std::vector<double>& r) {
    return choose_draft(t, {.sessions = std::max(1.0, expected_batch(r, t.seconds(128), false))}, 0.7, 8);
  };
  EXPECT_EQ(priced(slow), choose_draft(t, {.sessions = 1}, 0.7, 8));
  EXPECT_EQ(priced(fast), choose_draft(t, {.sessions = 64}, 0.7, 8));
  EXPECT_EQ(priced(fast), 0u);
  EXPECT_GE(priced(slow), 6u);
}

TEST(speculation, prices_no_drafts_with_the_batch_undrafted_sessions_form) {
  // Four sessions per step while they draft (each waits for its device's round trip), but
  // sixteen once they send none (anticipated like completion streams): drafting would
  // pay against the batch of four, not against the batch of sixteen.
  const cost_curve t = cpu_like();
  const std::size_t priced_alike = choose_draft(t, {.sessions = 4}, 0.7, 8);
  const std::size_t priced_apart = choose_draft(t, {.sessions = 4, .undrafted_sessions = 16.0}, 0.7, 8);
  EXPECT_GE(priced_alike, 2u);
  EXPECT_EQ(priced_apart, 0u);
  // The same as pricing both regimes alike when the batches are equal.
  EXPECT_EQ(choose_draft(t, {.sessions = 4, .undrafted_sessions = 4.0}, 0.7, 8), priced_alike);
  // A smaller undrafted batch only makes drafting look better.
  EXPECT_GE(choose_draft(t, {.sessions = 16, .undrafted_sessions = 2.0}, 0.7, 8),
            choose_draft(t, {.sessions = 16}, 0.7, 8));
}

TEST(speculation, the_expected_batch_counts_each_session_by_how_often_its_device_keeps_up) {
  const std::vector<double> r{0.0005, 0.004, 0.0, 0.002};  // the third is not measured yet
  // Anticipated (n = 0): a row every max(step, turnaround).
  EXPECT_DOUBLE_EQ(expected_batch(r, 0.002, true), 1.0 + 0.5 + 1.0 + 1.0);
  // Drafting (or not anticipated): every request also waits for a step.
  EXPECT_DOUBLE_EQ(expected_batch(r, 0.002, false), 0.002 / 0.0025 + 0.002 / 0.006 + 1.0 + 0.5);
  EXPECT_DOUBLE_EQ(expected_batch({}, 0.002, true), 0.0);
}

TEST(speculation, the_devices_rate_counts_tokens_per_round_trip_when_drafting_and_a_token_a_step_run_ahead) {
  const cost_curve t = cpu_like();  // 1 row: 1.05 ms, 4 rows: 1.2 ms
  const double e = expected_tokens(3, 0.7);
  for (const double r : {0.030, 0.0005}) {
    const std::vector<double> turnaround{r}, ahead{r / 32};
    // Drafting 3: E(3, a) tokens every turnaround plus a step of 4 rows.
    EXPECT_NEAR(device_rate(t, {.sessions = 1}, 0.7, 3, turnaround, false), e / (r + 0.0012), 1e-6) << r;
    // Run 32 ahead: a token a step, at most 32 a turnaround; not anticipated: one a round.
    EXPECT_NEAR(device_rate(t, {.sessions = 1}, 0.7, 0, ahead, true), 1.0 / std::max(0.00105, r / 32), 1e-6) << r;
    EXPECT_NEAR(device_rate(t, {.sessions = 1}, 0.7, 0, turnaround, false), 1.0 / (r + 0.00105), 1e-6) << r;
  }
  // Over 30 ms the device gets about 12 times the tokens run ahead; over 0.5 ms drafting
  // gets more. Two sessions get twice one's, an empty curve nothing.
  const std::vector<double> slow{0.030}, slow_ahead{0.030 / 32}, two{0.030, 0.030};
  EXPECT_GT(device_rate(t, {.sessions = 1}, 0.7, 0, slow_ahead, true),
            10 * device_rate(t, {.sessions = 1}, 0.7, 3, slow, false));
  EXPECT_NEAR(device_rate(t, {.sessions = 1}, 0.7, 3, two, false), 2 * device_rate(t, {.sessions = 1}, 0.7, 3, slow, false),
              1e-9);
  EXPECT_EQ(device_rate(cost_curve{}, {.sessions = 1}, 0.7, 3, slow, false), 0.0);
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
  o.prior_acceptance = 0.6;
  o.busy_gap_seconds = -1;
  EXPECT_THROW(o.validate(16), specdec::invalid_argument);
  o.busy_gap_seconds = 0.001;
  o.min_gain = 0.9;  // below 1 would trade throughput for drafting
  EXPECT_THROW(o.validate(16), specdec::invalid_argument);
  o.min_gain = 1.2;
  o.keep_gain = 1.3;  // above min_gain, a drafting session would stop where a new one starts
  EXPECT_THROW(o.validate(16), specdec::invalid_argument);
  o.keep_gain = 0.95;
  EXPECT_THROW(o.validate(16), specdec::invalid_argument);
  o.keep_gain = 1.2;
  EXPECT_NO_THROW(o.validate(16));
  o.switch_gain = 0.9;  // below 1 a worse length would replace the last one
  EXPECT_THROW(o.validate(16), specdec::invalid_argument);
  o.switch_gain = 1.1;
  EXPECT_NO_THROW(o.validate(16));
  o.run_ahead = 0;
  EXPECT_THROW(o.validate(16), specdec::invalid_argument);
  o.run_ahead = specdec::hybrid::wire::limits{}.max_following + 2;  // more than a verdict carries
  EXPECT_THROW(o.validate(16), specdec::invalid_argument);
  o.run_ahead = specdec::hybrid::wire::limits{}.max_following + 1;
  EXPECT_NO_THROW(o.validate(16));
  o.run_ahead_reply = 0;
  EXPECT_THROW(o.validate(16), specdec::invalid_argument);
  o.run_ahead_reply = 4;
  o.device_gain = 0.5;
  EXPECT_THROW(o.validate(16), specdec::invalid_argument);
  o.device_gain = 1.2;
  EXPECT_NO_THROW(o.validate(16));
}

namespace wire = specdec::hybrid::wire;
using specdec::token_id;

/// An engine on stories260K (or `model_file`) announcing a fixed draft length,
/// anticipating or not, and one session on it (prefix of 3 tokens, ending at
/// `final_length` if not 0). Opened with protocol version 3 unless told otherwise:
/// anticipated one token deep; version 4 sessions run `run_ahead` tokens ahead.
struct one_session {
  specdec::cpu::batched_transformer model;
  metrics_registry metrics;
  bool anticipate;
  std::uint64_t final_length;
  std::size_t depth;     ///< tokens anticipated past a verdict
  std::size_t sent = 3;  ///< committed tokens the server was told (the prefix, then every delta)
  engine<specdec::cpu::batched_transformer> eng;
  wire::session_id id{};
  one_session(std::size_t fixed, bool anticipate_, specdec::sampling_params params = {}, std::uint64_t seed = 0,
              std::uint64_t final_length_ = 0, std::uint32_t version = 3, std::size_t run_ahead = 4,
              std::size_t run_ahead_reply = 4, const char* model_file = "stories260K.bin")
      : model(std::string(SPECDEC_MODELS_DIR) + "/" + model_file, {.threads = 1}),
        anticipate(anticipate_),
        final_length(final_length_),
        depth(version >= 4 ? run_ahead : 1),
        eng(model,
            {.model_id = "m",
             .speculation = {.fixed = fixed,
                             .calibrate = false,
                             .anticipate = anticipate_,
                             .run_ahead = run_ahead,
                             .run_ahead_reply = run_ahead_reply},
             .hold = {.hold_fraction = 0.0}},
            metrics) {
    eng.start();
    const wire::message m = eng.open(
        {.version = version, .params = params, .seed = seed, .final_length = final_length, .prefix = {1, 403, 87}}, {});
    id = std::get<wire::session_opened>(m).id;
    wait_for_forwards(1);  // the prefix's prefill step
  }
  /// One request; returns once the anticipation it leads to (if any) has run, so the
  /// next request finds it computed.
  wire::verdict round(std::uint64_t seq, std::vector<token_id> delta, std::vector<token_id> draft,
                      wire::sparse_rows q = {}) {
    const double f0 = forwards(), h0 = hits();
    const std::size_t delta_size = delta.size();
    const wire::message m =
        eng.verify(id, {}, {.seq = seq, .committed = std::move(delta), .draft = std::move(draft), .q = std::move(q)}, seq);
    const auto* v = std::get_if<wire::verdict>(&m);
    if (v == nullptr) {
      ADD_FAILURE() << "no verdict: " << wire::name_of(m);
      return {};
    }
    // A hit ran no forward of its own; the anticipation after a 0-draft verdict runs
    // `depth` (one a token), unless the device stops first (EOS, its final length).
    sent += delta_size;
    const std::size_t after = sent + v->accepted + 1 + v->following.size();
    const token_id last = v->following.empty() ? v->next : v->following.back();
    const std::size_t left = final_length > after ? final_length - after : 0;
    const std::size_t more = final_length == 0 ? depth : std::min<std::size_t>(depth, left);
    if (anticipate && v->max_draft == 0 && last != specdec::eos_token && more > 0)
      wait_for_forwards(f0 + (hits() > h0 ? 0.0 : 1.0) + static_cast<double>(more));
    return *v;
  }
  /// One request with no drafts, sent at once (no waiting for what it leads to): the
  /// tokens its verdict commits (next, then following), empty on an error reply.
  std::vector<token_id> ask(std::uint64_t seq, std::vector<token_id> delta) {
    const wire::message m = eng.verify(id, {}, {.seq = seq, .committed = std::move(delta)}, seq);
    const auto* v = std::get_if<wire::verdict>(&m);
    if (v == nullptr) {
      ADD_FAILURE() << "no verdict: " << wire::name_of(m);
      return {};
    }
    std::vector<token_id> t{v->next};
    t.insert(t.end(), v->following.begin(), v->following.end());
    return t;
  }
  /// The target's greedy continuation of the prefix, n tokens, one request a token.
  std::vector<token_id> greedy_continuation(std::size_t n) {
    std::vector<token_id> out, delta;
    for (std::uint64_t seq = 1; out.size() < n; ++seq) {
      out.push_back(round(seq, delta, {}).next);
      delta = {out.back()};
    }
    return out;
  }
  /// Waits (up to 30 s) until `n` forwards ran and the engine applied their results. A
  /// step is counted before its results are applied (so that an answer's step is counted
  /// when the answer arrives); the engine handles commands between steps, so the answer
  /// to one, a resume of no session, comes after the counted steps are applied.
  void wait_for_forwards(double n) {
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    while (forwards() < n && std::chrono::steady_clock::now() < until)
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    (void)eng.resume(wire::session_id{}, {});
  }
  double forwards() { return metrics.value("specdec_step_seconds"); }
  /// Mean wall seconds of a forward so far.
  double step_seconds() { return metrics.sum("specdec_step_seconds") / std::max(1.0, forwards()); }
  double hits() { return metrics.value("specdec_anticipations_total", "result=\"hit\""); }
  double misses() { return metrics.value("specdec_anticipations_total", "result=\"miss\""); }
};

/// An engine on stories260K announcing by `o` (blocks never held; a new session's prefix
/// waits `first_block_wait` seconds for its first block), started; `open` opens a session
/// on it with a prefix of 3 tokens.
struct bare_engine {
  specdec::cpu::batched_transformer model{std::string(SPECDEC_MODELS_DIR) + "/stories260K.bin", {.threads = 1}};
  metrics_registry metrics;
  engine<specdec::cpu::batched_transformer> eng;
  explicit bare_engine(const speculation_options& o,
                       double first_block_wait = engine_options{}.first_block_wait_seconds)
      : eng(model,
            {.model_id = "m",
             .first_block_wait_seconds = first_block_wait,
             .speculation = o,
             .hold = {.hold_fraction = 0.0}},
            metrics) {
    eng.start();
  }
  wire::session_opened open() { return std::get<wire::session_opened>(eng.open({.prefix = {1, 403, 87}}, {})); }
};

TEST(engine, a_new_sessions_prefix_waits_for_its_first_block_and_is_fed_with_it) {
  // A wait far longer than the test: the prefix (3 tokens) is not fed alone. The first
  // block then takes the whole first round: one forward of the prefix's 3 rows, where
  // without the wait the engine feeds 2 rows at once and the block's 1 row in a second.
  // No anticipation: the forwards it runs ahead after the verdict would race the counts.
  bare_engine b({.fixed = 0, .anticipate = false}, 60.0);
  const wire::session_id id = b.open().id;
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_EQ(b.metrics.value("specdec_step_seconds"), 0.0) << "the prefix was fed before its first block came";
  const wire::message r = b.eng.verify(id, {}, {.seq = 1, .committed = {}, .draft = {}}, 1);
  ASSERT_TRUE(std::holds_alternative<wire::verdict>(r)) << wire::name_of(r);
  EXPECT_EQ(b.metrics.value("specdec_step_seconds"), 1.0);
  EXPECT_EQ(b.metrics.sum("specdec_batch_rows"), 3.0);
  b.eng.stop();
}

TEST(engine, the_first_block_wait_is_checked) {
  for (const double ok : {0.0, 0.002, 3600.0}) EXPECT_NO_THROW((engine_options{.first_block_wait_seconds = ok}.validate()));
  for (const double bad : {-0.001, 3601.0, std::numeric_limits<double>::infinity(), std::nan("")})
    EXPECT_THROW((engine_options{.first_block_wait_seconds = bad}.validate()), specdec::invalid_argument) << bad;
}

TEST(engine, a_new_sessions_prefix_is_fed_alone_once_the_wait_is_over) {
  // No block comes: the engine wakes at the end of the wait (not at its 200 ms idle tick)
  // and feeds the prefix but its last token; the first block then feeds that one. No
  // anticipation, as above.
  bare_engine b({.fixed = 0, .anticipate = false}, 0.02);
  const auto t0 = std::chrono::steady_clock::now();
  const wire::session_id id = b.open().id;
  for (int i = 0; i < 1000 && b.metrics.value("specdec_step_seconds") < 1.0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  ASSERT_EQ(b.metrics.value("specdec_step_seconds"), 1.0);
  EXPECT_GE(waited, 0.02);
  EXPECT_EQ(b.metrics.sum("specdec_batch_rows"), 2.0);
  const wire::message r = b.eng.verify(id, {}, {.seq = 1, .committed = {}, .draft = {}}, 1);
  ASSERT_TRUE(std::holds_alternative<wire::verdict>(r)) << wire::name_of(r);
  EXPECT_EQ(b.metrics.sum("specdec_batch_rows"), 3.0);
  b.eng.stop();
}

TEST(speculation, the_curve_learns_only_from_forwards_that_follow_another_closely) {
  // Rounds 30 ms apart: every forward starts after the server idled. With the default gap
  // only the first (the prefix's two rows, while the curve is empty) reaches the curve; with
  // an unbounded gap all of them do.
  for (const double gap : {0.001, 1e9}) {
    bare_engine b({.fixed = 0, .calibrate = false, .busy_gap_seconds = gap, .anticipate = false});
    auto& eng = b.eng;
    auto& metrics = b.metrics;
    const wire::session_id id = b.open().id;
    std::vector<token_id> delta;
    for (std::uint64_t seq = 1; seq <= 5; ++seq) {
      std::this_thread::sleep_for(std::chrono::milliseconds(30));
      const wire::message r = eng.verify(id, {}, {.seq = seq, .committed = delta, .draft = {}}, seq);
      ASSERT_TRUE(std::holds_alternative<wire::verdict>(r)) << wire::name_of(r);
      delta = {std::get<wire::verdict>(r).next};
    }
    eng.stop();
    const double forwards = metrics.value("specdec_step_seconds");
    EXPECT_GE(forwards, 5.0);
    const auto points = eng.cost_points();
    if (gap < 1.0) {
      ASSERT_EQ(points.size(), 1u);
      EXPECT_EQ(points[0].first, 2.0);
      EXPECT_EQ(metrics.value("specdec_steps_after_idle_total"), forwards - 1);
    } else {
      EXPECT_EQ(points.size(), 2u);  // 2 rows, then 1 row per round
      EXPECT_EQ(metrics.value("specdec_steps_after_idle_total"), 0.0);
    }
  }
}

TEST(speculation, no_drafts_are_announced_before_any_round_trip_is_measured) {
  // Dynamic announcements on a curve of one point (the prefill's step; busy_gap 0 keeps
  // every later step out of it), so drafting looks free. The first verdict of the only
  // session comes before any turnaround was ever measured: 0 drafts, where over a slow
  // link a drafting round would leave the session out of the steps for a round trip. Its
  // next request measures one: then the rule announces drafts.
  bare_engine b({.fixed = std::nullopt, .calibrate = false, .busy_gap_seconds = 0.0, .anticipate = false});
  auto& eng = b.eng;
  const wire::session_opened opened = b.open();
  const wire::session_id id = opened.id;
  EXPECT_EQ(opened.max_draft, 0u);
  const wire::message r1 = eng.verify(id, {}, {.seq = 1, .committed = {}, .draft = {}}, 1);
  ASSERT_TRUE(std::holds_alternative<wire::verdict>(r1)) << wire::name_of(r1);
  EXPECT_EQ(std::get<wire::verdict>(r1).max_draft, 0u);
  EXPECT_EQ(b.metrics.value("specdec_announced_max_draft"), 0.0);
  std::this_thread::sleep_for(std::chrono::milliseconds(2));
  const wire::message r2 =
      eng.verify(id, {}, {.seq = 2, .committed = {std::get<wire::verdict>(r1).next}, .draft = {}}, 2);
  ASSERT_TRUE(std::holds_alternative<wire::verdict>(r2)) << wire::name_of(r2);
  EXPECT_GT(std::get<wire::verdict>(r2).max_draft, 0u);
  // Closed, the session leaves its turnaround behind: the next session's first verdict
  // is priced with it, as drafts.
  eng.close(id, {});
  const wire::session_id id2 = b.open().id;
  const wire::message r3 = eng.verify(id2, {}, {.seq = 1, .committed = {}, .draft = {}}, 1);
  ASSERT_TRUE(std::holds_alternative<wire::verdict>(r3)) << wire::name_of(r3);
  EXPECT_GT(std::get<wire::verdict>(r3).max_draft, 0u);
  eng.stop();
}

TEST(speculation, no_drafts_are_announced_while_the_devices_get_their_tokens_faster_without) {
  // The curve of the test above (one point: drafting looks free to the server). A device
  // that asks again 30 ms after each verdict gets E(8, a) tokens a round trip drafting and
  // a token a step run ahead: with device_gain 1.2 (the default) the announcement stays
  // 0; with the rule off it is drafts.
  for (const std::optional<double> gain : {std::optional<double>{1.2}, std::optional<double>{}}) {
    bare_engine b({.fixed = std::nullopt, .device_gain = gain, .calibrate = false, .busy_gap_seconds = 0.0});
    auto& eng = b.eng;
    const wire::session_id id = b.open().id;
    std::vector<token_id> delta;
    std::size_t announced = 0;
    for (std::uint64_t seq = 1; seq <= 3; ++seq) {
      const wire::message r = eng.verify(id, {}, {.seq = seq, .committed = delta, .draft = {}}, seq);
      ASSERT_TRUE(std::holds_alternative<wire::verdict>(r)) << wire::name_of(r);
      const auto& v = std::get<wire::verdict>(r);
      delta = {v.next};
      delta.insert(delta.end(), v.following.begin(), v.following.end());
      announced = v.max_draft;
      if (seq == 1) {
        EXPECT_EQ(announced, 0u);  // nothing measured yet
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(30));
    }
    eng.stop();
    if (gain) {
      EXPECT_EQ(announced, 0u);
    } else {
      EXPECT_GT(announced, 0u);
    }
  }
}

TEST(speculation, the_start_up_calibration_times_every_row_count_up_to_the_step_limit) {
  // Rounds over all row counts (1..32 rows, then doubling, within max_step_rows): the curve
  // is the fastest timing of each, no slower than those of more rows, from 1 row up.
  specdec::cpu::batched_transformer model{std::string(SPECDEC_MODELS_DIR) + "/stories260K.bin", {.threads = 1}};
  metrics_registry metrics;
  engine<specdec::cpu::batched_transformer> eng(
      model, {.model_id = "m", .max_step_rows = 48, .speculation = {.fixed = std::nullopt, .calibrate = true}}, metrics);
  eng.start();
  const auto points = eng.cost_points();
  eng.stop();
  ASSERT_GE(points.size(), 2u);
  EXPECT_EQ(points.front().first, 1.0);
  EXPECT_LE(points.back().first, 48.0);
  EXPECT_GE(points.back().first, 32.0);  // reaching well past the knee region
  for (std::size_t i = 1; i < points.size(); ++i) {
    EXPECT_GT(points[i].first, points[i - 1].first);
    EXPECT_GE(points[i].second, points[i - 1].second);
    if (points[i].first <= 32.0) {
      EXPECT_EQ(points[i].first, static_cast<double>(i + 1));  // every row count
    }
    EXPECT_GT(points[i].second, 0.0);
  }
}

TEST(anticipation, answers_the_request_after_a_zero_draft_verdict_from_the_row_it_ran_ahead) {
  constexpr std::uint64_t rounds = 8;
  std::vector<token_id> got[2];
  for (const bool anticipate : {true, false}) {
    one_session s(0, anticipate);
    const double f0 = s.forwards();
    std::vector<token_id> delta;
    double after_eos = 0;  // verdicts ending in EOS: the device stops, nothing is anticipated
    for (std::uint64_t seq = 1; seq <= rounds; ++seq) {
      const wire::verdict v = s.round(seq, delta, {});
      EXPECT_EQ(v.max_draft, 0u);
      EXPECT_EQ(v.accepted, 0u);
      got[anticipate ? 0 : 1].push_back(v.next);
      delta = {v.next};
      after_eos += v.next == specdec::eos_token ? 1 : 0;
    }
    if (anticipate) {
      // Every request but the first (and those after an EOS) is answered from the row
      // anticipated after the previous verdict; the answers themselves run no forward, so
      // the forwards are the first request's and one anticipation per verdict (the last
      // one wasted: no request follows it).
      const double last_eos = got[0].back() == specdec::eos_token ? 1 : 0;
      EXPECT_EQ(s.hits(), static_cast<double>(rounds - 1) - (after_eos - last_eos));
      EXPECT_EQ(s.misses(), 0.0);
      EXPECT_EQ(s.forwards() - f0, static_cast<double>(rounds + 1) - after_eos);
    } else {
      EXPECT_EQ(s.hits() + s.misses(), 0.0);
      EXPECT_EQ(s.forwards() - f0, static_cast<double>(rounds));
    }
  }
  EXPECT_EQ(got[0], got[1]);  // the target's greedy continuation either way
}

TEST(anticipation, no_row_is_anticipated_past_the_final_length_the_device_announced) {
  // Eight 0-draft rounds of a device that commits 3 + 8 tokens: told so at the open, the
  // server anticipates after every verdict but the last; not told, it computes one more
  // row, which the session's end leaves unused.
  constexpr std::uint64_t rounds = 8;
  for (const std::uint64_t final_length : {std::uint64_t{0}, 3 + rounds}) {
    one_session s(0, true, {}, 0, final_length);
    const double f0 = s.forwards();
    std::vector<token_id> delta;
    bool eos = false;
    for (std::uint64_t seq = 1; seq <= rounds && !eos; ++seq) {
      const wire::verdict v = s.round(seq, delta, {});
      delta = {v.next};
      eos = v.next == specdec::eos_token;  // the device stops: nothing is anticipated
    }
    if (eos) GTEST_SKIP() << "EOS within " << rounds << " tokens of the prefix";
    std::this_thread::sleep_for(std::chrono::milliseconds(100));  // time for a wrong anticipation to show
    const double wasted = final_length == 0 ? 1.0 : 0.0;
    EXPECT_EQ(s.hits(), static_cast<double>(rounds - 1));
    EXPECT_EQ(s.forwards() - f0, static_cast<double>(rounds) + wasted);  // the first request's, then anticipations
    s.eng.close(s.id, {});
    for (int i = 0; i < 200 && s.metrics.value("specdec_active_sessions") > 0; ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    EXPECT_EQ(s.metrics.value("specdec_anticipations_total", "result=\"unused\""), wasted) << final_length;
  }
}

TEST(anticipation, a_request_that_differs_restores_the_random_source_so_sampled_verdicts_are_unchanged) {
  // A sampling session announced 0 drafts whose device commits another token than the
  // verdict's in rounds 2 and 5 (as after continuing on its own model): those requests
  // miss the anticipation (its draw is undone), the others hit it.
  const std::vector<bool> diverge_in_round{false, true, false, false, true, false, false};
  std::vector<std::pair<std::size_t, token_id>> got[2];
  for (const bool anticipate : {true, false}) {
    one_session s(0, anticipate, {.temperature = 1.0f}, 7);
    std::vector<token_id> delta;
    std::uint64_t seq = 0;
    double hits = 0, misses = 0;  // expected: a request after a verdict other than EOS
    for (const bool diverge : diverge_in_round) {
      if (diverge) delta.back() = static_cast<token_id>(100 + 37 * seq);
      if (seq > 0 && got[anticipate ? 0 : 1].back().second != specdec::eos_token) (diverge ? misses : hits) += 1;
      const wire::verdict v = s.round(++seq, delta, {});
      got[anticipate ? 0 : 1].emplace_back(v.accepted, v.next);
      delta = {v.next};
    }
    if (anticipate) {
      EXPECT_EQ(s.hits(), hits);  // rounds 3, 4, 6 and 7 unless EOS came first
      EXPECT_EQ(s.misses(), misses);
      EXPECT_GE(misses, 1.0);
    }
  }
  EXPECT_EQ(got[0], got[1]);
}

TEST(speculation, the_announcement_binds_drafts_beyond_it_are_not_examined) {
  // Announced 0 (and, in the other session, 2), a device sends 4 drafts: the verdict is
  // that of the announced prefix of the block, whatever the drafts beyond it say.
  for (const std::size_t announced : {0u, 2u}) {
    one_session s(announced, false);
    // The target's greedy continuation of the prefix, from a session announced 0.
    one_session ref(0, false);
    std::vector<token_id> g, delta;
    for (std::uint64_t seq = 1; g.size() < 6; ++seq) {
      g.push_back(ref.round(seq, delta, {}).next);
      delta = {g.back()};
    }
    ASSERT_EQ(s.round(1, {}, {}).next, g[0]);
    // Drafts: the target's next 4 tokens with the last two made wrong: examined in full,
    // the verdict would accept 2 and correct the third.
    std::vector<token_id> draft(g.begin() + 1, g.begin() + 5);
    draft[2] = static_cast<token_id>((draft[2] + 1) % 512);
    draft[3] = static_cast<token_id>((draft[3] + 1) % 512);
    const double before = s.metrics.value("specdec_drafts_unexamined_total");
    const wire::verdict v = s.round(2, {g[0]}, draft);
    EXPECT_EQ(v.accepted, announced);  // every examined draft is the target's
    EXPECT_EQ(v.next, g[1 + announced]);
    EXPECT_EQ(s.metrics.value("specdec_drafts_unexamined_total") - before, static_cast<double>(4 - announced));
  }
}

TEST(anticipation, nothing_is_anticipated_while_drafts_are_announced) {
  one_session s(2, true);
  const double f0 = s.forwards();
  std::vector<token_id> delta;
  for (std::uint64_t seq = 1; seq <= 4; ++seq) {
    const std::vector<token_id> draft{static_cast<token_id>(40 + seq), static_cast<token_id>(41 + seq)};
    const wire::verdict v = s.round(seq, delta, draft);
    EXPECT_EQ(v.max_draft, 2u);
    delta.assign(draft.begin(), draft.begin() + static_cast<std::ptrdiff_t>(v.accepted));
    delta.push_back(v.next);
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(100));  // time for a wrongly anticipated step to show
  EXPECT_EQ(s.hits() + s.misses(), 0.0);
  EXPECT_EQ(s.forwards() - f0, 4.0);  // one per request
}

TEST(run_ahead, a_version_4_session_gets_the_tokens_decoded_ahead_with_its_next_verdict) {
  // A device that commits 3 + 1 + 2 R tokens, announced 0 drafts: its first request is
  // computed as usual; meanwhile the engine decodes R tokens ahead, which the next verdict
  // carries (next and R - 1 following), and so on to the final length. Every token costs
  // one row, as in a completion stream; none is decoded for nothing.
  constexpr std::size_t run_ahead = 4;
  constexpr std::uint64_t final_length = 3 + 1 + 2 * run_ahead;
  const std::vector<token_id> want = one_session(0, false).greedy_continuation(final_length - 3);
  if (std::ranges::count(want, specdec::eos_token) > 0) GTEST_SKIP() << "EOS within the generation";

  one_session s(0, true, {}, 0, final_length, 4, run_ahead);
  const double f0 = s.forwards();
  std::vector<token_id> got, delta;
  std::vector<std::size_t> following;
  for (std::uint64_t seq = 1; got.size() < want.size() && seq <= 8; ++seq) {
    const wire::verdict v = s.round(seq, delta, {});
    EXPECT_EQ(v.accepted, 0u);
    delta = {v.next};
    delta.insert(delta.end(), v.following.begin(), v.following.end());
    got.insert(got.end(), delta.begin(), delta.end());
    following.push_back(v.following.size());
  }
  EXPECT_EQ(got, want);
  EXPECT_EQ(following, (std::vector<std::size_t>{0, run_ahead - 1, run_ahead - 1}));
  EXPECT_EQ(s.hits(), 2.0);
  EXPECT_EQ(s.forwards() - f0, static_cast<double>(want.size()));  // one row a token
  EXPECT_EQ(s.metrics.value("specdec_run_ahead_tokens_total", "result=\"sent\""), 2.0 * (run_ahead - 1));
  std::this_thread::sleep_for(std::chrono::milliseconds(100));  // time for a row past the final length to show
  EXPECT_EQ(s.forwards() - f0, static_cast<double>(want.size()));
}

TEST(run_ahead, sampled_tokens_are_drawn_as_one_token_rounds_draw_them_even_after_a_divergence) {
  // A sampling session of version 4 runs 3 tokens ahead; in its third round the device
  // commits another token in place of the verdict's last (as after continuing on its own
  // model): that request misses, its run-ahead is discarded and its draws undone. Replayed
  // one token a round without anticipation, with the same seed and the same committed
  // tokens, the server draws every verdict token at the same position again.
  constexpr std::size_t run_ahead = 3;
  const specdec::sampling_params params{.temperature = 1.0f};
  one_session s(0, true, params, 7, 0, 4, run_ahead);
  std::vector<token_id> drawn, committed, delta;
  for (std::uint64_t seq = 1; seq <= 6; ++seq) {
    const wire::verdict v = s.round(seq, delta, {});
    delta = {v.next};
    delta.insert(delta.end(), v.following.begin(), v.following.end());
    drawn.insert(drawn.end(), delta.begin(), delta.end());
    if (seq == 3) delta.back() = static_cast<token_id>((delta.back() + 101) % 512);
    committed.insert(committed.end(), delta.begin(), delta.end());
    if (std::ranges::count(delta, specdec::eos_token) > 0) break;
  }
  EXPECT_GE(s.misses(), 1.0);
  EXPECT_GE(s.hits(), 2.0);
  EXPECT_GT(s.metrics.value("specdec_run_ahead_tokens_total", "result=\"discarded\""), 0.0);
  EXPECT_GT(drawn.size(), 6u);  // verdicts carried following tokens

  one_session ref(0, false, params, 7);
  delta.clear();
  for (std::size_t i = 0; i < drawn.size(); ++i) {
    EXPECT_EQ(ref.round(i + 1, delta, {}).next, drawn[i]) << "token " << i;
    delta = {committed[i]};
  }
}

TEST(run_ahead, a_request_waits_until_run_ahead_reply_tokens_are_decoded_ahead) {
  // A device that asks again as soon as a token is decoded ahead (as at RTT 0, where it
  // would otherwise ask for every token) gets 4 tokens a verdict: the request waits for
  // them. The last verdict carries what is left before the final length.
  constexpr std::size_t reply = 4;
  constexpr std::uint64_t final_length = 3 + 1 + 3 * reply + 2;
  const std::vector<token_id> want = one_session(0, false).greedy_continuation(final_length - 3);
  if (std::ranges::count(want, specdec::eos_token) > 0) GTEST_SKIP() << "EOS within the generation";

  one_session s(0, true, {}, 0, final_length, 4, /*run_ahead=*/16, reply);
  std::vector<token_id> got, delta;
  std::vector<std::size_t> sizes;
  for (std::uint64_t seq = 1; got.size() < want.size() && seq <= 8; ++seq) {
    delta = s.ask(seq, delta);
    ASSERT_FALSE(delta.empty());
    got.insert(got.end(), delta.begin(), delta.end());
    sizes.push_back(delta.size());
    // The verdict's step is counted: one more decodes a token ahead.
    if (got.size() < want.size()) s.wait_for_forwards(s.forwards() + 1.0);
  }
  EXPECT_EQ(got, want);
  EXPECT_EQ(sizes.front(), 1u);  // the first request is computed as it comes
  for (std::size_t i = 1; i + 1 < sizes.size(); ++i) EXPECT_GE(sizes[i], reply) << "verdict " << i;
  EXPECT_LE(sizes.size(), 5u);
}

TEST(run_ahead, a_request_near_the_final_length_waits_for_the_rest_when_the_device_is_slow_to_ask) {
  // A device whose turnaround is long (from its first verdict to its second request, the
  // run-ahead reaches its depth of 32, then the device waits 40 of its steps more, at
  // least 1 s): its third request finds the run-ahead a tail of 12 steps of kjv-big from
  // the final length, far sooner than the device's next request would come, and waits for
  // all of it. Told to reply with any token at once (`run_ahead_reply` 1), the only reason
  // to wait is the tail; without it the third verdict carries the token or two decoded by
  // then. The turnaround is counted in steps so that a slow host (a sanitizer's) keeps it.
  constexpr std::size_t run_ahead = 32, tail = 12;
  constexpr std::uint64_t final_length = 3 + 1 + run_ahead + tail;
  const std::vector<token_id> want =
      one_session(0, false, {}, 0, 0, 3, 4, 4, "kjv-big.bin").greedy_continuation(final_length - 3);
  if (std::ranges::count(want, specdec::eos_token) > 0) GTEST_SKIP() << "EOS within the generation";

  one_session s(0, true, {}, 0, final_length, 4, run_ahead, /*run_ahead_reply=*/1, "kjv-big.bin");
  std::vector<token_id> got, delta;
  std::vector<std::size_t> sizes;
  for (std::uint64_t seq = 1; seq <= 3; ++seq) {
    delta = s.ask(seq, delta);
    ASSERT_FALSE(delta.empty());
    got.insert(got.end(), delta.begin(), delta.end());
    sizes.push_back(delta.size());
    if (seq == 1) {
      s.wait_for_forwards(s.forwards() + static_cast<double>(run_ahead));
      std::this_thread::sleep_for(std::max<std::chrono::duration<double>>(
          std::chrono::seconds(1), std::chrono::duration<double>(40.0 * s.step_seconds())));
    }
    if (seq == 2) s.wait_for_forwards(s.forwards() + 1.0);  // one token decoded ahead
  }
  EXPECT_EQ(got, want);
  EXPECT_EQ(sizes, (std::vector<std::size_t>{1, run_ahead, tail}));
}

}  // namespace
