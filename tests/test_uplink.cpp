// Tests for include/specdec/hybrid/uplink.hpp: request_privacy's conversions, the gate's
// decisions (the table of privacy/policy.hpp, asked before connecting), and that the
// network clients record every message with exactly the bytes they write: a scripted
// loopback peer reads what a completion_client sends, and the audit record's byte count
// and SHA-256 are those of what the peer read. Refused requests open no connection and
// leave no record. (The same over every route and arbiter against the real server:
// test_net_session.cpp.)
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include <nlohmann/json.hpp>

#include "serve_test_support.hpp"
#include "specdec/hybrid/completion_client.hpp"
#include "specdec/hybrid/uplink.hpp"
#include "specdec/hybrid/verify_client.hpp"

namespace {
using namespace specdec;
namespace pv = specdec::privacy;
using hybrid::request_privacy;
using hybrid::route;
using pv::privacy_class;

struct temp_log {
  std::filesystem::path path;
  explicit temp_log(const std::string& name)
      : path(std::filesystem::temp_directory_path() /
             ("specdec_uplink_" + name + "_" + std::to_string(::getpid()) + ".jsonl")) {
    std::filesystem::remove(path);
  }
  ~temp_log() { std::filesystem::remove(path); }
  [[nodiscard]] std::vector<nlohmann::json> records() const {
    std::ifstream in(path);
    std::vector<nlohmann::json> out;
    for (std::string l; std::getline(in, l);) out.push_back(nlohmann::json::parse(l));
    return out;
  }
};

/// Whether a connection is waiting on the listening socket `fd` within 100 ms.
bool connection_pending(int fd) {
  pollfd p{fd, POLLIN, 0};
  return ::poll(&p, 1, 100) > 0;
}

TEST(request_privacy, converts_from_the_two_valued_flag_and_from_a_detection) {
  const request_privacy local = hybrid::privacy::local_only, leave = hybrid::privacy::may_leave_device;
  EXPECT_EQ(local.level, privacy_class::local_only);
  EXPECT_EQ(leave.level, privacy_class::cloud_allowed);
  EXPECT_EQ(request_privacy(privacy_class::redactable).level, privacy_class::redactable);
  EXPECT_FALSE(leave.route.has_value());
  EXPECT_EQ(leave.route_or(route::in_cloud()), route::in_cloud());

  const pv::pii_detector detector;
  const auto d = detector.analyze("mail jane.doe@example.org or call +44 20 7946 0958", privacy_class::cloud_allowed);
  const request_privacy p = request_privacy::of(d, route::speculative(4));
  EXPECT_EQ(p.level, privacy_class::local_only);
  EXPECT_EQ(p.route_or(route::in_cloud()), route::speculative(4));
  EXPECT_EQ(p.detected[static_cast<std::size_t>(pv::pii_kind::email)], 1u);
  EXPECT_EQ(p.detected[static_cast<std::size_t>(pv::pii_kind::phone)], 1u);
}

TEST(uplink_gate, asks_the_policy_table_before_connecting_and_records_only_what_it_allows) {
  temp_log f("gate");
  pv::uplink_audit_log log(f.path.string());
  const route routes[] = {route::on_device(), route::in_cloud(), route::speculative(3), route::cloud_prefix(5)};
  std::size_t allowed = 0;
  for (const auto cls : {privacy_class::local_only, privacy_class::redactable, privacy_class::cloud_allowed})
    for (const auto form : {pv::payload_form::plain, pv::payload_form::redacted})
      for (const route& r : routes) {
        request_privacy p(cls);
        p.form = form;
        const hybrid::uplink_gate gate("127.0.0.1:9", route::in_cloud(), [&] {
          auto q = p;
          q.route = r;
          return q;
        }(), &log);
        const bool expected = pv::may_leave_device(cls, r, form);
        EXPECT_EQ(gate.allows(), expected);
        if (expected) {
          EXPECT_EQ(gate.before_connect("test"), hybrid::privacy::may_leave_device);
          gate.before_send(std::string_view("payload"), 2);
          ++allowed;
        } else {
          EXPECT_THROW((void)gate.before_connect("test"), hybrid::privacy_violation);
          EXPECT_THROW(gate.before_send(std::string_view("payload"), 2), pv::privacy_violation);
        }
      }
  EXPECT_EQ(allowed, 7u);  // cloud_allowed: 3 routes x 2 forms; redactable: cloud + redacted
  const auto recs = f.records();
  ASSERT_EQ(recs.size(), allowed);
  for (const auto& r : recs) {
    EXPECT_EQ(r["bytes"], 7);
    EXPECT_EQ(r["tokens"], 2);
    EXPECT_EQ(r["sha256"], pv::sha256_hex("payload"));
    EXPECT_NE(r["privacy_class"], "local_only");
  }
}

TEST(uplink_gate, refused_clients_open_no_connection_and_write_no_record) {
  temp_log f("refused");
  pv::uplink_audit_log log(f.path.string());
  auto [fd, port] = test_support::loopback_socket();
  hybrid::verify_client v("127.0.0.1", port, {.connect_timeout_seconds = 0.5, .request_timeout_seconds = 0.5,
                                              .audit = &log});
  request_privacy redactable(privacy_class::redactable);
  redactable.form = pv::payload_form::redacted;  // even redacted: split routes need the real context
  EXPECT_THROW(v.open(std::vector<token_id>{1, 2}, {}, 0, redactable), hybrid::privacy_violation);
  request_privacy on_device(privacy_class::cloud_allowed);
  on_device.route = route::on_device();  // an arbiter that says "device" gets no uplink either
  EXPECT_THROW(v.open(std::vector<token_id>{1, 2}, {}, 0, on_device), hybrid::privacy_violation);

  hybrid::completion_client c("127.0.0.1", port, {.connect_timeout_seconds = 0.5, .audit = &log});
  request_privacy prefix(privacy_class::redactable);
  prefix.route = route::cloud_prefix(4);
  prefix.form = pv::payload_form::redacted;
  EXPECT_THROW(c.complete({.prompt = {1, 2, 3}, .data = prefix}), hybrid::privacy_violation);
  EXPECT_THROW(c.complete({.prompt = {1, 2, 3}, .data = privacy_class::redactable}),  // plain on cloud
               hybrid::privacy_violation);
  EXPECT_THROW(c.complete({.prompt = {1, 2, 3}, .data = privacy_class::local_only}), hybrid::privacy_violation);
  EXPECT_FALSE(connection_pending(fd));
  EXPECT_TRUE(f.records().empty());
  EXPECT_EQ(v.bytes_sent() + c.bytes_sent(), 0u);
  ::close(fd);
}

/// A scripted HTTP peer: accepts one connection, reads the request (headers and the
/// Content-Length body), answers `response` and closes. `received` holds what it read.
struct scripted_peer {
  int fd = -1;
  std::uint16_t port = 0;
  std::string received;
  std::thread thread;
  explicit scripted_peer(std::string response) {
    std::tie(fd, port) = test_support::loopback_socket();
    thread = std::thread([this, response = std::move(response)] {
      const int c = ::accept(fd, nullptr, nullptr);
      char buf[4096];
      for (;;) {
        const auto end = received.find("\r\n\r\n");
        if (end != std::string::npos) {
          const auto cl = received.find("Content-Length: ");
          const std::size_t body = cl == std::string::npos || cl > end ? 0 : std::stoul(received.substr(cl + 16));
          if (received.size() >= end + 4 + body) break;
        }
        const ssize_t n = ::recv(c, buf, sizeof buf, 0);
        if (n <= 0) break;
        received.append(buf, static_cast<std::size_t>(n));
      }
      (void)::send(c, response.data(), response.size(), MSG_NOSIGNAL);
      ::close(c);
    });
  }
  ~scripted_peer() {
    if (thread.joinable()) thread.join();
    ::close(fd);
  }
};

TEST(uplink_gate, the_record_holds_exactly_the_bytes_the_peer_received) {
  temp_log f("exact");
  pv::uplink_audit_log log(f.path.string());
  const std::string sse =
      "data: {\"choices\":[{\"text\":\" a\",\"token_ids\":[7],\"finish_reason\":null}]}\n\n"
      "data: {\"choices\":[{\"text\":\" b\",\"token_ids\":[8],\"finish_reason\":\"length\"}]}\n\ndata: [DONE]\n\n";
  scripted_peer peer("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: " +
                     std::to_string(sse.size()) + "\r\n\r\n" + sse);
  hybrid::completion_client c("127.0.0.1", peer.port, {.audit = &log});
  request_privacy p = request_privacy::of(pv::pii_detector().analyze("no personal data here"), route::cloud_prefix(2));
  const auto r = c.complete({.prompt = {1, 450, 1171, 9}, .max_tokens = 2, .data = p});
  peer.thread.join();
  EXPECT_EQ(r.tokens, (std::vector<token_id>{7, 8}));
  const auto recs = f.records();
  ASSERT_EQ(recs.size(), 1u);
  EXPECT_EQ(recs[0]["bytes"], peer.received.size());
  EXPECT_EQ(recs[0]["bytes"], c.bytes_sent());
  EXPECT_EQ(recs[0]["sha256"], pv::sha256_hex(peer.received));
  EXPECT_EQ(recs[0]["tokens"], 4);
  EXPECT_EQ(recs[0]["route"], "cloud_prefix");
  EXPECT_EQ(recs[0]["prefix_tokens"], 2);
  EXPECT_EQ(recs[0]["destination"], "127.0.0.1:" + std::to_string(peer.port));
  EXPECT_EQ(recs[0]["privacy_class"], "cloud_allowed");
}

TEST(uplink_gate, health_probes_are_not_gated_by_a_request_but_are_recorded) {
  temp_log f("health");
  pv::uplink_audit_log log(f.path.string());
  const std::string body = R"({"status":"ok","verify_port":9,"vocab_size":512})";
  scripted_peer peer("HTTP/1.1 200 OK\r\nContent-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body);
  hybrid::completion_client c("127.0.0.1", peer.port, {.audit = &log});
  EXPECT_TRUE(c.health().ok);
  peer.thread.join();
  const auto recs = f.records();
  ASSERT_EQ(recs.size(), 1u);
  EXPECT_EQ(recs[0]["bytes"], peer.received.size());
  EXPECT_EQ(recs[0]["tokens"], 0);
  EXPECT_EQ(recs[0]["privacy_class"], "cloud_allowed");
}

}  // namespace
