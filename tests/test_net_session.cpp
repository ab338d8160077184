// Tests for include/specdec/hybrid/net_session.hpp: every route over real sockets (through
// the test proxy) produces what its decoders must (greedy: the target's or the device's
// own output, the prefix route their concatenation); the arbiter decides from the link
// as measured, so a slow link changes its decision; a lost link mid-request finishes on
// the device without losing or repeating a token, and later requests stay on the device.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <iostream>
#include <string>
#include <thread>
#include <vector>

#include "specdec/backend/cpu/batched_transformer.hpp"
#include "specdec/backend/cpu/transformer.hpp"
#include "specdec/decoder.hpp"
#include "specdec/hybrid/net_session.hpp"
#include "specdec/hybrid/session.hpp"  // fixed_arbiter
#include "specdec/testing/link_proxy.hpp"
#include "specdec_serve/server.hpp"
#define SPECDEC_SERVE_TESTS
#include "serve_test_support.hpp"

namespace {
using namespace specdec;
using hybrid::route;

const std::string models = SPECDEC_MODELS_DIR;

/// kjv-big served in process, both ports behind one shaping each.
struct fixture {
  cpu::batched_transformer model{models + "/kjv-big.bin", cpu::transformer_options{.threads = 1}};
  serve::server<cpu::batched_transformer> srv{model, {}, test_support::serve_options()};
  std::unique_ptr<specdec::testing::link_proxy> http, verify;
  explicit fixture(specdec::testing::link_proxy_options shape = {}) {
    srv.start();
    http = std::make_unique<specdec::testing::link_proxy>("127.0.0.1", srv.http_port(), shape);
    verify = std::make_unique<specdec::testing::link_proxy>("127.0.0.1", srv.verify_port(), shape);
  }
  hybrid::net_endpoint endpoint() const { return {"127.0.0.1", http->port(), verify->port()}; }
  void shape(const specdec::testing::link_proxy_options& o) {
    http->set_options(o);
    verify->set_options(o);
  }
};

/// Remembers the link estimate it was shown; always answers `fixed`.
struct recording_arbiter {
  route fixed = route::on_device();
  std::vector<hybrid::link_estimate>* seen = nullptr;
  route decide(const hybrid::request_features&, const hybrid::link_estimate& l, const hybrid::budget&) const {
    seen->push_back(l);
    return fixed;
  }
  void validate() const {}
};

std::vector<token_id> greedy(cpu::transformer& m, std::span<const token_id> p, std::size_t n) {
  return autoregressive_decoder(m).generate(p, {.max_new_tokens = n, .stop_at_eos = false}).tokens;
}

TEST(net_session, every_route_gives_what_its_decoders_must) {
  fixture f({.one_way_delay_seconds = 0.002});
  cpu::transformer little(models + "/kjv-little.bin", {.threads = 1});
  cpu::transformer big(models + "/kjv-big.bin", {.threads = 1});
  const std::vector<token_id> prompt{1, 450, 1171, 310};
  const std::size_t n = 32;
  const generation_options gen{.max_new_tokens = n, .stop_at_eos = false};
  const auto target = greedy(big, prompt, n), device = greedy(little, prompt, n);
  for (const bool pipelined : {true, false}) {
    hybrid::net_session s(little, hybrid::fixed_arbiter{}, f.endpoint(), {.pipelined = pipelined});
    const auto d = s.execute(prompt, gen, route::on_device());
    EXPECT_EQ(d.tokens, device);
    EXPECT_EQ(d.bytes_up + d.bytes_down, 0u);
    EXPECT_EQ(d.device_tokens, n);
    const auto c = s.execute(prompt, gen, route::in_cloud());
    EXPECT_EQ(c.tokens, target);
    EXPECT_EQ(c.cloud_tokens, n);
    EXPECT_GT(c.bytes_down, c.bytes_up);
    const auto sp = s.execute(prompt, gen, route::speculative(4));
    EXPECT_EQ(sp.tokens, target) << "pipelined " << pipelined;
    EXPECT_GT(sp.verify_rounds, 0u);
    EXPECT_LT(sp.verify_rounds, n);  // some drafts were accepted
    EXPECT_LT(static_cast<double>(sp.bytes_up + sp.bytes_down) / n, 100.0);  // the protocol's budget
    EXPECT_GE(s.monitor().samples(), sp.verify_rounds);
    EXPECT_GE(s.monitor().rtt_quantile(0.0), 0.004);  // 2 x 2 ms through the proxy
    const auto pre = s.execute(prompt, gen, route::cloud_prefix(8));
    std::vector<token_id> want(target.begin(), target.begin() + 8);
    std::vector<token_id> ctx = prompt;
    ctx.insert(ctx.end(), want.begin(), want.end());
    const auto rest = greedy(little, ctx, n - 8);
    want.insert(want.end(), rest.begin(), rest.end());
    EXPECT_EQ(pre.tokens, want);
    EXPECT_EQ(pre.route_trace(), "cloud_prefix(8)>device");
    EXPECT_EQ(pre.cloud_tokens, 8u);
    for (const auto* r : {&d, &c, &sp, &pre}) {
      EXPECT_EQ(r->stop, stop_reason::max_tokens);
      EXPECT_FALSE(r->fell_back_to_device);
      EXPECT_LE(r->ttft_seconds, r->latency_seconds);
    }
  }
  // Sampled split decoding runs too (its exactness is remote_verifier's, tested there).
  hybrid::net_session s(little, hybrid::fixed_arbiter{}, f.endpoint(), {.sampling = {.temperature = 0.8f}, .seed = 5});
  const auto r = s.execute(prompt, gen, route::speculative(3));
  EXPECT_EQ(r.tokens.size(), n);
  EXPECT_GT(r.verify_rounds, 0u);
}

TEST(net_session, the_arbiter_reads_the_measured_link) {
  fixture f({.one_way_delay_seconds = 0.02});
  cpu::transformer little(models + "/kjv-little.bin", {.threads = 1});
  const std::vector<token_id> prompt{1, 450, 1171};
  std::vector<hybrid::link_estimate> seen;
  hybrid::net_session s(little, recording_arbiter{route::speculative(4), &seen}, f.endpoint());
  (void)s.run(prompt, {.max_new_tokens = 24, .stop_at_eos = false});
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_GE(seen[0].rtt_seconds, 0.04);  // the /health probe through a 40 ms round trip
  (void)s.run(prompt, {.max_new_tokens = 24, .stop_at_eos = false});
  EXPECT_GE(seen[1].rtt_seconds, 0.04);  // now the verify rounds' EWMA
  EXPECT_GT(s.monitor().samples(), 3u);
  EXPECT_GE(s.monitor().rtt_quantile(0.5), 0.04);

  // The same latency arbiter, two links: cloud on a fast one, the device on a slow one.
  // 16 tokens at 50 ms on the device (0.8 s) against one round trip plus 16 ms of cloud.
  const hybrid::latency_arbiter lat{.costs = {.t_device_per_token = 0.05, .t_cloud_per_token = 0.001,
                                              .cloud_prefill_seconds_per_token = 0.0}};
  const hybrid::constant_length_predictor sixteen{.length = 16};
  const generation_options gen{.max_new_tokens = 16, .stop_at_eos = false};
  f.shape({});
  hybrid::net_session fast(little, lat, f.endpoint(), {}, sixteen);
  const auto a = fast.run(prompt, gen);
  EXPECT_TRUE(a.planned.uses_cloud()) << a.link.rtt_seconds;
  f.shape({.one_way_delay_seconds = 0.5});
  hybrid::net_session slow(little, lat, f.endpoint(), {}, sixteen);
  const auto b = slow.run(prompt, gen);
  EXPECT_GE(b.link.rtt_seconds, 1.0);
  EXPECT_EQ(b.planned, route::on_device());
  EXPECT_EQ(b.route_trace(), "device");
}

TEST(net_session, a_lost_link_finishes_on_the_device_and_later_requests_stay_there) {
  fixture f({.one_way_delay_seconds = 0.003});
  cpu::transformer little(models + "/kjv-little.bin", {.threads = 1});
  cpu::transformer big(models + "/kjv-big.bin", {.threads = 1});
  const std::vector<token_id> prompt{1, 450, 1171};
  const std::size_t n = 60;
  hybrid::net_session s(little, hybrid::fixed_arbiter{route::speculative(4)}, f.endpoint(),
                        {.retry_seconds = 60.0, .verify = {.connect_timeout_seconds = 0.5, .retries = 0}});
  // Cut the verify link once some verdicts have come back.
  std::atomic<bool> done{false};
  std::thread cutter([&] {
    while (!done.load() && f.verify->bytes_down() < 120) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    f.verify->disconnect_all();
  });
  const auto r = s.run(prompt, {.max_new_tokens = n, .stop_at_eos = false});
  done = true;
  cutter.join();
  ASSERT_EQ(r.tokens.size(), n);
  ASSERT_TRUE(r.fell_back_to_device);
  EXPECT_EQ(r.route_trace(), "speculative(4)>device");
  ASSERT_GT(r.cloud_tokens, 0u);
  // What the routes used must produce: the target's greedy tokens, then the device's.
  std::vector<token_id> want = greedy(big, prompt, r.cloud_tokens);
  std::vector<token_id> ctx = prompt;
  ctx.insert(ctx.end(), want.begin(), want.end());
  const auto rest = greedy(little, ctx, n - r.cloud_tokens);
  want.insert(want.end(), rest.begin(), rest.end());
  EXPECT_EQ(r.tokens, want);
  EXPECT_EQ(s.monitor().failures(), 1u);
  // Within retry_seconds the next request does not touch the link.
  const std::size_t connections = f.verify->connections() + f.http->connections();
  const auto next = s.run(prompt, {.max_new_tokens = 8, .stop_at_eos = false});
  EXPECT_EQ(next.route_trace(), "device");
  EXPECT_EQ(f.verify->connections() + f.http->connections(), connections);
}

TEST(net_session, bad_endpoints_and_routes_are_refused) {
  cpu::transformer little(models + "/kjv-little.bin", {.threads = 1});
  EXPECT_THROW(hybrid::net_session(little, hybrid::fixed_arbiter{}, {.http_port = 1}), invalid_argument);
  hybrid::net_session s(little, hybrid::fixed_arbiter{}, {.http_port = 1, .verify_port = 1});
  const std::vector<token_id> prompt{1, 450};
  EXPECT_THROW((void)s.execute(prompt, {.max_new_tokens = 4}, route::speculative(0)), invalid_argument);
  EXPECT_THROW((void)s.execute(prompt, {.max_new_tokens = 4}, route::cloud_prefix(0)), invalid_argument);
  EXPECT_THROW((void)s.execute({}, {.max_new_tokens = 4}, route::on_device()), invalid_argument);
}

}  // namespace
