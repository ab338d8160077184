// Tests for include/specdec/hybrid/link.hpp: delays and byte counts equal hand-computed
// values for every preset, the link is reproducible per seed, losses / outages / the
// Gilbert-Elliott channel behave statistically as configured, and bad configs throw.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "specdec/hybrid/link.hpp"

namespace {
using specdec::hybrid::compute_model;
using specdec::hybrid::gilbert_elliott;
using specdec::hybrid::link_config;
using specdec::hybrid::payload_bytes;
using specdec::hybrid::simulated_link;

// Relative tolerance for sums of a few doubles.
constexpr double tol = 1e-12;

TEST(payload_bytes, sizes) {
  EXPECT_EQ(payload_bytes::token_ids(10), 40u);           // 10 * 4
  EXPECT_EQ(payload_bytes::top_k(4, 8), 192u);            // 4 * 8 * (2 + 4)
  EXPECT_EQ(payload_bytes::full_distribution(1, 1000), 4000u);  // 1 * 1000 * 4
  static_assert(payload_bytes::token_ids(0) == 0);
}

struct preset_case {
  const char* name;
  double up;    // hand-computed send_up(token_ids(10)) delay
  double down;  // hand-computed send_down(top_k(4, 8)) delay
};

// Header 40 bytes in every preset. Up message: 40 payload + 40 header = 80 bytes = 640 bits.
// Down message: 192 payload + 40 header = 232 bytes = 1856 bits.
const preset_case preset_cases[] = {
    // lan: 2 ms / 2 + 640 / 1e9 = 0.001 + 0.00000064; 0.001 + 1856 / 1e9 = 0.001 + 0.000001856
    {"lan", 0.00100064, 0.001001856},
    // wan: 15 ms / 2 + 640 / 100e6 = 0.0075 + 0.0000064; 0.0075 + 1856 / 100e6 = 0.0075 + 0.00001856
    {"wan", 0.0075064, 0.00751856},
    // lte (jitter switched off): 60 ms / 2 + 640 / 20e6 = 0.03 + 0.000032;
    //                            0.03 + 1856 / 50e6 = 0.03 + 0.00003712
    {"lte", 0.030032, 0.03003712},
    // degraded (loss switched off): 150 ms / 2 + 640 / 5e6 = 0.075 + 0.000128;
    //                               0.075 + 1856 / 5e6 = 0.075 + 0.0003712
    {"degraded", 0.075128, 0.0753712},
};

TEST(simulated_link, preset_delays_and_bytes_equal_hand_computed_values) {
  for (const auto& c : preset_cases) {
    SCOPED_TRACE(c.name);
    link_config cfg = link_config::preset(c.name);
    cfg.loss_probability = 0.0;
    cfg.jitter_sigma = 0.0;
    simulated_link link(cfg, 1);
    const auto up = link.send_up(payload_bytes::token_ids(10));
    EXPECT_TRUE(up.delivered);
    EXPECT_EQ(up.attempts, 1u);
    EXPECT_NEAR(up.delay_seconds, c.up, tol);
    EXPECT_NEAR(link.now(), c.up, tol);
    const auto down = link.send_down(payload_bytes::top_k(4, 8));
    EXPECT_NEAR(down.delay_seconds, c.down, tol);
    EXPECT_NEAR(link.now(), c.up + c.down, tol);
    const auto& k = link.counters();
    EXPECT_EQ(k.bytes_up, 80u);     // 40 + 40 header
    EXPECT_EQ(k.bytes_down, 232u);  // 192 + 40 header
    EXPECT_EQ(k.messages_up, 1u);
    EXPECT_EQ(k.messages_down, 1u);
    EXPECT_EQ(k.retransmits, 0u);
    EXPECT_EQ(k.timeouts, 0u);
  }
}

TEST(simulated_link, presets_have_the_documented_parameters) {
  EXPECT_EQ(link_config::lan().rtt_seconds, 0.002);
  EXPECT_EQ(link_config::lan().up_bps, 1e9);
  EXPECT_EQ(link_config::wan().down_bps, 100e6);
  EXPECT_EQ(link_config::lte().up_bps, 20e6);
  EXPECT_EQ(link_config::lte().down_bps, 50e6);
  EXPECT_GT(link_config::lte().jitter_sigma, 0.0);
  EXPECT_EQ(link_config::degraded().loss_probability, 0.02);
  EXPECT_EQ(link_config::degraded().up_bps, 5e6);
  try {
    (void)link_config::preset("satellite");
    FAIL() << "expected invalid_argument";
  } catch (const specdec::invalid_argument& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("satellite"), std::string::npos);
    for (const char* n : {"lan", "wan", "lte", "degraded"}) EXPECT_NE(m.find(n), std::string::npos) << m;
  }
}

TEST(simulated_link, round_trip_and_advance) {
  simulated_link link(link_config::wan(), 3);
  link.advance(0.5);
  EXPECT_EQ(link.now(), 0.5);
  // 0.0075064 up + 0.010 cloud compute + 0.00751856 down (see the wan case above).
  const auto rt = link.round_trip(payload_bytes::token_ids(10), payload_bytes::top_k(4, 8), 0.010);
  EXPECT_TRUE(rt.delivered);
  EXPECT_NEAR(rt.total_seconds, 0.0075064 + 0.010 + 0.00751856, tol);
  EXPECT_NEAR(link.now(), 0.5 + 0.02502496, tol);
  EXPECT_EQ(link.counters().round_trips, 1u);
  EXPECT_THROW(link.advance(-1.0), specdec::invalid_argument);
  EXPECT_THROW(link.advance(std::nan("")), specdec::invalid_argument);
}

TEST(simulated_link, message_overhead_is_charged_once_per_delivered_message) {
  link_config cfg = link_config::wan();
  cfg.message_overhead_seconds = 0.0004;
  simulated_link link(cfg, 3);
  // wan: 0.0075064 up, 0.00751856 down (above), each plus the overhead, once per message.
  const auto up = link.send_up(payload_bytes::token_ids(10));
  EXPECT_NEAR(up.delay_seconds, 0.0075064 + 0.0004, tol);
  const auto rt = link.round_trip(payload_bytes::token_ids(10), payload_bytes::top_k(4, 8), 0.010);
  EXPECT_NEAR(rt.total_seconds, 0.0075064 + 0.010 + 0.00751856 + 2 * 0.0004, tol);
  EXPECT_NEAR(link.now(), 0.0075064 * 2 + 0.010 + 0.00751856 + 3 * 0.0004, tol);
  // A lost attempt costs its timeout, the delivered one the overhead: once, not per attempt.
  cfg = link_config::wan();
  cfg.message_overhead_seconds = 0.0004;
  cfg.loss_probability = 0.999999;
  cfg.max_retransmits = 2;
  simulated_link lossy(cfg, 1);
  const auto lost = lossy.send_up(payload_bytes::token_ids(10));
  EXPECT_FALSE(lost.delivered);
  EXPECT_NEAR(lost.delay_seconds, 3 * cfg.retransmit_timeout_seconds, tol);
  // The default is 0: a pure network link, delays as before.
  EXPECT_EQ(link_config{}.message_overhead_seconds, 0.0);
}

TEST(simulated_link, request_overhead_is_charged_once_per_request) {
  link_config cfg = link_config::wan();
  cfg.request_overhead_seconds = 0.003;
  simulated_link link(cfg, 3);
  link.open_request();
  EXPECT_NEAR(link.now(), 0.003, tol);
  EXPECT_EQ(link.counters().requests, 1u);
  EXPECT_EQ(link.counters().messages_up, 0u);  // no message of its own
  // Its messages cost what they always cost (wan: 0.0075064 for 10 ids up).
  const auto up = link.send_up(payload_bytes::token_ids(10));
  EXPECT_NEAR(up.delay_seconds, 0.0075064, tol);
  EXPECT_NEAR(link.now(), 0.003 + 0.0075064, tol);
  link.open_request();
  EXPECT_NEAR(link.now(), 0.006 + 0.0075064, tol);
  EXPECT_EQ(link.counters().requests, 2u);
  // The default is 0: opening a request costs nothing but is counted.
  simulated_link plain(link_config::wan(), 3);
  plain.open_request();
  EXPECT_EQ(plain.now(), 0.0);
  EXPECT_EQ(plain.counters().requests, 1u);
  EXPECT_EQ(link_config{}.request_overhead_seconds, 0.0);
  EXPECT_EQ(link_config{}.stream_message_seconds, 0.0);
}

TEST(simulated_link, pipelined_messages_pay_the_overhead_as_latency_not_in_series) {
  // A stream: messages leave the sender 1 ms apart; each arrives rtt/2 + overhead later,
  // so the last arrives one latency after it left, not one latency per message.
  link_config cfg;
  cfg.rtt_seconds = 0.100;
  cfg.up_bps = cfg.down_bps = 1e30;  // no serialisation
  cfg.message_overhead_seconds = 0.0005;
  simulated_link link(cfg, 1);
  for (int i = 1; i <= 10; ++i) (void)link.send_down_at(0.001 * i, 4);
  EXPECT_NEAR(link.now(), 0.010 + 0.050 + 0.0005, 1e-12);
}

TEST(compute_model, scales_measured_time) {
  compute_model cm{.device_scale = 4.0, .cloud_scale = 0.25};
  EXPECT_EQ(cm.device(0.5), 2.0);
  EXPECT_EQ(cm.cloud(0.5), 0.125);
  cm.validate();
  cm.cloud_scale = 0.0;
  EXPECT_THROW(cm.validate(), specdec::invalid_argument);
  cm.cloud_scale = std::nan("");
  EXPECT_THROW(cm.validate(), specdec::invalid_argument);
}

std::vector<double> delays(const link_config& cfg, std::uint64_t seed, int n) {
  simulated_link link(cfg, seed);
  std::vector<double> d;
  for (int i = 0; i < n; ++i) d.push_back(link.send_up(100).delay_seconds);
  return d;
}

TEST(simulated_link, same_seed_same_delays_different_seed_different_with_jitter) {
  const auto cfg = link_config::lte();
  const auto a = delays(cfg, 11, 200);
  const auto b = delays(cfg, 11, 200);
  const auto c = delays(cfg, 12, 200);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  int distinct = 0;
  for (std::size_t i = 1; i < a.size(); ++i) distinct += a[i] != a[0];
  EXPECT_GT(distinct, 190);  // jitter really varies the delay
}

TEST(simulated_link, jitter_is_lognormal_around_the_median_rtt) {
  auto cfg = link_config::lte();  // median RTT 60 ms, sigma 0.25
  constexpr int n = 4001;
  auto d = delays(cfg, 5, n);
  const double ser = (100.0 + 40.0) * 8.0 / 20e6;  // 5.6e-5 s serialisation
  std::vector<double> log_half_rtt;
  for (double x : d) log_half_rtt.push_back(std::log(x - ser));
  std::nth_element(d.begin(), d.begin() + n / 2, d.end());
  // Median of the delay is half the median RTT plus serialisation; the sample median of a
  // lognormal with sigma 0.25 over 4001 draws has a relative sd ~ 0.25 * 1.25 / sqrt(n) < 0.5%.
  EXPECT_NEAR(d[n / 2], 0.030 + ser, 0.030 * 0.025);
  double mean = 0, var = 0;
  for (double x : log_half_rtt) mean += x;
  mean /= n;
  for (double x : log_half_rtt) var += (x - mean) * (x - mean);
  var /= n - 1;
  EXPECT_NEAR(mean, std::log(0.030), 5 * 0.25 / std::sqrt(double(n)));
  EXPECT_NEAR(std::sqrt(var), 0.25, 0.02);
}

TEST(simulated_link, loss_fraction_matches_probability_and_costs_a_timeout_each) {
  for (double p : {0.02, 0.2}) {
    SCOPED_TRACE(p);
    auto cfg = link_config::degraded();
    cfg.loss_probability = p;
    cfg.max_retransmits = 100;  // never give up in this test
    simulated_link link(cfg, 42);
    const double base = 0.075 + (100.0 + 40.0) * 8.0 / 5e6;  // RTT/2 + serialisation
    constexpr int n = 20000;
    for (int i = 0; i < n; ++i) {
      const auto r = link.send_up(100);
      ASSERT_TRUE(r.delivered);
      // Each lost attempt adds the 0.3 s retransmit timeout before the next attempt.
      ASSERT_NEAR(r.delay_seconds, double(r.attempts - 1) * 0.3 + base, 1e-9);
    }
    const auto& k = link.counters();
    EXPECT_EQ(k.attempts, n + k.retransmits);
    EXPECT_EQ(k.bytes_up, k.attempts * 140u);
    // Every attempt is lost independently with probability p, so lost / attempts is a
    // binomial proportion: allow 5 standard deviations.
    const double frac = double(k.retransmits) / double(k.attempts);
    EXPECT_NEAR(frac, p, 5 * std::sqrt(p * (1 - p) / double(k.attempts)));
  }
}

TEST(simulated_link, too_many_losses_fail_the_send) {
  auto cfg = link_config::wan();
  cfg.loss_probability = 0.9;
  cfg.max_retransmits = 0;
  cfg.retransmit_timeout_seconds = 0.25;
  simulated_link link(cfg, 9);
  int failed = 0;
  for (int i = 0; i < 200; ++i) {
    const auto r = link.send_up(4);
    if (!r.delivered) {
      ++failed;
      EXPECT_EQ(r.delay_seconds, 0.25);
    }
  }
  EXPECT_EQ(link.counters().timeouts, std::size_t(failed));
  EXPECT_GT(failed, 150);
}

TEST(simulated_link, outage_window_fails_sends_so_the_device_can_continue) {
  auto cfg = link_config::wan();
  cfg.outages.push_back({.start_seconds = 1.0, .end_seconds = 2.0});
  cfg.outage_timeout_seconds = 0.75;
  simulated_link link(cfg, 1);
  EXPECT_TRUE(link.send_up(40).delivered);
  link.advance(1.5 - link.now());
  EXPECT_TRUE(link.in_outage_window(link.now()));
  const auto r = link.send_up(40);
  EXPECT_FALSE(r.delivered);
  EXPECT_EQ(r.delay_seconds, 0.75);
  EXPECT_EQ(link.now(), 2.25);  // 1.5 + the 0.75 s timeout
  EXPECT_EQ(link.counters().timeouts, 1u);
  const auto rt_ok = link.round_trip(40, 40, 0.0);  // window over: delivered again
  EXPECT_TRUE(rt_ok.delivered);

  link_config down_cfg = link_config::wan();
  down_cfg.outage_probability = 1.0;
  simulated_link down(down_cfg, 1);
  const auto rt = down.round_trip(40, 40, 0.5);
  EXPECT_FALSE(rt.delivered);
  EXPECT_FALSE(rt.up.delivered);
  EXPECT_EQ(rt.down.attempts, 0u);
  EXPECT_EQ(rt.total_seconds, 1.0);  // just the default outage timeout; no cloud compute
  EXPECT_EQ(down.counters().bytes_up, 0u);
}

TEST(simulated_link, outage_probability_fraction) {
  auto cfg = link_config::lan();
  cfg.outage_probability = 0.1;
  simulated_link link(cfg, 77);
  constexpr int n = 10000;
  for (int i = 0; i < n; ++i) (void)link.send_down(8);
  const double frac = double(link.counters().timeouts) / n;
  EXPECT_NEAR(frac, 0.1, 5 * std::sqrt(0.1 * 0.9 / n));
}

TEST(simulated_link, gilbert_elliott_spends_the_stationary_fraction_in_the_bad_state) {
  auto cfg = link_config::wan();
  cfg.channel = gilbert_elliott{.p_good_to_bad = 0.05, .p_bad_to_good = 0.2, .good_rtt_seconds = 0.02,
                                .bad_rtt_seconds = 0.2, .good_loss = 0.0, .bad_loss = 0.0};
  ASSERT_DOUBLE_EQ(cfg.channel->stationary_bad_fraction(), 0.2);  // 0.05 / (0.05 + 0.2)
  simulated_link link(cfg, 123);
  constexpr int n = 50000;
  int bad_by_delay = 0;
  for (int i = 0; i < n; ++i) {
    const auto r = link.send_up(0);
    const bool bad = link.in_bad_state();
    // Per-state RTT: 0.1 s one way in the bad state, 0.01 s in the good state (+ 320 bits / 100e6).
    ASSERT_NEAR(r.delay_seconds, (bad ? 0.1 : 0.01) + 320.0 / 100e6, 1e-12);
    bad_by_delay += bad;
  }
  EXPECT_EQ(link.counters().bad_state_attempts, std::size_t(bad_by_delay));
  // A two-state chain with lag-one correlation rho = 1 - 0.05 - 0.2 = 0.75 inflates the
  // variance of the occupancy mean by (1 + rho) / (1 - rho) = 7: sd = sqrt(0.2 * 0.8 * 7 / n)
  // ~ 0.0047. Allow 5 sd.
  const double frac = double(bad_by_delay) / n;
  EXPECT_NEAR(frac, 0.2, 5 * std::sqrt(0.2 * 0.8 * 7.0 / n));
}

TEST(simulated_link, gilbert_elliott_bad_state_losses) {
  auto cfg = link_config::wan();
  cfg.max_retransmits = 1000;
  cfg.channel = gilbert_elliott{.p_good_to_bad = 0.1, .p_bad_to_good = 0.1, .good_rtt_seconds = 0.02,
                                .bad_rtt_seconds = 0.02, .good_loss = 0.0, .bad_loss = 0.5};
  simulated_link link(cfg, 8);
  for (int i = 0; i < 20000; ++i) (void)link.send_up(0);
  const auto& k = link.counters();
  // Losses happen only in the bad state, at rate 0.5 there.
  const double frac = double(k.retransmits) / double(k.bad_state_attempts);
  EXPECT_NEAR(frac, 0.5, 0.05);
}

void expect_invalid(const link_config& cfg, const std::string& field) {
  try {
    cfg.validate();
    ADD_FAILURE() << "expected invalid_argument naming " << field;
  } catch (const specdec::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find(field), std::string::npos) << e.what();
  }
  EXPECT_THROW(simulated_link(cfg, 0), specdec::invalid_argument);
}

TEST(link_config, invalid_configs_throw_naming_the_field) {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  link_config::wan().validate();
  auto c = link_config::wan();
  c.up_bps = -1.0;
  expect_invalid(c, "up_bps");
  c = link_config::wan();
  c.down_bps = 0.0;
  expect_invalid(c, "down_bps");
  c = link_config::wan();
  c.down_bps = nan;
  expect_invalid(c, "down_bps");
  c = link_config::wan();
  c.loss_probability = 1.0;
  expect_invalid(c, "loss_probability");
  c.loss_probability = nan;
  expect_invalid(c, "loss_probability");
  c = link_config::wan();
  c.rtt_seconds = nan;
  expect_invalid(c, "rtt_seconds");
  c = link_config::wan();
  c.message_overhead_seconds = -1e-3;
  expect_invalid(c, "message_overhead_seconds");
  c.message_overhead_seconds = nan;
  expect_invalid(c, "message_overhead_seconds");
  c = link_config::wan();
  c.request_overhead_seconds = -1e-3;
  expect_invalid(c, "request_overhead_seconds");
  c.request_overhead_seconds = nan;
  expect_invalid(c, "request_overhead_seconds");
  c = link_config::wan();
  c.stream_message_seconds = -1e-3;
  expect_invalid(c, "stream_message_seconds");
  c = link_config::wan();
  c.jitter_sigma = -0.1;
  expect_invalid(c, "jitter_sigma");
  c = link_config::wan();
  c.outage_probability = 1.5;
  expect_invalid(c, "outage_probability");
  c = link_config::wan();
  c.outages.push_back({.start_seconds = 2.0, .end_seconds = 1.0});
  expect_invalid(c, "outages[0]");
  c = link_config::wan();
  c.channel = gilbert_elliott{.p_good_to_bad = nan};
  expect_invalid(c, "p_good_to_bad");
  c.channel = gilbert_elliott{.p_good_to_bad = 0.0, .p_bad_to_good = 0.0};
  expect_invalid(c, "p_bad_to_good");
  c.channel = gilbert_elliott{.bad_loss = 1.0};
  expect_invalid(c, "bad_loss");
}
}  // namespace
