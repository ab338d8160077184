// Tests for include/specdec/privacy/audit.hpp and the specdec-audit summary
// (tools/audit_summary.hpp): records are well-formed JSON with every field and never the
// payload; the log is append-only, also with several processes writing at once; the gate
// refuses before anything is recorded or sent; and, through a byte-counting stand-in for
// the server, local_only requests send zero bytes under every route any arbiter returns
// while the audit's totals equal what the server received.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "audit_summary.hpp"
#include "pii_corpus.hpp"
#include "specdec/hybrid/arbiter.hpp"
#include "specdec/privacy/audit.hpp"
#include "specdec/privacy/detector.hpp"
#include "specdec/privacy/redaction.hpp"

namespace {
namespace pv = specdec::privacy;
using pv::privacy_class;
using specdec::hybrid::route;
using specdec::hybrid::route_kind;

// A fresh path in the temporary directory, removed with the object.
struct temp_log {
  std::filesystem::path path;
  explicit temp_log(const std::string& name)
      : path(std::filesystem::temp_directory_path() /
             ("specdec_" + name + "_" + std::to_string(::getpid()) + ".jsonl")) {
    std::filesystem::remove(path);
  }
  ~temp_log() { std::filesystem::remove(path); }
  std::vector<std::string> lines() const {
    std::ifstream in(path);
    std::vector<std::string> out;
    for (std::string l; std::getline(in, l);) out.push_back(l);
    return out;
  }
};

TEST(audit_record, has_every_field_and_never_the_payload) {
  const std::string payload = R"({"prompt":"the very secret payload text"})";
  pv::uplink_message m{.destination = "cloud.example:443",
                       .route = route::speculative(5),
                       .privacy = privacy_class::redactable,
                       .form = pv::payload_form::redacted,
                       .payload = payload,
                       .tokens = 12};
  m.detected[static_cast<std::size_t>(pv::pii_kind::email)] = 2;
  m.detected[static_cast<std::size_t>(pv::pii_kind::iban)] = 1;
  const auto t = std::chrono::system_clock::time_point(std::chrono::microseconds(1764931872123456));
  const std::string line = pv::audit_record(m, t);
  ASSERT_FALSE(line.empty());
  EXPECT_EQ(line.back(), '\n');
  EXPECT_EQ(line.find('\n'), line.size() - 1);
  EXPECT_EQ(line.find("secret"), std::string::npos) << "the payload must never be written";
  const auto r = nlohmann::json::parse(line);
  EXPECT_EQ(r["time"], "2025-12-05T10:51:12.123456Z");
  EXPECT_EQ(r["destination"], "cloud.example:443");
  EXPECT_EQ(r["route"], "speculative");
  EXPECT_EQ(r["gamma"], 5);
  EXPECT_EQ(r["prefix_tokens"], 0);
  EXPECT_EQ(r["privacy_class"], "redactable");
  EXPECT_EQ(r["decision"]["pii"], true);
  EXPECT_EQ(r["decision"]["spans"], (nlohmann::json{{"EMAIL", 2}, {"IBAN", 1}}));
  EXPECT_EQ(r["decision"]["payload"], "redacted");
  EXPECT_EQ(r["bytes"], payload.size());
  EXPECT_EQ(r["tokens"], 12);
  EXPECT_EQ(r["sha256"], pv::sha256_hex(payload));
  // A clean request: no spans, pii false.
  const auto clean = nlohmann::json::parse(pv::audit_record(
      {.destination = "h:1", .route = route::in_cloud(), .privacy = privacy_class::cloud_allowed, .payload = ""}, t));
  EXPECT_EQ(clean["decision"]["pii"], false);
  EXPECT_TRUE(clean["decision"]["spans"].empty());
  EXPECT_EQ(clean["bytes"], 0);
}

TEST(audit_record, escapes_or_rejects_odd_destinations) {
  const auto t = std::chrono::system_clock::now();
  const auto r = nlohmann::json::parse(pv::audit_record(
      {.destination = R"(h"x\y:1)", .route = route::in_cloud(), .privacy = privacy_class::cloud_allowed}, t));
  EXPECT_EQ(r["destination"], R"(h"x\y:1)");
  for (std::string bad :
       {std::string(""), std::string("a b"), std::string("a\nb"), std::string("caf\xc3\xa9"), std::string(513, 'x')}) {
    EXPECT_THROW((void)pv::audit_record({.destination = bad, .route = route::in_cloud()}, t), specdec::invalid_argument)
        << bad;
  }
}

TEST(uplink_audit_log, appends_without_touching_earlier_records) {
  temp_log f("append");
  { std::ofstream(f.path) << "{\"earlier\":\"line\"}\n"; }
  const pv::uplink_message m{.destination = "127.0.0.1:9",
                             .route = route::in_cloud(),
                             .privacy = privacy_class::cloud_allowed,
                             .payload = "abc",
                             .tokens = 1};
  {
    pv::uplink_audit_log log(f.path.string());
    log.append(m);
    pv::uplink_audit_log moved = std::move(log);
    moved.append(m);
  }
  pv::uplink_audit_log(f.path.string()).append(m);  // reopened: appends again
  const auto lines = f.lines();
  ASSERT_EQ(lines.size(), 4u);
  EXPECT_EQ(lines[0], "{\"earlier\":\"line\"}");
  for (std::size_t i = 1; i < lines.size(); ++i) EXPECT_EQ(nlohmann::json::parse(lines[i])["bytes"], 3);
}

TEST(uplink_audit_log, creates_the_file_private) {
  temp_log f("mode");
  pv::uplink_audit_log log(f.path.string());
  struct stat st {};
  ASSERT_EQ(::stat(f.path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
}

TEST(uplink_audit_log, unopenable_path_fails_naming_it) {
  try {
    pv::uplink_audit_log log("/nonexistent-dir-specdec/uplink.jsonl");
    FAIL() << "expected audit_error";
  } catch (const pv::audit_error& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent-dir-specdec/uplink.jsonl"), std::string::npos) << e.what();
  }
}

TEST(uplink_audit_log, concurrent_processes_append_whole_records) {
  temp_log f("processes");
  constexpr int children = 4, per_child = 300;
  std::vector<pid_t> pids;
  for (int c = 0; c < children; ++c) {
    const pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      int status = 0;
      try {
        pv::uplink_audit_log log(f.path.string());
        const std::string dest = "child-" + std::to_string(c) + ":1";
        const std::string payload(static_cast<std::size_t>(100 + c), 'p');
        for (int i = 0; i < per_child; ++i)
          log.append({.destination = dest,
                      .route = route::in_cloud(),
                      .privacy = privacy_class::cloud_allowed,
                      .payload = payload,
                      .tokens = static_cast<std::size_t>(c)});
      } catch (...) {
        status = 1;
      }
      ::_exit(status);  // no gtest teardown in the child
    }
    pids.push_back(pid);
  }
  for (pid_t pid : pids) {
    int status = 0;
    ASSERT_EQ(::waitpid(pid, &status, 0), pid);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  }
  specdec::audit_tool::summary s;
  std::ifstream in(f.path);
  s.read(in, f.path.string());  // throws on any torn or interleaved line
  EXPECT_EQ(s.all.messages, static_cast<std::uint64_t>(children * per_child));
  std::uint64_t bytes = 0;
  for (int c = 0; c < children; ++c) {
    const auto& t = s.by_destination.at("child-" + std::to_string(c) + ":1");
    EXPECT_EQ(t.messages, static_cast<std::uint64_t>(per_child));
    EXPECT_EQ(t.bytes, static_cast<std::uint64_t>(per_child * (100 + c)));
    EXPECT_EQ(t.tokens, static_cast<std::uint64_t>(per_child * c));
    bytes += t.bytes;
  }
  EXPECT_EQ(s.all.bytes, bytes);
}

TEST(audit_summary, rejects_malformed_records_naming_the_line) {
  const std::string good = pv::audit_record(
      {.destination = "d:1", .route = route::in_cloud(), .privacy = privacy_class::cloud_allowed, .payload = "x"},
      std::chrono::system_clock::now());
  auto patched = [&](const char* key, const nlohmann::json& value) {
    auto j = nlohmann::json::parse(good);
    j[key] = value;
    return j.dump();
  };
  for (const std::string& bad : {std::string(R"({"time":"t")"), std::string("[1,2]"), std::string("{}"),
                                 patched("bytes", -1), patched("route", "moon"), patched("sha256", "xyz"),
                                 patched("privacy_class", "public"), patched("decision", 1)}) {
    std::istringstream in(good + bad + "\n");
    specdec::audit_tool::summary s;
    try {
      s.read(in, "log.jsonl");
      FAIL() << "accepted: " << bad;
    } catch (const specdec::invalid_argument& e) {
      EXPECT_NE(std::string(e.what()).find("log.jsonl:2"), std::string::npos) << e.what();
    }
  }
}

// ---------------------------------------------------------------------------------------
// A stand-in for the client transport and the server: it executes the uplink messages of a
// route (the prompt, then one verification message per speculative round), asking the gate
// before connecting and before every message, and the "server" counts every byte it gets.

struct counting_server {
  std::uint64_t bytes = 0, messages = 0, connections = 0;
  std::vector<std::string> received;
};

struct request {
  std::string prompt;
  pv::detection detection;
};

void execute(const request& q, const route& r, counting_server& server, pv::uplink_audit_log& log) {
  if (!r.uses_cloud()) return;
  std::string payload = q.prompt;
  auto form = pv::payload_form::plain;
  if (q.detection.decision == privacy_class::redactable && r.kind == route_kind::cloud) {
    payload = pv::redact(q.prompt, q.detection.spans).text;
    form = pv::payload_form::redacted;
  }
  std::vector<std::pair<std::string, std::size_t>> messages{{payload, 0}};  // (bytes, tokens)
  if (r.kind == route_kind::speculative)
    for (int round = 0; round < 3; ++round) messages.emplace_back(std::string(4 * (r.gamma + 1), 't'), r.gamma + 1);
  // The transport's hook: refuse before opening a connection.
  if (!pv::may_leave_device(q.detection.decision, r, form)) return;  // the device answers instead
  ++server.connections;
  for (const auto& [bytes, tokens] : messages) {
    pv::authorize_uplink({.destination = "127.0.0.1:8080",
                          .route = r,
                          .privacy = q.detection.decision,
                          .form = form,
                          .detected = q.detection.counts(),
                          .payload = bytes,
                          .tokens = tokens},
                         &log);
    server.bytes += bytes.size();
    ++server.messages;
    server.received.push_back(bytes);
  }
}

TEST(uplink_gate, local_only_requests_send_zero_bytes_under_every_route_and_arbiter) {
  const auto rows = specdec::testing::read_pii_corpus(SPECDEC_TEST_DATA_DIR "/pii_corpus.tsv");
  temp_log f("gate");
  pv::uplink_audit_log log(f.path.string());
  counting_server server;
  std::mt19937_64 rng(17);
  // Arbiters of the library plus an adversarial one that returns any route at random.
  const specdec::hybrid::random_arbiter coin{.cloud_fraction = 0.7, .seed = 3};
  const specdec::hybrid::confidence_arbiter nervous{.min_max_prob = 2.0f, .prefix_tokens = 8,
                                                    .read_lookahead = false};  // never confident (prompt features)
  const specdec::hybrid::latency_arbiter latency{.costs = {.t_device_per_token = 1.0, .t_cloud_per_token = 0.001}};
  const route fixed[] = {route::on_device(), route::in_cloud(), route::speculative(4), route::cloud_prefix(16)};
  const pv::pii_detector strict;                                               // detected -> local_only
  const pv::pii_detector opt_in({.on_detection = privacy_class::redactable});  // detected -> redactable
  std::uint64_t local_requests = 0, cloud_routes_for_local = 0, redacted_sent = 0;
  for (std::size_t i = 0; i < rows.size(); i += 3) {
    const auto& row = rows[i];
    const auto declared = static_cast<privacy_class>(rng() % 3);
    const request q{row.text, (rng() % 2 ? strict : opt_in).analyze(row.text, declared)};
    const specdec::hybrid::request_features feats{.prompt_tokens = row.text.size() / 4,
                                                  .draft_mean_entropy = 3.0f,
                                                  .draft_max_prob_mean = 0.2f,
                                                  .predicted_length = 64,
                                                  .predicted_difficulty = 0.9,
                                                  .request_id = i};
    std::vector<route> routes{coin.decide(feats, {}, {}), nervous.decide(feats, {}, {}), latency.decide(feats, {}, {}),
                              fixed[rng() % 4]};
    route adversarial;
    adversarial.kind = static_cast<route_kind>(rng() % 4);
    adversarial.gamma = 1 + rng() % 8;
    adversarial.prefix_tokens = 1 + rng() % 32;
    routes.push_back(adversarial);
    for (const auto& r : routes) {
      const auto before = server.bytes;
      const auto sent_before = server.received.size();
      execute(q, r, server, log);
      if (q.detection.decision == privacy_class::local_only) {
        ++local_requests;
        cloud_routes_for_local += r.uses_cloud();
        EXPECT_EQ(server.bytes, before) << row.id << " route " << to_string(r.kind);
      }
      // What a redactable request sends holds none of its detected values.
      if (q.detection.decision == privacy_class::redactable && server.received.size() > sent_before) {
        ++redacted_sent;
        for (const auto& s : q.detection.spans)
          EXPECT_EQ(server.received[sent_before].find(row.text.substr(s.begin, s.size())), std::string::npos) << row.id;
      }
    }
  }
  EXPECT_GT(local_requests, 1000u);
  EXPECT_GT(cloud_routes_for_local, 500u);  // the arbiters did try to send them
  EXPECT_GT(redacted_sent, 20u);
  EXPECT_GT(server.bytes, 0u);
  // The audit's totals equal what the server received.
  specdec::audit_tool::summary s;
  std::ifstream in(f.path);
  s.read(in, f.path.string());
  EXPECT_EQ(s.all.bytes, server.bytes);
  EXPECT_EQ(s.all.messages, server.messages);
  EXPECT_EQ(s.by_class.count("local_only"), 0u);
  std::uint64_t by_route = 0;
  for (const auto& [k, v] : s.by_route) by_route += v.bytes;
  EXPECT_EQ(by_route, server.bytes);
}

TEST(uplink_gate, a_refused_message_is_neither_recorded_nor_sent) {
  temp_log f("refused");
  pv::uplink_audit_log log(f.path.string());
  const pv::uplink_message refused{.destination = "127.0.0.1:1",
                                   .route = route::speculative(3),
                                   .privacy = privacy_class::redactable,
                                   .form = pv::payload_form::redacted,
                                   .payload = "x"};
  EXPECT_THROW(pv::authorize_uplink(refused, &log), pv::privacy_violation);
  EXPECT_TRUE(f.lines().empty());
  pv::uplink_message allowed = refused;
  allowed.route = route::in_cloud();
  pv::authorize_uplink(allowed, &log);
  EXPECT_EQ(f.lines().size(), 1u);
  EXPECT_NO_THROW(pv::authorize_uplink(allowed, nullptr));  // no log configured
}

}  // namespace
