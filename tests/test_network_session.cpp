// Tests for include/specdec/hybrid/network_session.hpp and, through it, the uplink gate of
// the real network clients (hybrid/uplink.hpp): requests with and without personal data
// (tests/data/pii_corpus.tsv), of every privacy class, go through every route (device,
// cloud streaming, split greedy, split sampled, cloud prefix then device) and every arbiter
// the library ships plus an adversarial one, against a real specdec-serve on ephemeral
// loopback ports behind relays that count every byte the server receives. local_only
// requests open no connection and send zero bytes; the audit log's byte total equals, per
// destination, exactly what the server received.
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
#include "specdec/hybrid/network_session.hpp"
#include "specdec/hybrid/session.hpp"
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
  out.push_back(erase("confidence", hybrid::confidence_arbiter{.min_max_prob = 2.0f, .prefix_tokens = 3}));
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
                               ("specdec_network_session_" + std::to_string(::getpid()) + ".jsonl");
  temp_log() { std::filesystem::remove(path); }
  ~temp_log() { std::filesystem::remove(path); }
};

TEST(network_session, local_only_sends_zero_bytes_and_the_audit_equals_what_the_server_received) {
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
        hybrid::network_session s(
            device, arb, {.host = "127.0.0.1", .http_port = http.port(), .verify_port = verify.port()},
            {.sampling = sampled ? sampling_params{.temperature = 0.9f, .top_k = 20} : sampling_params{},
             .seed = 11,
             .audit = &audit,
             .encode = [&](std::string_view t) { return cloud.tok.encode(t); }},
            *detector);
        for (std::size_t i = 0; i < prompts.size(); ++i) {
          for (const auto declared : {privacy_class::local_only, privacy_class::redactable, privacy_class::cloud_allowed}) {
            const auto ids = cloud.tok.encode(prompts[i]->text);
            ASSERT_TRUE(http.wait_idle() && verify.wait_idle());
            const std::uint64_t bytes0 = http.bytes() + verify.bytes(), conns0 = http.connections() + verify.connections();
            const hybrid::network_result r =
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
            if (!may_leave) EXPECT_EQ(sent, 0u) << arb.name << ' ' << r.route_trace();
            if (may_leave) EXPECT_GT(sent, 0u) << arb.name << ' ' << r.route_trace();
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

}  // namespace
