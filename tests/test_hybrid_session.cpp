// Tests for include/specdec/hybrid/{remote_model,session}.hpp: the virtual clock and the
// byte counters of speculative and streamed requests equal hand-computed values on a
// fixed link with fixed compute costs; greedy speculative decoding over the link gives the
// cloud's own greedy output; cloud_prefix(k) is the cloud's first k greedy tokens and the
// device's greedy continuation; an outage mid-request falls back to the device and
// completes; routes are deterministic given a seed; every arbiter's routes execute end to
// end; a segment arbiter can move a generation from the device; bad knobs throw naming
// the knob.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "specdec/backend/cpu/tokenizer.hpp"
#include "specdec/backend/cpu/transformer.hpp"
#include "specdec/decoder.hpp"
#include "specdec/hybrid/session.hpp"
#include "specdec/testing/archetypes.hpp"

namespace {

using namespace specdec::hybrid;
using specdec::generation_options;
using specdec::token_id;
using specdec::testing::markov_model;

constexpr double kTol = 1e-12;

// Fixed compute costs: a device forward of n tokens costs 1 ms + 0.1 ms n, a cloud one 2 ms + 0.5 ms n.
session_options fixed_costs() {
  session_options o;
  o.device_cost = linear_cost{.per_call = 1e-3, .per_token = 1e-4};
  o.cloud_cost = linear_cost{.per_call = 2e-3, .per_token = 5e-4};
  return o;
}

markov_model target_model() { return markov_model({.vocab = 8, .order = 2, .seed = 3}); }
markov_model draft_model(float noise = 0.0f) {
  return markov_model({.vocab = 8, .order = 2, .seed = 3, .noise_seed = 11, .noise = noise});
}

std::vector<token_id> greedy(markov_model& m, const std::vector<token_id>& prompt, std::size_t n) {
  specdec::autoregressive_decoder dec(m);
  return dec.generate(prompt, {.max_new_tokens = n, .stop_at_eos = false}).tokens;
}

generation_options no_eos(std::size_t n) { return {.max_new_tokens = n, .stop_at_eos = false}; }

// ---------------------------------------------------------------------------------------
// Hand-computed clock and bytes

// wan: RTT 15 ms, 100 Mbit/s both ways, 40 header bytes. Identical draft and target, greedy,
// gamma 3, prompt of 3 tokens, 8 new tokens: two rounds, every draft accepted.
//   probe:   device forward of 3 tokens                        1.3 ms
//   round 1: draft forwards of 3 (the probe's prompt, prepaid), 1, 1 tokens   2.2 ms
//            up 6 ids = 24 B (+40): 7.5 ms + 64*8/1e8 s
//            cloud forward of 6 tokens                         5.0 ms
//            down verdict 8 B (+40): 7.5 ms + 48*8/1e8 s      -> 4 tokens (first token here)
//   round 2: draft forwards of 2, 1, 1 tokens                  3.4 ms
//            up 4 ids = 16 B (+40): 7.5 ms + 56*8/1e8 s
//            cloud forward of 4 tokens                         4.0 ms
//            down verdict: 7.5 ms + 48*8/1e8 s                -> 4 tokens
TEST(HybridSession, SpeculativeClockAndBytesMatchHandComputation) {
  auto device = draft_model(), cloud = target_model();
  simulated_link link(link_config::wan(), 1);
  session s(device, cloud, fixed_arbiter{route::speculative(3)}, link, fixed_costs());
  const std::vector<token_id> prompt{1, 4, 5};
  const auto r = s.run(prompt, no_eos(8));

  const double up1 = 0.0075 + 64 * 8 / 1e8, down = 0.0075 + 48 * 8 / 1e8, up2 = 0.0075 + 56 * 8 / 1e8;
  EXPECT_EQ(r.tokens, greedy(cloud, prompt, 8));
  EXPECT_EQ(r.planned, route::speculative(3));
  ASSERT_EQ(r.legs.size(), 1u);
  EXPECT_NEAR(r.ttft_seconds, 1.3e-3 + 2.2e-3 + up1 + 5e-3 + down, kTol);
  EXPECT_NEAR(r.latency_seconds, 1.3e-3 + 2.2e-3 + up1 + 5e-3 + down + 3.4e-3 + up2 + 4e-3 + down, kTol);
  EXPECT_NEAR(link.now(), r.latency_seconds, kTol);
  EXPECT_EQ(r.bytes_up, 64u + 56u);
  EXPECT_EQ(r.bytes_down, 48u + 48u);
  EXPECT_EQ(r.round_trips, 2u);
  EXPECT_EQ(r.cloud_calls, 2u);
  EXPECT_EQ(r.cloud_forward_tokens, 10u);
  EXPECT_NEAR(r.device_seconds, 1.3e-3 + 2.2e-3 + 3.4e-3, kTol);
  EXPECT_NEAR(r.cloud_seconds, 9e-3, kTol);
  EXPECT_EQ(r.cloud_tokens, 8u);
  EXPECT_EQ(r.device_tokens, 0u);
  EXPECT_DOUBLE_EQ(r.bytes_per_token(), 216.0 / 8.0);
  EXPECT_DOUBLE_EQ(r.round_trips_per_token(), 0.25);
  EXPECT_FALSE(r.fell_back_to_device);
  EXPECT_EQ(r.stop_reason, "max_tokens");
  EXPECT_EQ(r.stats.draft_tokens_proposed, 6u);
  EXPECT_EQ(r.stats.draft_tokens_accepted, 6u);
  EXPECT_EQ(r.stats.target_calls, 2u);
}

// The same request with q shipped as top-4 rows (3 drafted positions per round: 3*4*6 =
// 72 B more up per round), and with device-side verification of full distributions
// (k+1 = 4 rows of 8 fp32 = 128 B down per round, ids only up).
TEST(HybridSession, PayloadModesChangeBytesAsHandComputed) {
  const std::vector<token_id> prompt{1, 4, 5};
  {
    auto device = draft_model(), cloud = target_model();
    simulated_link link(link_config::wan(), 1);
    auto o = fixed_costs();
    o.wire = {.mode = payload_mode::top_k, .site = verify_site::cloud, .top_k = 4};
    session s(device, cloud, fixed_arbiter{route::speculative(3)}, link, o);
    const auto r = s.run(prompt, no_eos(8));
    EXPECT_EQ(r.bytes_up, (24u + 72u + 40u) + (16u + 72u + 40u));
    EXPECT_EQ(r.bytes_down, 96u);
    const double up1 = 0.0075 + 136 * 8 / 1e8, up2 = 0.0075 + 128 * 8 / 1e8, down = 0.0075 + 48 * 8 / 1e8;
    EXPECT_NEAR(r.latency_seconds, 15.9e-3 + up1 + up2 + 2 * down, kTol);  // compute as above
  }
  {
    auto device = draft_model(), cloud = target_model();
    simulated_link link(link_config::wan(), 1);
    auto o = fixed_costs();
    o.wire = {.mode = payload_mode::full_distribution, .site = verify_site::device};
    session s(device, cloud, fixed_arbiter{route::speculative(3)}, link, o);
    const auto r = s.run(prompt, no_eos(8));
    EXPECT_EQ(r.bytes_up, 120u);
    EXPECT_EQ(r.bytes_down, 2u * (4u * 8u * 4u + 40u));
    EXPECT_EQ(r.tokens, greedy(cloud, prompt, 8));
  }
}

// Streaming: one upload, then the cloud runs ahead and each token arrives one downlink
// delay after the cloud produced it (pipelined), not one delay after the previous token.
//   probe 1.3 ms; up 3 ids: 7.5 ms + 52*8/1e8; cloud 3.5 ms (prompt) + 3 x 2.5 ms;
//   each token down: 7.5 ms + 44*8/1e8.
TEST(HybridSession, CloudRouteStreamsWithPipelinedDelays) {
  auto device = draft_model(), cloud = target_model();
  simulated_link link(link_config::wan(), 1);
  session s(device, cloud, fixed_arbiter{route::in_cloud()}, link, fixed_costs());
  const std::vector<token_id> prompt{1, 4, 5};
  const auto r = s.run(prompt, no_eos(4));
  const double up = 0.0075 + 52 * 8 / 1e8, down = 0.0075 + 44 * 8 / 1e8;
  EXPECT_EQ(r.tokens, greedy(cloud, prompt, 4));
  EXPECT_NEAR(r.ttft_seconds, 1.3e-3 + up + 3.5e-3 + down, kTol);
  EXPECT_NEAR(r.latency_seconds, 1.3e-3 + up + 3.5e-3 + 3 * 2.5e-3 + down, kTol);
  EXPECT_EQ(r.bytes_up, 52u);
  EXPECT_EQ(r.bytes_down, 4u * 44u);
  EXPECT_EQ(r.round_trips, 1u);
  EXPECT_EQ(r.cloud_tokens, 4u);
  EXPECT_NEAR(r.device_seconds, 1.3e-3, kTol);
}

TEST(HybridSession, DeviceRouteUsesNoLinkAndChargesDeviceCompute) {
  auto device = draft_model(0.8f), cloud = target_model();
  simulated_link link(link_config::lte(), 1);
  auto o = fixed_costs();
  o.compute.device_scale = 3.0;
  session s(device, cloud, fixed_arbiter{}, link, o);
  const std::vector<token_id> prompt{1, 4, 5};
  const auto r = s.run(prompt, no_eos(5));
  EXPECT_EQ(r.tokens, greedy(device, prompt, 5));
  // probe (3 tokens; the decoder's prefill replays it uncharged) + 4 single-token
  // forwards, each x3
  EXPECT_NEAR(r.latency_seconds, 3.0 * (1.3e-3 + 4 * 1.1e-3), kTol);
  EXPECT_NEAR(r.ttft_seconds, 3.0 * 1.3e-3, kTol);
  EXPECT_EQ(r.bytes_up + r.bytes_down + r.round_trips + r.cloud_tokens, 0u);
  EXPECT_EQ(r.device_tokens, 5u);
}

TEST(HybridSession, ProbeChargeIsOptional) {
  auto device = draft_model(), cloud = target_model();
  simulated_link link(link_config::wan(), 1);
  auto o = fixed_costs();
  o.charge_probe = false;
  session s(device, cloud, fixed_arbiter{}, link, o);
  const auto r = s.run(std::vector<token_id>{1, 4, 5}, no_eos(2));
  EXPECT_NEAR(r.latency_seconds, 1.3e-3 + 1.1e-3, kTol);
  EXPECT_GT(r.features.draft_max_prob_mean, 0.0f);
  EXPECT_EQ(r.features.prompt_tokens, 3u);
}

TEST(HybridSession, EveryRoutePaysTheProbeExactlyOnce) {
  // A probing session's request costs the probe plus what the route costs unprobed, minus
  // the device's prefill of the prompt where the route starts with one (the probe was
  // that prefill): device and speculative pay the probe instead of their prefill, cloud
  // and cloud_prefix pay it on top.
  const std::vector<token_id> prompt{1, 4, 5};
  const double probe = 1.3e-3;  // the fixed cost of one 3-token device forward
  for (const route r : {route::on_device(), route::in_cloud(), route::speculative(2), route::cloud_prefix(2)}) {
    auto device = draft_model(0.5f), cloud = target_model();
    simulated_link l1(link_config::wan(), 9), l2(link_config::wan(), 9);
    auto probed = fixed_costs(), unprobed = fixed_costs();
    unprobed.charge_probe = false;
    session s1(device, cloud, fixed_arbiter{r}, l1, probed), s2(device, cloud, fixed_arbiter{r}, l2, unprobed);
    const auto a = s1.run(prompt, no_eos(6)), b = s2.run(prompt, no_eos(6));
    EXPECT_EQ(a.tokens, b.tokens) << to_string(r.kind);
    const bool starts_on_device = r.kind == route_kind::device || r.kind == route_kind::speculative;
    EXPECT_NEAR(a.latency_seconds - b.latency_seconds, starts_on_device ? 0.0 : probe, kTol) << to_string(r.kind);
    EXPECT_NEAR(a.device_seconds - b.device_seconds, starts_on_device ? 0.0 : probe, kTol) << to_string(r.kind);
  }
}

TEST(HybridSession, ALookaheadArbiterGetsTheTrajectoryProbePaidOnce) {
  // The default confidence_arbiter reads the device's first tokens: the session runs
  // probe_trajectory for it. A greedy device route replays the probe's forwards uncharged;
  // the cloud route pays them on top of its unprobed cost: the prompt's forward plus one
  // single-token forward per look-ahead token but the last.
  const std::vector<token_id> prompt{1, 4, 5};
  const confidence_arbiter always_device{.min_max_prob = 0.0f, .max_entropy = std::numeric_limits<float>::infinity()};
  const confidence_arbiter always_cloud{.min_max_prob = 2.0f};
  for (const auto& [arb, r] : {std::pair{always_device, route::on_device()}, std::pair{always_cloud, route::in_cloud()}}) {
    auto device = draft_model(0.5f), cloud = target_model();
    simulated_link l1(link_config::wan(), 9), l2(link_config::wan(), 9);
    auto unprobed = fixed_costs();
    unprobed.charge_probe = false;
    session s1(device, cloud, arb, l1, fixed_costs());
    session s2(device, cloud, fixed_arbiter{r}, l2, unprobed);
    const auto a = s1.run(prompt, no_eos(10)), b = s2.run(prompt, no_eos(10));
    ASSERT_EQ(a.planned, r);
    EXPECT_EQ(a.tokens, b.tokens);
    ASSERT_EQ(a.features.extra.size(), trajectory_feature::count);
    const float stopped = a.features.extra[trajectory_feature::stopped_at];
    const std::size_t lookahead = stopped > 0.0f ? static_cast<std::size_t>(stopped) : trajectory_options{}.lookahead_tokens;
    const double probe = r == route::on_device() ? 0.0 : 1.3e-3 + static_cast<double>(lookahead - 1) * 1.1e-3;
    EXPECT_NEAR(a.latency_seconds - b.latency_seconds, probe, kTol) << to_string(r.kind);
    EXPECT_NEAR(a.device_seconds - b.device_seconds, probe, kTol) << to_string(r.kind);
  }
}

TEST(TimedModel, PrepaidReplayIsFreeOnceAndInOrder) {
  auto m = draft_model();
  simulated_link clock(link_config::lan(), 1);
  timed_model dev(m, clock, 1.0, linear_cost{.per_call = 1e-3, .per_token = 1e-4});
  const std::vector<token_id> p{1, 4, 5, 6};
  dev.prepay(p);
  (void)dev.forward(std::span(p).first(3));  // replays positions 0-2: free
  (void)dev.forward(std::span(p).subspan(3));  // position 3: free
  EXPECT_EQ(dev.charged_seconds(), 0.0);
  dev.truncate(0);
  (void)dev.forward(p);  // the credit is spent: charged
  EXPECT_NEAR(dev.charged_seconds(), 1.4e-3, kTol);
  dev.prepay(p);
  const std::vector<token_id> other{1, 4, 7};
  dev.truncate(0);
  (void)dev.forward(other);  // a different block ends the credit
  dev.truncate(0);
  (void)dev.forward(p);
  EXPECT_NEAR(dev.charged_seconds(), 1.4e-3 + 1.3e-3 + 1.4e-3, kTol);
}

// ---------------------------------------------------------------------------------------
// The adapters on their own

TEST(SimulatedLink, SendDownAtPipelinesAgainstTheDeviceClock) {
  simulated_link link(link_config::wan(), 1);
  link.advance(0.1);
  const double d = 0.0075 + 44 * 8 / 1e8;
  // Sent long ago: arrived before now, the clock does not move.
  auto r = link.send_down_at(0.05, 4);
  EXPECT_TRUE(r.delivered);
  EXPECT_NEAR(r.delay_seconds, d, kTol);
  EXPECT_NEAR(link.now(), 0.1, kTol);
  // Sent just before now: the clock moves to its arrival.
  (void)link.send_down_at(0.099, 4);
  EXPECT_NEAR(link.now(), 0.099 + d, kTol);
  EXPECT_EQ(link.counters().bytes_down, 88u);
  // Outage windows are checked at the send time, not at now().
  auto cfg = link_config::wan();
  cfg.outages.push_back({.start_seconds = 0.0, .end_seconds = 0.05});
  simulated_link down(cfg, 1);
  down.advance(0.2);
  EXPECT_FALSE(down.send_down_at(0.01, 4).delivered);
  EXPECT_NEAR(down.now(), 0.01 + cfg.outage_timeout_seconds, kTol);  // gave up at 1.01 > 0.2
  EXPECT_THROW((void)down.send_down_at(-1.0, 4), specdec::invalid_argument);
}

TEST(RemoteModel, VerifyModeWithoutCommittedCounterAssumesOneCommittedToken) {
  auto cloud = target_model();
  simulated_link link(link_config::lan(), 1);
  remote_model remote(cloud, link, 1.0, {.mode = payload_mode::top_k, .top_k = 2}, linear_cost{.per_call = 1e-3});
  const std::vector<token_id> block{1, 2, 3, 4};  // read as 1 committed + 3 drafts
  (void)remote.forward(block);
  EXPECT_EQ(remote.drafted_tokens(), 3u);
  EXPECT_EQ(link.counters().bytes_up, 16u + 3u * 2u * 6u + 40u);
  EXPECT_EQ(link.counters().bytes_down, 8u + 40u);
  EXPECT_EQ(remote.round_trips(), 1u);
  EXPECT_NEAR(link.now(), 0.001 + 0.001 + (16 + 36 + 40) * 8 / 1e9 + 0.001 + 48 * 8 / 1e9, kTol);
  static_assert(specdec::language_model<remote_model<markov_model>>);
  static_assert(specdec::language_model<timed_model<markov_model>>);
}

TEST(RemoteModel, StreamReopensAfterATruncate) {
  auto cloud = target_model();
  simulated_link link(link_config::lan(), 1);
  remote_model remote(cloud, link, 1.0, {}, linear_cost{.per_call = 1e-3});
  remote.set_mode(remote_mode::stream);
  const std::vector<token_id> prompt{1, 2, 3};
  (void)remote.forward(prompt);
  (void)specdec::forward_one(remote, 4);
  (void)specdec::forward_one(remote, 5);
  EXPECT_EQ(remote.round_trips(), 1u);
  EXPECT_EQ(link.counters().messages_up, 1u);
  EXPECT_EQ(link.counters().messages_down, 3u);
  remote.truncate(2);  // the stream is broken: the next forward uploads again
  (void)specdec::forward_one(remote, 6);
  EXPECT_EQ(remote.round_trips(), 2u);
  EXPECT_EQ(link.counters().messages_up, 2u);
}

TEST(StepTimeCost, InterpolatesTheMeasuredCurveAndRejectsBadPoints) {
  const step_time_cost c{.points = {{1, 1e-3}, {4, 2.5e-3}, {16, 4e-3}}};
  c.validate();
  EXPECT_NEAR(c(1, 0), 1e-3, kTol);
  EXPECT_NEAR(c(2, 50), 1.5e-3, kTol);   // linear between 1 and 4 rows
  EXPECT_NEAR(c(10, 0), 3.25e-3, kTol);  // linear between 4 and 16 rows
  EXPECT_NEAR(c(32, 0), 8e-3, kTol);     // proportional above the last point
  EXPECT_NEAR(step_time_at({{2, 3e-3}}, 1), 3e-3, kTol);  // below the first: its time
  EXPECT_EQ(step_time_at({}, 5), 0.0);
  auto expect_bad = [](step_time_cost b, const std::string& what) {
    try {
      b.validate();
      ADD_FAILURE() << "no throw for " << what;
    } catch (const specdec::invalid_argument& e) {
      EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
    }
  };
  expect_bad({}, "points is empty");
  expect_bad({.points = {{0.5, 1e-3}}}, "points[0].rows");
  expect_bad({.points = {{2, 1e-3}, {2, 2e-3}}}, "points[1].rows");
  expect_bad({.points = {{1, -1e-3}}}, "points[0].seconds");
}

TEST(RemoteModel, OpensSessionCostsOneRoundTripPerLeg) {
  auto cloud = target_model();
  link_config cfg;
  cfg.rtt_seconds = 0.010;
  cfg.up_bps = cfg.down_bps = 1e30;
  simulated_link link(cfg, 1);
  remote_model remote(cloud, link, 1.0, {.opens_session = true}, linear_cost{.per_call = 1e-3});
  const std::vector<token_id> block{1, 2, 3, 4, 5};  // 3 committed + 2 drafts
  (void)remote.forward_drafts(block, 2);
  EXPECT_EQ(remote.round_trips(), 2u);  // the open, then the verify round
  EXPECT_NEAR(link.now(), 0.010 + 0.010 + 1e-3, kTol);
  EXPECT_EQ(link.counters().bytes_up, 12u + 40u + 20u + 40u);  // 3 committed ids, then the block
  remote.truncate(4);
  (void)remote.forward_drafts(std::vector<token_id>{6, 7}, 1);  // same leg: no new open
  EXPECT_EQ(remote.round_trips(), 3u);
  remote.set_mode(remote_mode::verify);  // a new leg opens again
  (void)remote.forward_drafts(std::vector<token_id>{0}, 0);
  EXPECT_EQ(remote.round_trips(), 5u);
}

/// A stream of 3 tokens after a 3-token prompt at RTT 100 ms (no serialisation, 0.2 ms
/// per message), the cloud charged t(1) = 1 ms, t(4) = 2.5 ms, with the given request
/// overhead and per-streamed-token handling.
struct stream_of_three {
  markov_model cloud = target_model();
  simulated_link link;
  remote_model<markov_model> remote;
  explicit stream_of_three(double request_overhead = 0.0, double stream_message = 0.0)
      : link(config(request_overhead, stream_message), 1),
        remote(cloud, link, 1.0, {}, step_time_cost{.points = {{1, 1e-3}, {4, 2.5e-3}}}) {
    remote.set_mode(remote_mode::stream);
    const std::vector<token_id> prompt{1, 2, 3};
    (void)remote.forward(prompt);
    (void)specdec::forward_one(remote, 4);
    (void)specdec::forward_one(remote, 5);
  }
  static link_config config(double request_overhead, double stream_message) {
    link_config cfg;
    cfg.rtt_seconds = 0.100;
    cfg.up_bps = cfg.down_bps = 1e30;
    cfg.message_overhead_seconds = 2e-4;
    cfg.request_overhead_seconds = request_overhead;
    cfg.stream_message_seconds = stream_message;
    return cfg;
  }
};

TEST(RemoteModel, StreamChargesTheCurveAndPipelinesTokensBehindOneRoundTrip) {
  // The prompt goes up once, the cloud computes t(3) then t(1) per token, and each token
  // comes down as it is made; the last arrives rtt/2 + overhead after it was computed:
  // one RTT for the whole stream.
  stream_of_three s;
  EXPECT_NEAR(s.link.now(), (0.050 + 2e-4) + 2e-3 + 1e-3 + 1e-3 + (0.050 + 2e-4), kTol);
  EXPECT_NEAR(s.remote.charged_seconds(), 4e-3, kTol);
}

TEST(RemoteModel, EachStreamOpensOneRequestAndVerifyRoundsNone) {
  // With a 3 ms request overhead: charged once, before the prompt goes up; a broken
  // stream's new request pays it again; verify rounds never do.
  stream_of_three s(3e-3);
  EXPECT_NEAR(s.link.now(), 3e-3 + (0.050 + 2e-4) + 2e-3 + 1e-3 + 1e-3 + (0.050 + 2e-4), kTol);
  EXPECT_EQ(s.link.counters().requests, 1u);
  s.remote.truncate(2);
  (void)specdec::forward_one(s.remote, 6);
  EXPECT_EQ(s.link.counters().requests, 2u);
  s.remote.set_mode(remote_mode::verify);
  (void)s.remote.forward_drafts(std::vector<token_id>{6, 7}, 1);
  EXPECT_EQ(s.link.counters().requests, 2u);
}

TEST(RemoteModel, StreamMessagesCostTheCloudTimeInSeries) {
  // With 0.5 ms of handling per streamed token on the cloud: each token leaves 0.5 ms
  // later than the one before it would have, so the last arrives 3 * 0.5 ms later; the
  // charged compute is unchanged.
  stream_of_three s(0.0, 5e-4);
  EXPECT_NEAR(s.link.now(), (0.050 + 2e-4) + 2e-3 + 1e-3 + 1e-3 + 3 * 5e-4 + (0.050 + 2e-4), kTol);
  EXPECT_NEAR(s.remote.charged_seconds(), 4e-3, kTol);
}

// ---------------------------------------------------------------------------------------
// Run-ahead: the cloud decodes on its own clock and each verdict carries what was decoded
// by the time its request arrived.

// RTT 100 ms, 0.2 ms per message, a cloud forward of `per_forward` seconds whatever its
// size, `forwards` forwards (the prompt's, then one per token) of a session run ahead by
// `rule` in a leg of at most `max_tokens` tokens.
struct run_ahead_of {
  markov_model cloud = target_model();
  simulated_link link;
  remote_model<markov_model> remote;
  run_ahead_of(run_ahead_rule rule, std::size_t forwards, double per_forward = 0.010,
               std::size_t max_tokens = std::numeric_limits<std::size_t>::max())
      : link(stream_of_three::config(0.0, 0.0), 1), remote(cloud, link, 1.0, {}, linear_cost{.per_call = per_forward}) {
    remote.set_mode(remote_mode::run_ahead);
    remote.set_run_ahead(rule, max_tokens);
    (void)remote.forward(std::vector<token_id>{1, 2, 3});
    for (std::size_t i = 1; i < forwards; ++i) (void)specdec::forward_one(remote, static_cast<token_id>(i % 8));
  }
};

TEST(RemoteModel, RunAheadVerdictsCarryWhatWasDecodedWhenTheRequestArrived) {
  // The first round: up 50.2 ms, the forward, the verdict leaves at 60.2 ms and arrives at
  // 110.4 ms. The device's next request reaches the cloud at 160.6 ms, by when tokens 2 to
  // 11 are decoded (70.2 to 160.2 ms): one verdict carries all ten, arriving at 210.8 ms.
  run_ahead_of eleven({}, 11);
  EXPECT_NEAR(eleven.link.now(), 0.2108, kTol);
  EXPECT_EQ(eleven.remote.round_trips(), 2u);
  EXPECT_EQ(eleven.link.counters().messages_down, 2u);
  const std::size_t verdict = payload_bytes::token_ids(2) + link_config{}.header_bytes;
  EXPECT_EQ(eleven.link.counters().bytes_down, 2 * verdict + 9 * payload_bytes::token_ids(1));
  // Token 12 (done at 170.2 ms) waits for the next request: 260.0 + 0.2 ms, down at 311.2 ms.
  run_ahead_of twelve({}, 12);
  EXPECT_NEAR(twelve.link.now(), 0.3112, kTol);
  EXPECT_EQ(twelve.remote.round_trips(), 3u);
  EXPECT_NEAR(twelve.remote.charged_seconds(), 12 * 0.010, kTol);
}

TEST(RemoteModel, RunAheadStopsDepthTokensPastTheLastVerdict) {
  // Four deep: the second verdict carries tokens 2 to 5; token 6 starts when that verdict
  // leaves (160.6 ms), so the third carries 6 to 9 (leaving at 261.0 ms) and token 10 is
  // decoded from 261.0 ms and leaves with the fourth request, 361.4 ms, arriving 411.6 ms.
  // Thirty-two deep, the second verdict carries all nine.
  run_ahead_of deep4({.depth = 4}, 10), deep32({.depth = 32}, 10);
  EXPECT_NEAR(deep4.link.now(), 0.4116, kTol);
  EXPECT_EQ(deep4.remote.round_trips(), 4u);
  EXPECT_NEAR(deep32.link.now(), 0.2108, kTol);
  EXPECT_EQ(deep32.remote.round_trips(), 2u);
}

TEST(RemoteModel, ARunAheadRequestFindingTooFewTokensWaitsForThem) {
  // A 150 ms forward, longer than the round trip; 5 tokens. The first verdict leaves at
  // 200.2 ms (arriving 250.4). Answered at once (reply 1), each request waits for the next
  // token: token 2 leaves at 350.2 ms, 3 at 500.2, 4 at 650.2, 5 at 800.2, arriving 850.4
  // ms, five round trips. Waiting for 4 tokens (the default), the second request (at
  // 300.6 ms) leaves with tokens 2 to 5 at 800.2 ms: the same last arrival, two round trips.
  run_ahead_of single({.reply = 1}, 5, 0.150, 5), four({}, 5, 0.150, 5);
  EXPECT_NEAR(single.link.now(), 0.8504, kTol);
  EXPECT_EQ(single.remote.round_trips(), 5u);
  EXPECT_NEAR(four.link.now(), 0.8504, kTol);
  EXPECT_EQ(four.remote.round_trips(), 2u);
}

TEST(RemoteModel, ARunAheadRequestWaitsForTheLastTokensDueWithinItsTurnaround) {
  // 15 tokens, 10 ms a forward: the second request arrives at 160.6 ms, 100.4 ms after the
  // first verdict left, with tokens 2 to 11 decoded; the last 4 are due in 40 ms, within
  // that turnaround, so the verdict waits for token 15 (200.2 ms) and arrives at 250.4 ms.
  // Without a final length it leaves at once with ten and a third round trip carries the
  // rest (311.2 ms).
  run_ahead_of tail({}, 15, 0.010, 15), open({}, 15);
  EXPECT_NEAR(tail.link.now(), 0.2504, kTol);
  EXPECT_EQ(tail.remote.round_trips(), 2u);
  EXPECT_NEAR(open.link.now(), 0.3112, kTol);
  EXPECT_EQ(open.remote.round_trips(), 3u);
}

// Split greedy decoding of 40 tokens, 4 drafts a round, over a link of `rtt` seconds: a
// device draft forward costs 0.1 ms, a cloud forward of n rows 2 ms + 0.5 ms n.
request_result split_over(double rtt, std::optional<run_ahead_rule> rule) {
  auto device = draft_model(0.3f), cloud = target_model();
  link_config cfg;
  cfg.rtt_seconds = rtt;
  cfg.up_bps = cfg.down_bps = 1e30;
  simulated_link link(cfg, 1);
  session_options o;
  o.device_cost = linear_cost{.per_call = 1e-4};
  o.cloud_cost = linear_cost{.per_call = 2e-3, .per_token = 5e-4};
  o.charge_probe = false;
  o.run_ahead = rule;
  session s(device, cloud, fixed_arbiter{route::speculative(4)}, link, o);
  return s.execute(std::vector<token_id>{1, 2, 3}, no_eos(40), route::speculative(4));
}

TEST(HybridSession, TheServersRunAheadRuleIsModelledPerLink) {
  auto cloud = target_model();
  const auto want = greedy(cloud, {1, 2, 3}, 40);
  // 100 ms: drafting rounds give 2.3 tokens (a = 0.6) per 105 ms, run ahead a token every
  // 3.1 ms (32 per round trip): the rule runs the leg ahead, a few round trips in all.
  const request_result ahead = split_over(0.100, run_ahead_rule{}), drafting = split_over(0.100, std::nullopt);
  EXPECT_EQ(ahead.tokens, want);
  EXPECT_EQ(drafting.tokens, want);
  EXPECT_LE(ahead.round_trips, 4u);
  EXPECT_GT(drafting.round_trips, 8u);
  EXPECT_LT(ahead.latency_seconds, drafting.latency_seconds / 4);
  EXPECT_EQ(ahead.route_trace(), "speculative(4)");
  // RTT 0: drafting (2.1 ms a token) is not twice as slow as a token a 2.5 ms step: the
  // rule changes nothing.
  const request_result near = split_over(0.0, run_ahead_rule{}), plain = split_over(0.0, std::nullopt);
  EXPECT_EQ(near.tokens, want);
  EXPECT_EQ(near.round_trips, plain.round_trips);
  EXPECT_DOUBLE_EQ(near.latency_seconds, plain.latency_seconds);
}

TEST(TimedModel, ChargesScaledCostsAndTracksConfidence) {
  auto m = target_model();
  simulated_link link(link_config::lan(), 1);
  timed_model t(m, link, 3.0, linear_cost{.per_call = 1e-3, .per_token = 1e-4});
  t.track_confidence(true);
  const std::vector<token_id> block{1, 2};
  (void)t.forward(block);
  EXPECT_NEAR(link.now(), 3.0 * 1.2e-3, kTol);
  EXPECT_EQ(t.calls(), 1u);
  EXPECT_EQ(t.tokens(), 2u);
  const auto p = target_model().probabilities_after(block);
  double h = 0.0;
  for (double x : p) h -= x * std::log(x);
  EXPECT_NEAR(t.mean_max_prob(), *std::max_element(p.begin(), p.end()), 1e-5);
  EXPECT_NEAR(t.mean_entropy(), h, 1e-4);
  t.reset_confidence();
  EXPECT_EQ(t.confidence_rows(), 0u);
}

TEST(HybridSession, ArbiterSeesTheSessionBudget) {
  auto device = draft_model(), cloud = target_model();
  simulated_link link(link_config::wan(), 1);
  auto o = fixed_costs();
  o.limits.max_cloud_fraction = 0.0;  // confidence_arbiter keeps everything on the device
  session s(device, cloud, confidence_arbiter{.min_max_prob = 2.0f}, link, o);
  EXPECT_EQ(s.run(std::vector<token_id>{1, 4, 5}, no_eos(3)).planned, route::on_device());
  o.limits.max_cloud_fraction = 1.0;
  session t(device, cloud, confidence_arbiter{.min_max_prob = 2.0f}, link, o);
  EXPECT_EQ(t.run(std::vector<token_id>{1, 4, 5}, no_eos(3)).planned, route::in_cloud());
}

// ---------------------------------------------------------------------------------------
// Outputs

TEST(HybridSession, GreedySpeculativeOverLinkEqualsCloudGreedy) {
  auto device = draft_model(1.0f), cloud = target_model();
  for (const char* preset : {"lan", "lte", "degraded"}) {
    for (std::size_t gamma : {1u, 3u, 6u}) {
      simulated_link link(link_config::preset(preset), 5);
      session s(device, cloud, fixed_arbiter{route::speculative(gamma)}, link, fixed_costs());
      for (token_id start = 3; start < 7; ++start) {
        const std::vector<token_id> prompt{1, start, 6};
        const auto r = s.run(prompt, no_eos(20));
        EXPECT_EQ(r.tokens, greedy(cloud, prompt, 20)) << preset << " gamma " << gamma;
        EXPECT_FALSE(r.fell_back_to_device);
        EXPECT_GE(r.round_trips, 20u / (gamma + 1));
      }
    }
  }
}

TEST(HybridSession, CloudPrefixIsCloudHeadThenDeviceContinuation) {
  auto device = draft_model(1.5f), cloud = target_model();
  simulated_link link(link_config::lte(), 2);
  session s(device, cloud, fixed_arbiter{route::cloud_prefix(4)}, link, fixed_costs());
  const std::vector<token_id> prompt{1, 3, 6};
  const auto r = s.run(prompt, no_eos(12));
  const auto head = greedy(cloud, prompt, 4);
  auto ctx = prompt;
  ctx.insert(ctx.end(), head.begin(), head.end());
  const auto tail = greedy(device, ctx, 8);
  auto expected = head;
  expected.insert(expected.end(), tail.begin(), tail.end());
  EXPECT_EQ(r.tokens, expected);
  ASSERT_EQ(r.legs.size(), 2u);
  EXPECT_EQ(r.legs[1].kind, route_kind::device);
  EXPECT_EQ(r.cloud_tokens, 4u);
  EXPECT_EQ(r.device_tokens, 8u);
  EXPECT_EQ(r.round_trips, 1u);
  EXPECT_EQ(r.bytes_down, 4u * 44u);
}

TEST(HybridSession, StopSequenceAndEosEndTheRequestAcrossLegs) {
  auto device = draft_model(1.5f), cloud = target_model();
  const std::vector<token_id> prompt{1, 3, 6};
  const auto full = [&] {
    simulated_link link(link_config::wan(), 2);
    session s(device, cloud, fixed_arbiter{route::cloud_prefix(2)}, link, fixed_costs());
    return s.run(prompt, no_eos(12)).tokens;
  }();
  // A stop sequence spanning the cloud/device boundary (tokens 1 and 2 of the output).
  simulated_link link(link_config::wan(), 2);
  session s(device, cloud, fixed_arbiter{route::cloud_prefix(2)}, link, fixed_costs());
  auto opts = no_eos(12);
  opts.stop_sequences = {{full[1], full[2]}};
  const auto r = s.run(prompt, opts);
  EXPECT_EQ(r.stop_reason, "stop_sequence");
  ASSERT_LE(r.tokens.size(), 3u);
  EXPECT_EQ(r.tokens.back(), full[2]);
}

// ---------------------------------------------------------------------------------------
// Outage

TEST(HybridSession, OutageMidRequestFallsBackToDeviceAndCompletes) {
  auto device = draft_model(), cloud = target_model();
  auto cfg = link_config::wan();
  cfg.outages.push_back({.start_seconds = 0.02, .end_seconds = 100.0});  // after round 1 left
  simulated_link link(cfg, 1);
  session s(device, cloud, fixed_arbiter{route::speculative(3)}, link, fixed_costs());
  const std::vector<token_id> prompt{1, 4, 5};
  const auto r = s.run(prompt, no_eos(16));
  EXPECT_TRUE(r.fell_back_to_device);
  ASSERT_EQ(r.tokens.size(), 16u);
  EXPECT_EQ(r.cloud_tokens, 4u);  // round 1 (3 drafts + bonus) was committed
  EXPECT_EQ(r.device_tokens, 12u);
  ASSERT_EQ(r.legs.size(), 2u);
  EXPECT_EQ(r.legs[0].kind, route_kind::speculative);
  EXPECT_EQ(r.legs[1].kind, route_kind::device);
  const auto head = greedy(cloud, prompt, 4);
  EXPECT_TRUE(std::equal(head.begin(), head.end(), r.tokens.begin()));
  auto ctx = prompt;
  ctx.insert(ctx.end(), head.begin(), head.end());
  const auto tail = greedy(device, ctx, 12);
  EXPECT_TRUE(std::equal(tail.begin(), tail.end(), r.tokens.begin() + 4));
  EXPECT_GE(r.latency_seconds, cfg.outage_timeout_seconds);
  EXPECT_EQ(link.counters().timeouts, 1u);
  EXPECT_EQ(r.stop_reason, "max_tokens");
}

TEST(HybridSession, CloudRouteDuringOutageRunsOnDevice) {
  auto device = draft_model(0.8f), cloud = target_model();
  auto cfg = link_config::lte();
  cfg.outages.push_back({.start_seconds = 0.0, .end_seconds = 100.0});
  simulated_link link(cfg, 1);
  session s(device, cloud, fixed_arbiter{route::in_cloud()}, link, fixed_costs());
  const std::vector<token_id> prompt{1, 4, 5};
  const auto r = s.run(prompt, no_eos(6));
  EXPECT_TRUE(r.fell_back_to_device);
  EXPECT_EQ(r.tokens, greedy(device, prompt, 6));
  EXPECT_EQ(r.cloud_tokens, 0u);
  EXPECT_EQ(r.route_trace(), "cloud>device");
}

TEST(HybridSession, RemoteModelFailureLeavesCacheUntouched) {
  auto cloud = target_model();
  auto cfg = link_config::lan();
  cfg.outage_probability = 1.0;
  simulated_link link(cfg, 1);
  remote_model remote(cloud, link);
  const std::vector<token_id> block{1, 2, 3};
  EXPECT_THROW((void)remote.forward(block), link_unavailable);
  EXPECT_EQ(remote.cache_length(), 0u);
  EXPECT_EQ(remote.failures(), 1u);
  EXPECT_NEAR(link.now(), cfg.outage_timeout_seconds, kTol);
  try {
    (void)remote.forward(block);
  } catch (const specdec::error& e) {  // derives from specdec::error
    EXPECT_NE(std::string(e.what()).find("remote_model"), std::string::npos);
  }
}

// ---------------------------------------------------------------------------------------
// Determinism

std::vector<std::vector<token_id>> prompts_for_tests(std::size_t n) {
  std::vector<std::vector<token_id>> out;
  for (std::size_t i = 0; i < n; ++i)
    out.push_back({1, static_cast<token_id>(3 + i % 5), static_cast<token_id>(i % 8), static_cast<token_id>((i * 3) % 8)});
  return out;
}

TEST(HybridSession, RoutesAndResultsAreDeterministicGivenSeeds) {
  auto run_all = [](std::uint64_t arbiter_seed) {
    auto device = draft_model(0.8f), cloud = target_model();
    simulated_link link(link_config::lte(), 9);
    auto o = fixed_costs();
    o.sampling.temperature = 1.0f;
    o.seed = 4;
    session s(device, cloud, random_arbiter{.cloud_fraction = 0.5, .seed = arbiter_seed}, link, o);
    std::vector<request_result> rs;
    std::uint64_t id = 0;
    for (const auto& p : prompts_for_tests(12)) rs.push_back(s.run(p, no_eos(10), id++));
    return rs;
  };
  const auto a = run_all(7), b = run_all(7), c = run_all(8);
  std::size_t differ = 0, cloud = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].planned, b[i].planned);
    EXPECT_EQ(a[i].tokens, b[i].tokens);
    EXPECT_EQ(a[i].latency_seconds, b[i].latency_seconds);
    EXPECT_EQ(a[i].bytes_up, b[i].bytes_up);
    differ += a[i].planned != c[i].planned;
    cloud += a[i].planned.uses_cloud();
  }
  EXPECT_GT(cloud, 0u);
  EXPECT_LT(cloud, a.size());
  EXPECT_GT(differ, 0u);  // another seed routes differently
}

TEST(HybridSession, SampledSpeculativeIsReproducibleAndCountsQPayload) {
  const std::vector<token_id> prompt{1, 4, 5};
  auto once = [&] {
    auto device = draft_model(0.8f), cloud = target_model();
    simulated_link link(link_config::wan(), 3);
    auto o = fixed_costs();
    o.sampling.temperature = 1.0f;
    o.seed = 21;
    o.wire = {.mode = payload_mode::full_distribution};
    session s(device, cloud, fixed_arbiter{route::speculative(2)}, link, o);
    return s.run(prompt, no_eos(16));
  };
  const auto a = once(), b = once();
  EXPECT_EQ(a.tokens, b.tokens);
  EXPECT_EQ(a.tokens.size(), 16u);
  EXPECT_EQ(a.latency_seconds, b.latency_seconds);
  // Every round uploads 4 bytes per id plus a full q row (8 x 4 B) per drafted token.
  const std::size_t drafted = a.stats.draft_tokens_proposed;
  const std::size_t ids = a.cloud_forward_tokens;
  EXPECT_EQ(a.bytes_up, 4 * ids + 32 * drafted + 40 * a.round_trips);
}

TEST(HybridSession, ChargesTheDecodersOwnWorkWhenAsked) {
  // Forwards cost fixed virtual times; the decoder's sampling and verification around them
  // is charged as it ran, and only when asked: the same tokens, a later finish, by no more
  // than the whole run's wall time.
  const std::vector<token_id> prompt{1, 4, 5};
  auto once = [&](bool charge, double& wall) {
    auto device = draft_model(0.8f), cloud = target_model();
    simulated_link link(link_config::wan(), 3);
    auto o = fixed_costs();
    o.sampling.temperature = 1.0f;
    o.seed = 21;
    o.charge_decoder_work = charge;
    session s(device, cloud, fixed_arbiter{route::speculative(3)}, link, o);
    const auto t0 = std::chrono::steady_clock::now();
    auto r = s.run(prompt, no_eos(24));
    wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return r;
  };
  double wall_off = 0, wall_on = 0;
  const auto off = once(false, wall_off), on = once(true, wall_on);
  EXPECT_EQ(on.tokens, off.tokens);
  EXPECT_GT(on.latency_seconds, off.latency_seconds);
  EXPECT_LE(on.latency_seconds - off.latency_seconds, wall_on);
  EXPECT_EQ(on.cloud_seconds, off.cloud_seconds);  // the forwards' charges are unchanged
}

// ---------------------------------------------------------------------------------------
// Every arbiter's routes execute end to end

request_features synthetic(std::uint64_t id, float entropy) {
  return {.prompt_tokens = 4, .draft_mean_entropy = entropy, .draft_max_prob_mean = 1.0f / (1.0f + entropy),
          .draft_first_token_entropy = entropy, .predicted_length = 12, .predicted_difficulty = 0.5, .request_id = id};
}

template <class A>
A make_arbiter();
template <>
random_arbiter make_arbiter() { return {.cloud_fraction = 0.5, .seed = 3}; }
template <>
oracle_arbiter make_arbiter() { return oracle_arbiter::from_labels({1, 0, 1, 0, 0, 1, 1, 0, 1, 0}); }
template <>
confidence_arbiter make_arbiter() {
  // Thresholds for the prompt probe of these test models.
  return {.min_max_prob = 0.0f, .max_entropy = 1.2f, .max_first_token_entropy = 0.9f, .prefix_tokens = 3,
          .read_lookahead = false};
}
template <>
latency_arbiter make_arbiter() {
  return {.costs = {.t_device_per_token = 0.02, .t_cloud_per_token = 0.002, .cloud_prefill_seconds_per_token = 1e-4}};
}
template <>
logistic_arbiter make_arbiter() {
  logistic_arbiter a;
  std::vector<request_features> f;
  std::vector<int> y;
  for (int i = 0; i < 40; ++i) {
    const float e = 0.2f + 0.05f * static_cast<float>(i);
    f.push_back(synthetic(static_cast<std::uint64_t>(i), e));
    y.push_back(e < 1.2f ? 1 : 0);
  }
  a.train(f, y, 300);
  return a;
}
template <>
fixed_arbiter make_arbiter() { return {route::speculative(3)}; }

template <class A>
class ArbiterSession : public ::testing::Test {};
using arbiter_types =
    ::testing::Types<random_arbiter, oracle_arbiter, confidence_arbiter, latency_arbiter, logistic_arbiter, fixed_arbiter>;
TYPED_TEST_SUITE(ArbiterSession, arbiter_types);

TYPED_TEST(ArbiterSession, RoutesExecuteEndToEnd) {
  auto device = draft_model(1.0f), cloud = target_model();
  simulated_link link(link_config::wan(), 4);
  session s(device, cloud, make_arbiter<TypeParam>(), link, fixed_costs(), constant_length_predictor{.length = 12});
  std::vector<request_result> results;
  std::uint64_t id = 0;
  for (const auto& p : prompts_for_tests(10)) results.push_back(s.run(p, no_eos(12), id++));
  // Plus every route forced, so each arbiter's session runs each kind.
  for (route r : {route::on_device(), route::in_cloud(), route::speculative(2), route::cloud_prefix(3)})
    results.push_back(s.execute(std::vector<token_id>{1, 5, 2}, no_eos(12), r));
  std::size_t i = 0;
  for (const auto& r : results) {
    const auto& p = i < 10 ? prompts_for_tests(10)[i] : std::vector<token_id>{1, 5, 2};
    ++i;
    ASSERT_EQ(r.tokens.size(), 12u);
    EXPECT_EQ(r.cloud_tokens + r.device_tokens, 12u);
    EXPECT_GT(r.latency_seconds, 0.0);
    EXPECT_LE(r.ttft_seconds, r.latency_seconds);
    EXPECT_FALSE(r.fell_back_to_device);
    switch (r.planned.kind) {
      case route_kind::device:
        EXPECT_EQ(r.tokens, greedy(device, p, 12));
        EXPECT_EQ(r.bytes_up + r.bytes_down + r.round_trips, 0u);
        break;
      case route_kind::cloud:
      case route_kind::speculative:
        EXPECT_EQ(r.tokens, greedy(cloud, p, 12));
        EXPECT_GT(r.bytes_up, 0u);
        EXPECT_GE(r.round_trips, 1u);
        break;
      case route_kind::cloud_prefix: {
        const auto head = greedy(cloud, p, r.planned.prefix_tokens);
        EXPECT_TRUE(std::equal(head.begin(), head.end(), r.tokens.begin()));
        EXPECT_EQ(r.cloud_tokens, r.planned.prefix_tokens);
        break;
      }
    }
  }
}

// ---------------------------------------------------------------------------------------
// Per-segment hook

/// Starts on the device and moves to speculation at the first segment boundary.
struct escalate_after_segment {
  std::vector<segment_state>* seen = nullptr;
  route decide(const request_features&, const link_estimate&, const budget&) const { return route::on_device(); }
  route on_segment(const segment_state& s) const {
    seen->push_back(s);
    return s.current.kind == route_kind::device ? route::speculative(2) : s.current;
  }
  void validate() const {}
};
static_assert(segment_arbiter<escalate_after_segment>);

TEST(HybridSession, SegmentArbiterEscalatesFromDevice) {
  auto device = draft_model(1.5f), cloud = target_model();
  simulated_link link(link_config::wan(), 4);
  std::vector<segment_state> seen;
  auto o = fixed_costs();
  o.segment_tokens = 5;
  session s(device, cloud, escalate_after_segment{&seen}, link, o);
  const std::vector<token_id> prompt{1, 3, 6};
  const auto r = s.run(prompt, no_eos(14));
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0].tokens_so_far, 5u);
  EXPECT_GT(seen[0].recent_max_prob_mean, 0.0f);
  EXPECT_LE(seen[0].recent_max_prob_mean, 1.0f);
  EXPECT_GT(seen[0].recent_mean_entropy, 0.0f);
  EXPECT_EQ(r.route_trace(), "device>speculative(2)");
  EXPECT_EQ(r.segment_switches, 1u);
  const auto head = greedy(device, prompt, 5);
  auto ctx = prompt;
  ctx.insert(ctx.end(), head.begin(), head.end());
  const auto tail = greedy(cloud, ctx, 9);
  auto expected = head;
  expected.insert(expected.end(), tail.begin(), tail.end());
  EXPECT_EQ(r.tokens, expected);
  EXPECT_EQ(r.device_tokens, 5u);
  EXPECT_EQ(r.cloud_tokens, 9u);
}

TEST(HybridSession, ConfidenceArbiterSegmentHookHandsUnconfidentGenerationToCloud) {
  auto device = draft_model(1.5f), cloud = target_model();
  simulated_link link(link_config::wan(), 4);
  auto o = fixed_costs();
  o.segment_tokens = 4;
  // decide() sees the prompt probe and keeps the device; on_segment() needs 0.999 max-prob.
  confidence_arbiter a{.min_max_prob = 0.0f, .max_entropy = std::numeric_limits<float>::infinity()};
  session s(device, cloud, a, link, o);
  s.arbiter().min_max_prob = 0.999f;  // (decide uses the same rule: route the probe first)
  const std::vector<token_id> prompt{1, 3, 6};
  auto f = s.features(prompt);
  const auto r = s.execute(prompt, no_eos(12), route::on_device(), f);
  EXPECT_EQ(r.route_trace(), "device>cloud");
  EXPECT_EQ(r.device_tokens, 4u);
  EXPECT_EQ(r.cloud_tokens, 8u);
}

// ---------------------------------------------------------------------------------------
// Knobs

TEST(HybridSession, BadKnobsThrowNamingTheKnob) {
  auto device = draft_model(), cloud = target_model();
  simulated_link link(link_config::wan(), 1);
  auto expect_msg = [](auto&& f, const char* knob) {
    try {
      f();
      ADD_FAILURE() << "no throw for " << knob;
    } catch (const specdec::invalid_argument& e) {
      EXPECT_NE(std::string(e.what()).find(knob), std::string::npos) << e.what();
    }
  };
  expect_msg([] { wire_format{.mode = payload_mode::top_k, .top_k = 0}.validate(); }, "wire_format.top_k");
  expect_msg([&] { session_options o; o.compute.device_scale = 0; session s(device, cloud, fixed_arbiter{}, link, o); },
             "compute_model.device_scale");
  expect_msg([&] { session s(device, cloud, fixed_arbiter{route::speculative(0)}, link); }, "fixed_arbiter.fixed.gamma");
  expect_msg([&] { timed_model t(device, link, -1.0); }, "timed_model scale");
  expect_msg([&] { session s(device, device, fixed_arbiter{}, link); }, "same object");
  expect_msg([&] {
    session s(device, cloud, fixed_arbiter{}, link);
    (void)s.execute(std::vector<token_id>{1}, no_eos(4), route::cloud_prefix(0));
  }, "prefix_tokens");
  expect_msg([&] { session_options o; o.sampling.temperature = -1; o.validate(); }, "sampling_params.temperature");
  expect_msg([&] { session_options o; o.run_ahead = run_ahead_rule{}; o.validate(); }, "cloud_cost");
  expect_msg([&] { session_options o; o.run_ahead_acceptance = 1.5; o.validate(); }, "run_ahead_acceptance");
  expect_msg([&] {
    session_options o = fixed_costs();
    o.run_ahead = run_ahead_rule{.depth = 0};
    o.validate();
  }, "depth = 0");
  expect_msg([&] { remote_model<markov_model> r(cloud, link); r.set_run_ahead({.reply = 0}); }, "reply = 0");
  markov_model small({.vocab = 5});
  EXPECT_THROW((session(device, small, fixed_arbiter{}, link)), specdec::vocabulary_mismatch);
}

// ---------------------------------------------------------------------------------------
// The KJV pair

std::string model_path(const char* name) { return std::string(SPECDEC_MODELS_DIR) + "/" + name; }

TEST(HybridSessionKjv, SpeculativeAndPrefixOnRealModels) {
  specdec::cpu::transformer little(model_path("kjv-little.bin")), big(model_path("kjv-big.bin"));
  specdec::cpu::tokenizer tok(model_path("kjv2k-tokenizer.bin"), little.vocab_size());
  const auto prompt = tok.encode("And the LORD said unto Noah, Come thou");
  simulated_link link(link_config::lte(), 1);
  session s(little, big, fixed_arbiter{route::speculative(4)}, link,
            {.compute = {.device_scale = 3.0, .cloud_scale = 0.5}});
  const auto r = s.run(prompt, {.max_new_tokens = 12});
  specdec::autoregressive_decoder big_dec(big), little_dec(little);
  const auto big_out = big_dec.generate(prompt, {.max_new_tokens = 12}).tokens;
  EXPECT_EQ(r.tokens, big_out);
  EXPECT_GT(r.latency_seconds, 0.0);
  EXPECT_GT(r.features.draft_max_prob_mean, 0.0f);

  const auto p = s.execute(prompt, {.max_new_tokens = 12}, route::cloud_prefix(3));
  ASSERT_EQ(p.tokens.size(), 12u);
  EXPECT_TRUE(std::equal(big_out.begin(), big_out.begin() + 3, p.tokens.begin()));
  auto ctx = prompt;
  ctx.insert(ctx.end(), big_out.begin(), big_out.begin() + 3);
  const auto tail = little_dec.generate(ctx, {.max_new_tokens = 9}).tokens;
  EXPECT_TRUE(std::equal(tail.begin(), tail.end(), p.tokens.begin() + 3));
}

}  // namespace

// The request's privacy class is enforced below the arbiter: a local_only (or redactable:
// the simulated cloud leg cannot redact) request runs on the device whatever route the
// arbiter picks, and the link carries nothing; cloud_allowed uses the route.
TEST(HybridSession, PrivacyClassKeepsRefusedRequestsOffTheLink) {
  using specdec::privacy::privacy_class;
  const std::vector<token_id> prompt{1, 4, 5};
  for (const route r : {route::in_cloud(), route::speculative(3), route::cloud_prefix(2), route::on_device()}) {
    for (const auto cls : {privacy_class::local_only, privacy_class::redactable, privacy_class::cloud_allowed}) {
      auto device = draft_model(), cloud = target_model();
      simulated_link link(link_config::wan(), 1);
      session s(device, cloud, fixed_arbiter{r}, link, fixed_costs());
      const auto res = s.run(prompt, no_eos(6), 0, cls);
      const bool leaves = r.uses_cloud() && cls == privacy_class::cloud_allowed;
      EXPECT_EQ(res.planned, r);
      EXPECT_EQ(res.privacy_refused, r.uses_cloud() && !leaves) << to_string(r.kind);
      EXPECT_EQ(res.bytes_up > 0, leaves) << to_string(r.kind);
      EXPECT_EQ(link.counters().bytes_up > 0, leaves);
      if (!leaves) {
        EXPECT_EQ(res.bytes_down, 0u);
        EXPECT_EQ(res.cloud_tokens, 0u);
        EXPECT_EQ(res.legs, std::vector<route>{route::on_device()});
        auto fresh = draft_model();
        EXPECT_EQ(res.tokens, greedy(fresh, prompt, 6));
      }
    }
  }
}
