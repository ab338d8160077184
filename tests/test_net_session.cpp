// Tests for include/specdec/hybrid/net_session.hpp over real sockets.
// - Routes and measurement (kjv models, through the test link proxy): every route
//   produces what its decoders must (greedy: the target's or the device's own output, the
//   prefix route their concatenation); the arbiter decides from the link as measured, so a
//   slow link changes its decision; a lost link mid-request finishes on the device without
//   losing or repeating a token, and later requests stay on the device.
// - Privacy, and through it the uplink gate of the real clients (hybrid/uplink.hpp):
//   requests with and without personal data (tests/data/pii_corpus.tsv), of every privacy
//   class, go through every route (device, cloud streaming, split greedy, split sampled,
//   cloud prefix then device) and every arbiter the library ships plus an adversarial one,
//   against a real specdec-serve on ephemeral loopback ports behind relays that count every
//   byte the server receives. local_only requests open no connection and send zero bytes;
//   the audit log's byte total equals, per destination, exactly what the server received.
// GCC 12 at -O2 reports the std::function members of net_session_options' default
// argument as possibly destroyed uninitialised (a false positive of its inliner; the
// members are value-initialised); the pragma must precede <functional>.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "audit_summary.hpp"
#include "pii_corpus.hpp"
#include "specdec/backend/cpu/batched_transformer.hpp"
#include "specdec/backend/cpu/tokenizer.hpp"
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
namespace pv = specdec::privacy;
using hybrid::route;
using hybrid::route_kind;
using pv::privacy_class;

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
  EXPECT_THROW((void)s.execute(std::span<const token_id>{}, {.max_new_tokens = 4}, route::on_device()), invalid_argument);
}

/// A TCP relay on an ephemeral loopback port in front of `target`: forwards both ways and
/// counts the connections it accepted and every byte a client sent towards the target.
class counting_relay {
 public:
  explicit counting_relay(std::uint16_t target) : target_(target) {
    std::tie(listen_fd_, port_) = test_support::loopback_socket();
    accept_thread_ = std::thread([this] { accept_loop(); });
  }
  counting_relay(const counting_relay&) = delete;
  counting_relay& operator=(const counting_relay&) = delete;
  ~counting_relay() {
    stop_ = true;
    accept_thread_.join();
    for (auto& t : pumps_) t.join();
    ::close(listen_fd_);
  }
  [[nodiscard]] std::uint16_t port() const noexcept { return port_; }
  [[nodiscard]] std::uint64_t bytes() const noexcept { return bytes_; }
  [[nodiscard]] std::uint64_t connections() const noexcept { return connections_; }
  /// Waits (at most 5 s) until every relayed connection has been closed by both ends, so
  /// every byte a client sent has been counted.
  [[nodiscard]] bool wait_idle() const {
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    while (open_ > 0 && std::chrono::steady_clock::now() < until)
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    return open_ == 0;
  }

 private:
  void accept_loop() {
    while (!stop_) {
      pollfd p{listen_fd_, POLLIN, 0};
      if (::poll(&p, 1, 20) <= 0) continue;
      const int client = ::accept(listen_fd_, nullptr, nullptr);
      if (client < 0) continue;
      ++connections_;
      ++open_;
      const int server = ::socket(AF_INET, SOCK_STREAM, 0);
      sockaddr_in a{};
      a.sin_family = AF_INET;
      a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      a.sin_port = htons(target_);
      if (::connect(server, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
        ::close(server);
        ::close(client);
        --open_;
        continue;
      }
      std::lock_guard lock(mutex_);
      pumps_.emplace_back([this, client, server] { pump(client, server); });
    }
  }
  static bool write_all(int fd, const char* p, std::size_t n) {
    while (n > 0) {
      const ssize_t w = ::send(fd, p, n, MSG_NOSIGNAL);
      if (w <= 0) return false;
      p += w;
      n -= static_cast<std::size_t>(w);
    }
    return true;
  }
  void pump(int client, int server) {
    bool up = true, down = true;  // client -> server, server -> client still open
    char buf[16384];
    while ((up || down) && !stop_) {
      pollfd p[2] = {{up ? client : -1, POLLIN, 0}, {down ? server : -1, POLLIN, 0}};
      if (::poll(p, 2, 20) <= 0) continue;
      if (up && (p[0].revents & (POLLIN | POLLHUP | POLLERR))) {
        const ssize_t n = ::recv(client, buf, sizeof buf, 0);
        if (n > 0) bytes_ += static_cast<std::uint64_t>(n);
        if (n <= 0 || !write_all(server, buf, static_cast<std::size_t>(n))) {
          up = false;
          ::shutdown(server, SHUT_WR);
        }
      }
      if (down && (p[1].revents & (POLLIN | POLLHUP | POLLERR))) {
        const ssize_t n = ::recv(server, buf, sizeof buf, 0);
        if (n <= 0 || !write_all(client, buf, static_cast<std::size_t>(n))) {
          down = false;
          ::shutdown(client, SHUT_WR);
        }
      }
    }
    ::close(client);
    ::close(server);
    --open_;
  }

  std::uint16_t target_;
  int listen_fd_ = -1;
  std::uint16_t port_ = 0;
  std::atomic<bool> stop_{false};
  std::atomic<std::uint64_t> bytes_{0}, connections_{0};
  std::atomic<int> open_{0};
  std::mutex mutex_;
  std::list<std::thread> pumps_;
  std::thread accept_thread_;
};

/// stories260K served in process with its tokenizer, on ephemeral loopback ports.
struct served_stories {
  cpu::batched_transformer model{models + "/stories260K.bin", cpu::transformer_options{.threads = 1}};
  cpu::tokenizer tok{models + "/tok512.bin", model.vocab_size()};
  serve::server<cpu::batched_transformer> srv{
      model,
      serve::text_codec{[this](std::string_view s) { return tok.encode(s); },
                        [this](token_id prev, token_id t) { return tok.decode_piece(prev, t); }},
      test_support::serve_options()};
  served_stories() { srv.start(); }
};

/// Any arbiter behind one type, so one loop runs them all (each is validated once).
struct erased_arbiter {
  std::string name;
  std::function<route(const hybrid::request_features&, const hybrid::link_estimate&, const hybrid::budget&)> f;
  [[nodiscard]] route decide(const hybrid::request_features& x, const hybrid::link_estimate& l,
                             const hybrid::budget& b) const {
    return f(x, l, b);
  }
  void validate() const {}
};
template <class A>
erased_arbiter erase(std::string name, A a) {
  a.validate();
  auto shared = std::make_shared<A>(std::move(a));
  return {std::move(name), [shared](const auto& x, const auto& l, const auto& b) { return shared->decide(x, l, b); }};
}

/// Every arbiter of the library, each tuned so that it does send requests to the cloud,
/// and an adversarial one that always answers with a cloud-using route.
std::vector<erased_arbiter> arbiters() {
  std::vector<erased_arbiter> out;
  out.push_back(erase("fixed device", hybrid::fixed_arbiter{route::on_device()}));
  out.push_back(erase("fixed cloud", hybrid::fixed_arbiter{route::in_cloud()}));
  out.push_back(erase("fixed speculative", hybrid::fixed_arbiter{route::speculative(3)}));
  out.push_back(erase("fixed cloud_prefix", hybrid::fixed_arbiter{route::cloud_prefix(3)}));
  out.push_back(erase("random", hybrid::random_arbiter{.cloud_fraction = 0.7, .seed = 5}));
  out.push_back(erase("oracle", hybrid::oracle_arbiter::from_labels(std::vector<int>(64, 0))));
  // (erased: the session cannot see that it reads the look-ahead, so it reads the prompt)
  out.push_back(erase("confidence", hybrid::confidence_arbiter{.min_max_prob = 2.0f, .prefix_tokens = 3,
                                                                .read_lookahead = false}));
  hybrid::logistic_arbiter logistic{.threshold = 2.0};  // P(device ok) < 2: always cloud
  logistic.train(std::vector<hybrid::request_features>{{.prompt_tokens = 4}, {.prompt_tokens = 40}}, {0, 1}, 20);
  out.push_back(erase("logistic", logistic));
  const hybrid::latency_arbiter latency{.costs = {.t_device_per_token = 1.0, .t_cloud_per_token = 1e-4},
                                        .allow_cloud_prefix = true};
  out.push_back(erase("latency", latency));
  out.push_back(erase("budget_guard(latency)", hybrid::budget_guard{latency}));
  auto turn = std::make_shared<std::size_t>(0);
  out.push_back({"adversarial", [turn](const auto&, const auto&, const auto&) {
                   const route cloudy[] = {route::in_cloud(), route::speculative(2), route::cloud_prefix(2),
                                           route::speculative(5)};
                   return cloudy[(*turn)++ % 4];
                 }});
  return out;
}

struct temp_log {
  std::filesystem::path path = std::filesystem::temp_directory_path() /
                               ("specdec_net_session_" + std::to_string(::getpid()) + ".jsonl");
  temp_log() { std::filesystem::remove(path); }
  ~temp_log() { std::filesystem::remove(path); }
};

TEST(net_session, local_only_sends_zero_bytes_and_the_audit_equals_what_the_server_received) {
  served_stories cloud;
  counting_relay http(cloud.srv.http_port()), verify(cloud.srv.verify_port());
  cpu::transformer device(models + "/stories260K.bin", {.threads = 1});
  temp_log log_file;
  pv::uplink_audit_log audit(log_file.path.string());

  // Corpus prompts with and without detected personal data.
  const auto rows = specdec::testing::read_pii_corpus(SPECDEC_TEST_DATA_DIR "/pii_corpus.tsv");
  std::vector<const specdec::testing::labelled_text*> with_pii, without_pii;
  for (const auto& r : rows) {
    if (r.text.size() > 160) continue;
    auto& bucket = r.gold.empty() ? without_pii : with_pii;
    if (bucket.size() < 4) bucket.push_back(&r);
  }
  ASSERT_EQ(with_pii.size(), 4u);
  ASSERT_EQ(without_pii.size(), 4u);
  std::vector<const specdec::testing::labelled_text*> prompts = with_pii;
  prompts.insert(prompts.end(), without_pii.begin(), without_pii.end());

  const pv::pii_detector strict;                                               // detected -> local_only
  const pv::pii_detector opt_in({.on_detection = privacy_class::redactable});  // detected -> redactable
  const generation_options gen{.max_new_tokens = 6, .stop_at_eos = false};
  std::map<std::string, std::size_t> legs_run;  // cloud-using leg kinds that sent something
  std::size_t local_requests = 0, local_cloud_routes = 0, refused = 0, redacted = 0, requests = 0;
  for (const bool sampled : {false, true}) {
    for (const auto& arb : arbiters()) {
      for (const pv::pii_detector* detector : {&strict, &opt_in}) {
        hybrid::net_session s(
            device, arb, {.host = "127.0.0.1", .http_port = http.port(), .verify_port = verify.port()},
            {.sampling = sampled ? sampling_params{.temperature = 0.9f, .top_k = 20} : sampling_params{},
             .seed = 11,
             .audit = &audit,
             .detector = *detector,
             .encode = [&](std::string_view t) { return cloud.tok.encode(t); }});
        // The session's one link measurement, before any request is counted (a fresh
        // session probes only for a cloud_allowed request: checked below).
        ASSERT_TRUE(s.probe_link());
        for (std::size_t i = 0; i < prompts.size(); ++i) {
          for (const auto declared : {privacy_class::local_only, privacy_class::redactable, privacy_class::cloud_allowed}) {
            const auto ids = cloud.tok.encode(prompts[i]->text);
            ASSERT_TRUE(http.wait_idle() && verify.wait_idle());
            const std::uint64_t bytes0 = http.bytes() + verify.bytes(), conns0 = http.connections() + verify.connections();
            const hybrid::net_result r =
                s.run({.text = prompts[i]->text, .prompt = ids, .declared = declared, .id = i}, gen);
            ASSERT_TRUE(http.wait_idle() && verify.wait_idle());
            ++requests;
            EXPECT_GT(r.tokens.size(), 0u) << arb.name << ' ' << r.route_trace();
            EXPECT_LE(r.tokens.size(), gen.max_new_tokens) << arb.name << ' ' << r.route_trace();
            const std::uint64_t sent = http.bytes() + verify.bytes() - bytes0;
            const std::uint64_t conns = http.connections() + verify.connections() - conns0;
            refused += r.refused;
            redacted += r.redacted;
            // What the rule lets through: cloud_allowed on any cloud route, redactable
            // (redacted) on the cloud route only; every other cloud route is refused.
            const bool may_leave = r.planned.uses_cloud() &&
                                   (r.detection.decision == privacy_class::cloud_allowed ||
                                    (r.detection.decision == privacy_class::redactable &&
                                     r.planned.kind == route_kind::cloud));
            EXPECT_EQ(r.refused, r.planned.uses_cloud() && !may_leave) << arb.name << ' ' << r.route_trace();
            EXPECT_EQ(r.redacted, may_leave && r.detection.decision == privacy_class::redactable);
            if (may_leave) {
              EXPECT_GT(sent, 0u) << arb.name << ' ' << r.route_trace();
            } else {
              EXPECT_EQ(sent, 0u) << arb.name << ' ' << r.route_trace();
            }
            if (r.detection.decision == privacy_class::local_only) {
              ++local_requests;
              local_cloud_routes += r.planned.uses_cloud();
              EXPECT_EQ(sent, 0u) << arb.name << ' ' << prompts[i]->id << ' ' << r.route_trace();
              EXPECT_EQ(conns, 0u) << arb.name << ' ' << prompts[i]->id << ' ' << r.route_trace();
              EXPECT_EQ(r.cloud_tokens, 0u);
            }
            if (r.detection.decision == privacy_class::cloud_allowed && r.planned.uses_cloud()) {
              legs_run[std::string(to_string(r.planned.kind)) + (sampled ? " sampled" : " greedy")] += 1;
            }
          }
        }
      }
    }
  }
  EXPECT_GT(local_requests, 200u);
  EXPECT_GT(local_cloud_routes, 150u);  // the arbiters did try to send them
  EXPECT_GT(refused, local_cloud_routes);  // redactable requests on split routes too
  EXPECT_GT(redacted, 10u);
  for (const char* kind : {"cloud", "speculative", "cloud_prefix"})
    for (const char* mode : {" greedy", " sampled"}) EXPECT_GT(legs_run[std::string(kind) + mode], 5u) << kind << mode;

  // The audit log, summarised as specdec-audit does: per destination, exactly the bytes
  // each server port received; nothing of a local_only request.
  specdec::audit_tool::summary sum;
  std::ifstream in(log_file.path);
  sum.read(in, log_file.path.string());
  EXPECT_GT(sum.all.messages, 100u);
  EXPECT_EQ(sum.all.bytes, http.bytes() + verify.bytes());
  EXPECT_EQ(sum.by_destination.at("127.0.0.1:" + std::to_string(http.port())).bytes, http.bytes());
  EXPECT_EQ(sum.by_destination.at("127.0.0.1:" + std::to_string(verify.port())).bytes, verify.bytes());
  EXPECT_EQ(sum.by_class.count("local_only"), 0u);
  std::cout << requests << " requests, " << local_requests << " local_only (" << local_cloud_routes
            << " routed to the cloud), " << redacted << " redacted; audit: " << sum.all.messages << " messages, "
            << sum.all.bytes << " bytes = server received " << http.bytes() << " (HTTP) + " << verify.bytes()
            << " (verify)\n";
}


TEST(net_session, only_a_cloud_allowed_request_lets_the_session_probe_the_link) {
  served_stories cloud;
  counting_relay http(cloud.srv.http_port()), verify(cloud.srv.verify_port());
  cpu::transformer device(models + "/stories260K.bin", {.threads = 1});
  hybrid::net_session s(device, hybrid::fixed_arbiter{route::in_cloud()},
                        {.host = "127.0.0.1", .http_port = http.port(), .verify_port = verify.port()});
  const generation_options gen{.max_new_tokens = 4, .stop_at_eos = false};
  const std::string text = "Write to jane.doe@example.org about the picnic";
  const auto ids = cloud.tok.encode(text);
  // Detected personal data (declared cloud_allowed): local_only, refused, the device writes.
  const hybrid::net_result a = s.run({.text = text, .prompt = ids, .id = 1}, gen);
  EXPECT_EQ(a.detection.decision, privacy_class::local_only);
  EXPECT_TRUE(a.refused);
  EXPECT_EQ(a.route_trace(), "cloud>device");
  EXPECT_EQ(a.device_tokens, gen.max_new_tokens);
  // Declared redactable, no encoder: the cloud route may not take the plain prompt.
  const hybrid::net_result b = s.run({.prompt = ids, .declared = privacy_class::redactable, .id = 2}, gen);
  EXPECT_TRUE(b.refused);
  EXPECT_FALSE(b.redacted);
  ASSERT_TRUE(http.wait_idle() && verify.wait_idle());
  EXPECT_EQ(http.connections() + verify.connections(), 0u);
  EXPECT_EQ(s.monitor().samples() + s.monitor().failures(), 0u);  // not even /health
  // Without text the declared class stands: cloud_allowed probes, then runs in the cloud.
  const hybrid::net_result c = s.run(ids, gen, 3);
  ASSERT_TRUE(http.wait_idle() && verify.wait_idle());
  EXPECT_FALSE(c.refused);
  EXPECT_EQ(c.cloud_tokens, gen.max_new_tokens);
  EXPECT_EQ(http.connections(), 2u);  // the probe and the completion
  EXPECT_EQ(s.monitor().samples(), 1u);
  EXPECT_EQ(http.bytes(), c.bytes_up + s.monitor().bytes_up());
}

}  // namespace
