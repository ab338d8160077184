// Tests for specdec-serve's API keys, limits and bounds (server/specdec_serve/auth.hpp,
// http_watchdog.hpp, and their use in http_api.hpp, verify_listener.hpp and engine.hpp),
// with the server in process on ephemeral loopback ports: the key file parser (good and
// bad lines), constant-time lookup and token buckets; wrong or missing keys get 401 /
// `unauthorized` and the right key works; rate limits give 429 / `rate_limited` and
// recover; session quotas; a session is invisible to other keys; an expired session is
// reopened by the client with its key and the output still equals the target's greedy
// output; max_tokens caps, deep JSON and bad values get 4xx and the server keeps serving;
// slow HTTP clients and silent verify connections are cut.
#include <gtest/gtest.h>

#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "specdec/backend/cpu/batched_transformer.hpp"
#include "specdec/backend/cpu/transformer.hpp"
#include "specdec/decoder.hpp"
#include "specdec/hybrid/completion_client.hpp"
#include "specdec/hybrid/verify_client.hpp"
#include "specdec_serve/auth.hpp"
#include "specdec_serve/server.hpp"
#define SPECDEC_SERVE_TESTS
#include "serve_test_support.hpp"

namespace {
using namespace specdec;
using serve::json;
namespace wire = hybrid::wire;
using test_support::error_of;
using test_support::raw_connection;

const std::string models = SPECDEC_MODELS_DIR;
const std::string model_path = models + "/stories260K.bin";

const std::string key_a = "sk-test-alpha-0123456789abcdef";
const std::string key_b = "sk-test-bravo-fedcba9876543210";
const std::string key_slow = "sk-test-slow-00000000000000000";

// A served stories260K (no tokenizer: prompts are token ids) with the given key file text.
struct served {
  cpu::batched_transformer model;
  serve::server<cpu::batched_transformer> srv;
  httplib::Client http;
  served(const std::string& keys, serve::serve_options o = test_support::serve_options())
      : model(model_path, {.threads = 1}),
        srv(model, {}, with_keys(std::move(o), keys)),
        http("127.0.0.1", (srv.start(), srv.http_port())) {
    http.set_read_timeout(30, 0);
  }
  static serve::serve_options with_keys(serve::serve_options o, const std::string& keys) {
    o.engine.model_id = "stories260K";
    if (!keys.empty()) o.api_keys = serve::parse_api_keys(keys, "test keys");
    return o;
  }
  // POST /v1/completions with an optional bearer key: (status, parsed body).
  std::pair<int, json> post(const std::string& body, const std::string& key) {
    httplib::Headers h;
    if (!key.empty()) h.emplace("Authorization", "Bearer " + key);
    auto r = http.Post("/v1/completions", h, body, "application/json");
    if (!r) return {-1, json(httplib::to_string(r.error()))};
    json j = json::parse(r->body, nullptr, false);
    return {r->status, j.is_discarded() ? json(r->body) : j};
  }
  int get(const std::string& path, const std::string& key) {
    httplib::Headers h;
    if (!key.empty()) h.emplace("Authorization", "Bearer " + key);
    auto r = http.Get(path.c_str(), h);
    return r ? r->status : -1;
  }
};

const std::string two_keys = key_a + " name=alpha max_tokens=8 sessions=2\n" + key_b + " name=bravo\n";

std::vector<token_id> reference_greedy(const std::vector<token_id>& prompt, std::size_t n) {
  cpu::transformer target(model_path, {.threads = 1});
  autoregressive_decoder ar(target);
  return ar.generate(prompt, {.max_new_tokens = n, .stop_at_eos = false}).tokens;
}

// Split greedy decoding through `c`, drafting with the target itself, every third draft
// token corrupted so rounds also end in rejections; `between(round)` runs before each.
template <class Between>
std::vector<token_id> split_greedy(hybrid::verify_client& c, const std::vector<token_id>& prompt, std::size_t n,
                                   Between between) {
  cpu::transformer draft(model_path, {.threads = 1});
  return test_support::split_greedy(c, draft, prompt, n, 3, between);
}

// ---- the key file and the ring ----

TEST(api_keys, parse_reads_keys_limits_and_comments) {
  const std::string text = "# the fleet\n\n" + key_a +
                           "   name=fleet rps=2.5 burst=4 sessions=3 max_tokens=64  # trailing comment\n" + key_b +
                           "\n   \n";
  const auto keys = serve::parse_api_keys(text, "keys.txt");
  ASSERT_EQ(keys.size(), 2u);
  EXPECT_EQ(keys[0].name, "fleet");
  EXPECT_EQ(keys[0].limits.requests_per_second, 2.5);
  EXPECT_EQ(keys[0].limits.burst, 4.0);
  EXPECT_EQ(keys[0].limits.max_sessions, 3u);
  EXPECT_EQ(keys[0].limits.max_tokens, 64u);
  EXPECT_EQ(keys[1].name, "line4");  // default label: its line
  EXPECT_EQ(keys[1].limits.requests_per_second, 0.0);
  EXPECT_EQ(keys[1].limits.burst, 1.0);
  EXPECT_EQ(keys[0].digest, serve::digest_of(key_a));  // only the digest is kept

  serve::key_ring ring(keys);
  EXPECT_TRUE(ring.enabled());
  const auto a = ring.authenticate(key_a), b = ring.authenticate(key_b);
  ASSERT_TRUE(a && b);
  EXPECT_EQ(a->key, 1u);
  EXPECT_EQ(a->max_sessions, 3u);
  EXPECT_EQ(b->key, 2u);
  EXPECT_EQ(ring.name(*a), "fleet");
  EXPECT_EQ(ring.limits(*a).max_tokens, 64u);
  for (const std::string& wrong : {std::string(), key_a + "x", key_a.substr(0, key_a.size() - 1),
                                   std::string(key_a.size(), 'a'), "Bearer " + key_a})
    EXPECT_FALSE(ring.authenticate(wrong).has_value()) << wrong;
  // An open server (no keys) admits everyone as principal 0, unlimited.
  serve::key_ring open;
  EXPECT_FALSE(open.enabled());
  ASSERT_TRUE(open.authenticate("anything").has_value());
  EXPECT_EQ(open.authenticate("")->key, 0u);
  EXPECT_TRUE(open.admit({}));
}

TEST(api_keys, bad_lines_name_the_file_and_line_and_never_the_key) {
  const std::string good = key_a + "\n";
  const auto expect_bad = [&](const std::string& line, const std::string& says) {
    try {
      (void)serve::parse_api_keys(good + line + "\n", "/etc/keys.txt");
      ADD_FAILURE() << "accepted: " << line;
    } catch (const invalid_argument& e) {
      const std::string what = e.what();
      EXPECT_NE(what.find("/etc/keys.txt:2"), std::string::npos) << what;
      EXPECT_NE(what.find(says), std::string::npos) << what;
      EXPECT_EQ(what.find(key_a), std::string::npos) << "the message shows a key: " << what;
      EXPECT_EQ(what.find(key_b), std::string::npos) << "the message shows a key: " << what;
    }
  };
  expect_bad("short-key", "9 characters");
  expect_bad(std::string(600, 'k'), "600 characters");
  expect_bad("sk-test-with:colon-0123456789", "character outside");
  expect_bad(key_b + " rps=fast", "rps=fast");
  expect_bad(key_b + " rps=-1", "rps=-1");
  expect_bad(key_b + " sessions=1.5", "whole number");
  expect_bad(key_b + " quota=3", "unknown limit 'quota'");
  expect_bad(key_b + " rps", "expected name=value");
  expect_bad(key_b + " name=a:b", "name=a:b");
  expect_bad(key_b + " burst=0.5", "burst below 1");
  expect_bad(key_a, "the key of line1 again");
  expect_bad("name=fleet " + key_b, "the first word must be the key");
  EXPECT_THROW((void)serve::parse_api_keys("# only comments\n\n", "empty.txt"), invalid_argument);
  try {
    (void)serve::load_api_keys("/no/such/keys.txt");
    ADD_FAILURE();
  } catch (const invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("/no/such/keys.txt"), std::string::npos) << e.what();
  }
  // A file on disk reads like its text.
  const auto path = std::filesystem::temp_directory_path() / ("specdec_keys_" + std::to_string(::getpid()) + ".txt");
  std::ofstream(path) << good << key_b << " rps=1\n";
  EXPECT_EQ(serve::load_api_keys(path).size(), 2u);
  std::filesystem::remove(path);
}

TEST(api_keys, the_token_bucket_limits_and_refills) {
  serve::key_ring ring(serve::parse_api_keys(key_a + " rps=2 burst=3\n" + key_b + "\n", "t"));
  const serve::principal a = *ring.authenticate(key_a), b = *ring.authenticate(key_b);
  const auto t0 = serve::clock::now();
  EXPECT_TRUE(ring.admit(a, t0));
  EXPECT_TRUE(ring.admit(a, t0));
  EXPECT_TRUE(ring.admit(a, t0));
  EXPECT_FALSE(ring.admit(a, t0));  // the burst is spent
  for (int i = 0; i < 100; ++i) EXPECT_TRUE(ring.admit(b, t0));  // no limit for b, nor is b charged for a
  EXPECT_FALSE(ring.admit(a, t0 + std::chrono::milliseconds(400)));  // 0.8 tokens
  EXPECT_TRUE(ring.admit(a, t0 + std::chrono::milliseconds(500)));   // 1 token
  EXPECT_FALSE(ring.admit(a, t0 + std::chrono::milliseconds(500)));
  const auto later = t0 + std::chrono::seconds(60);  // refills to the burst, not beyond
  for (int i = 0; i < 3; ++i) EXPECT_TRUE(ring.admit(a, later));
  EXPECT_FALSE(ring.admit(a, later));
}

// ---- HTTP ----

TEST(serve_auth, http_needs_the_right_bearer_key) {
  served s(two_keys);
  const std::string body = R"({"prompt": [1, 403, 407], "max_tokens": 4, "temperature": 0})";
  for (const std::string& key : {std::string(), std::string("sk-wrong-0123456789abcdef"), key_a + "0"}) {
    auto [status, j] = s.post(body, key);
    EXPECT_EQ(status, 401) << key;
    ASSERT_TRUE(j.is_object() && j.contains("error")) << j.dump();
    EXPECT_EQ(j["error"]["code"], "invalid_api_key");
    EXPECT_EQ(j["error"]["type"], "invalid_request_error");
    EXPECT_TRUE(j["error"]["message"].is_string());
  }
  EXPECT_EQ(s.get("/v1/models", ""), 401);
  EXPECT_EQ(s.get("/metrics", ""), 401);
  EXPECT_EQ(s.get("/health", ""), 200);  // liveness stays open; it carries no content
  // The right key (either of them, any case of the scheme) works.
  auto [ok, j] = s.post(body, key_a);
  EXPECT_EQ(ok, 200) << j.dump();
  EXPECT_EQ(s.post(body, key_b).first, 200);
  httplib::Headers lower{{"Authorization", "bearer " + key_b}};
  auto r = s.http.Get("/v1/models", lower);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  EXPECT_GE(s.srv.metrics().value("specdec_rejected_requests_total", "port=\"http\",reason=\"unauthorized\""), 5.0);
  // The device's client: a wrong key is a clean remote_error 401, the right key streams.
  hybrid::completion_client wrong("127.0.0.1", s.srv.http_port(), {.api_key = "sk-wrong-0123456789abcdef"});
  try {
    (void)wrong.complete({.prompt = {1, 403}, .max_tokens = 4});
    ADD_FAILURE() << "a wrong key was accepted";
  } catch (const hybrid::remote_error& e) {
    EXPECT_EQ(e.status(), 401);
  }
  hybrid::completion_client right("127.0.0.1", s.srv.http_port(), {.api_key = key_b});
  const auto got = right.complete({.prompt = {1, 403, 407}, .max_tokens = 12, .params = {.temperature = 0.0f}});
  const auto want = reference_greedy({1, 403, 407}, 12);
  EXPECT_EQ(got.tokens, std::vector<token_id>(want.begin(), want.begin() + static_cast<std::ptrdiff_t>(got.tokens.size())));
  EXPECT_FALSE(got.tokens.empty());
  EXPECT_THROW(hybrid::completion_client("127.0.0.1", 1, {.api_key = "bad key\r\nX: y"}), invalid_argument);
}

TEST(serve_auth, a_rate_limit_gives_429_then_recovers) {
  served s(key_a + " rps=1 burst=2\n" + key_b + "\n");
  EXPECT_EQ(s.get("/v1/models", key_a), 200);
  EXPECT_EQ(s.get("/v1/models", key_a), 200);
  httplib::Headers h{{"Authorization", "Bearer " + key_a}};
  auto r = s.http.Get("/v1/models", h);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 429);
  EXPECT_EQ(r->get_header_value("Retry-After"), "1");
  const json e = json::parse(r->body);
  EXPECT_EQ(e["error"]["code"], "rate_limit_exceeded");
  EXPECT_EQ(e["error"]["type"], "requests");
  EXPECT_EQ(s.get("/v1/models", key_b), 200);  // another key is not limited by a's bucket
  // The device's client treats 429 as "not now": decode on the device.
  hybrid::completion_client c("127.0.0.1", s.srv.http_port(), {.api_key = key_a});
  EXPECT_THROW((void)c.complete({.prompt = {1, 403}, .max_tokens = 2}), hybrid::link_unavailable);
  std::this_thread::sleep_for(std::chrono::milliseconds(1100));  // > 1 token at 1/s
  EXPECT_EQ(s.post(R"({"prompt": [1, 403], "max_tokens": 2})", key_a).first, 200);
  EXPECT_GE(s.srv.metrics().value("specdec_rejected_requests_total", "port=\"http\",reason=\"rate_limited\""), 2.0);
}

TEST(serve_auth, a_keys_max_tokens_cap_is_a_400) {
  served s(two_keys);  // alpha: max_tokens=8
  auto [over, j] = s.post(R"({"prompt": [1, 403], "max_tokens": 9})", key_a);
  EXPECT_EQ(over, 400);
  EXPECT_EQ(j["error"]["param"], "max_tokens");
  EXPECT_EQ(j["error"]["code"], "max_tokens_exceeded");
  auto [at, k] = s.post(R"({"prompt": [1, 403], "max_tokens": 8, "temperature": 0})", key_a);
  EXPECT_EQ(at, 200) << k.dump();
  auto [dflt, d] = s.post(R"({"prompt": [1, 403], "temperature": 0})", key_a);  // default 16 -> the cap
  ASSERT_EQ(dflt, 200) << d.dump();
  EXPECT_LE(d["usage"]["completion_tokens"].get<int>(), 8);
  EXPECT_EQ(s.post(R"({"prompt": [1, 403], "max_tokens": 100})", key_b).first, 200);  // bravo has no cap
}

TEST(serve_bounds, deep_json_bad_types_and_ids_get_400_and_a_good_request_still_works) {
  served s(two_keys);
  const auto status = [&](const std::string& body) { return s.post(body, key_b).first; };
  EXPECT_EQ(status(std::string(100000, '[') + std::string(100000, ']')), 400);  // far past the depth limit
  EXPECT_EQ(status(R"({"prompt": {"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": {"i": {"j": {"k": {"l": {"m": {"n": {"o": {"p": {"q": 1}}}}}}}}}}}}}}}}})"), 400);
  EXPECT_EQ(status(R"({"prompt": [1, 512]})"), 400);                 // id == vocab
  EXPECT_EQ(status(R"({"prompt": [1, 18446744073709551615]})"), 400);  // u64 max
  EXPECT_EQ(status(R"({"prompt": [1, -2147483649]})"), 400);
  EXPECT_EQ(status(R"({"prompt": [1, true]})"), 400);
  EXPECT_EQ(status(R"({"prompt": [1, 2], "max_tokens": 1e3})"), 400);
  EXPECT_EQ(status(R"({"prompt": [1, 2], "max_tokens": 9223372036854775808})"), 400);
  EXPECT_EQ(status(R"({"prompt": [1, 2], "top_k": -1})"), 400);
  EXPECT_EQ(status(R"({"prompt": [1, 2], "stream_options": []})"), 400);
  EXPECT_EQ(status(R"({"prompt": [1, 2], "stop": [1]})"), 400);
  EXPECT_EQ(status(R"({"prompt": "text without a tokenizer"})"), 400);
  EXPECT_EQ(status("\xff\xfe{}"), 400);
  auto [ok, j] = s.post(R"({"prompt": [1, 403, 407], "max_tokens": 6, "temperature": 0, "return_token_ids": true})", key_b);
  ASSERT_EQ(ok, 200) << j.dump();
  EXPECT_EQ(j["choices"][0]["token_ids"].get<std::vector<token_id>>(), reference_greedy({1, 403, 407}, 6));
}

// A client that trickles its request (a byte now and then, each within the read timeout)
// is cut at the request deadline; it cannot hold one of the workers, and the others serve.
TEST(serve_bounds, a_slow_http_client_is_cut_and_cannot_pin_a_worker) {
  serve::serve_options o = test_support::serve_options();
  o.http_threads = 2;
  o.watchdog.request_timeout_seconds = 0.6;
  o.watchdog.scan_seconds = 0.05;
  served s(two_keys, o);
  std::vector<int> slow;
  for (int i = 0; i < 2; ++i) {  // as many as there are workers
    const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons(s.srv.http_port());
    ASSERT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
    const std::string head = "POST /v1/completions HTTP/1.1\r\nHost: x\r\n";
    ASSERT_EQ(::send(fd, head.data(), head.size(), MSG_NOSIGNAL), static_cast<ssize_t>(head.size()));
    slow.push_back(fd);
  }
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<bool> closed(slow.size(), false);
  while (std::chrono::steady_clock::now() - t0 < std::chrono::seconds(10) &&
         std::find(closed.begin(), closed.end(), false) != closed.end()) {
    for (std::size_t i = 0; i < slow.size(); ++i) {
      if (closed[i]) continue;
      char c = 'X';  // one more header byte, well within the 10 s read timeout
      if (::send(slow[i], &c, 1, MSG_NOSIGNAL) != 1) closed[i] = true;
      char buf[256];
      const ssize_t n = ::recv(slow[i], buf, sizeof buf, MSG_DONTWAIT);
      if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK)) closed[i] = true;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  for (std::size_t i = 0; i < slow.size(); ++i) EXPECT_TRUE(closed[i]) << "slow connection " << i << " still open";
  EXPECT_LT(waited, 9.0);
  EXPECT_GE(s.srv.connections_cut(), 2u);
  for (int fd : slow) ::close(fd);
  // A well-behaved client is served: its request arrives whole, long within the deadline.
  auto [ok, j] = s.post(R"({"prompt": [1, 403], "max_tokens": 60, "temperature": 0})", key_b);
  EXPECT_EQ(ok, 200) << j.dump();
}

// ---- the verify port ----

TEST(serve_auth, the_verify_port_needs_the_right_key) {
  served s(two_keys);
  const std::vector<token_id> prompt{1, 403, 407, 261};
  {
    raw_connection r(s.srv.verify_port());  // no key: refused, and the connection is closed
    EXPECT_EQ(error_of(r.ask(wire::open_session{.prefix = prompt})), wire::error_code::unauthorized);
    EXPECT_THROW(r.receive(), hybrid::link_unavailable);
  }
  {
    raw_connection r(s.srv.verify_port());
    EXPECT_EQ(error_of(r.ask(wire::resume_session{.api_key = "sk-wrong-0123456789abcdef"})),
              wire::error_code::unauthorized);
  }
  hybrid::verify_client wrong("127.0.0.1", s.srv.verify_port(), {.api_key = "sk-wrong-0123456789abcdef"});
  try {
    wrong.open(prompt);
    ADD_FAILURE() << "a wrong key was accepted";
  } catch (const hybrid::remote_error& e) {
    EXPECT_EQ(e.code(), static_cast<int>(wire::error_code::unauthorized));
  }
  hybrid::verify_client right("127.0.0.1", s.srv.verify_port(), {.api_key = key_b});
  EXPECT_EQ(split_greedy(right, prompt, 24, [](std::size_t) {}), reference_greedy(prompt, 24));
  EXPECT_GE(s.srv.metrics().value("specdec_rejected_requests_total", "port=\"verify\",reason=\"unauthorized\""), 3.0);
}

TEST(serve_auth, verify_requests_draw_from_the_keys_bucket) {
  served s(key_a + " rps=1 burst=3\n");
  raw_connection r(s.srv.verify_port());
  ASSERT_TRUE(std::holds_alternative<wire::session_opened>(r.ask(wire::open_session{.api_key = key_a, .prefix = {1, 403}})));
  ASSERT_TRUE(std::holds_alternative<wire::verdict>(r.ask(wire::verify_request{.seq = 1})));
  ASSERT_TRUE(std::holds_alternative<wire::verdict>(r.ask(wire::verify_request{.seq = 1})));  // a retry counts too
  const wire::message m = r.ask(wire::verify_request{.seq = 2});
  EXPECT_EQ(error_of(m), wire::error_code::rate_limited);
  EXPECT_EQ(std::get<wire::error_reply>(m).seq, 2u);
  std::this_thread::sleep_for(std::chrono::milliseconds(1100));
  const wire::message again = r.ask(wire::verify_request{.seq = 2});  // nothing was applied: seq 2 is next
  EXPECT_TRUE(std::holds_alternative<wire::verdict>(again)) << wire::name_of(again);
}

TEST(serve_auth, a_key_holds_at_most_its_quota_of_sessions) {
  served s(two_keys);  // alpha: sessions=2
  const auto open = [&](raw_connection& r, const std::string& key) {
    return r.ask(wire::open_session{.api_key = key, .prefix = {1, 403}});
  };
  raw_connection a1(s.srv.verify_port()), a2(s.srv.verify_port()), a3(s.srv.verify_port()), b1(s.srv.verify_port());
  ASSERT_TRUE(std::holds_alternative<wire::session_opened>(open(a1, key_a)));
  ASSERT_TRUE(std::holds_alternative<wire::session_opened>(open(a2, key_a)));
  EXPECT_EQ(error_of(open(a3, key_a)), wire::error_code::rate_limited);
  EXPECT_TRUE(std::holds_alternative<wire::session_opened>(open(b1, key_b)));  // bravo's own quota
  // The device's client decodes on the device while the quota is full...
  hybrid::verify_client c("127.0.0.1", s.srv.verify_port(), {.retries = 0, .api_key = key_a});
  EXPECT_THROW(c.open(std::vector<token_id>{1, 403}), hybrid::link_unavailable);
  // ...and gets a session once one is closed.
  hybrid::write_frame(a1.conn, wire::close_session{}, hybrid::deadline_after(2.0));
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  wire::message m;
  do {
    m = open(a3, key_a);
  } while (!std::holds_alternative<wire::session_opened>(m) && std::chrono::steady_clock::now() < until);
  EXPECT_TRUE(std::holds_alternative<wire::session_opened>(m));
}

// Another key gets exactly the answer an unknown session gets, so it learns nothing.
TEST(serve_auth, a_session_is_usable_only_with_the_key_that_opened_it) {
  served s(two_keys);
  const std::vector<token_id> prompt{1, 403, 407};
  raw_connection owner(s.srv.verify_port());
  const wire::message opened = owner.ask(wire::open_session{.api_key = key_a, .prefix = prompt});
  ASSERT_TRUE(std::holds_alternative<wire::session_opened>(opened));
  const wire::session_id id = std::get<wire::session_opened>(opened).id;
  wire::session_id other = id;
  other[0] ^= 0x5a;
  const auto answer = [&](const wire::session_id& sid, const std::string& key) {
    raw_connection r(s.srv.verify_port());
    wire::message m = r.ask(wire::resume_session{.id = sid, .api_key = key});
    if (auto* e = std::get_if<wire::error_reply>(&m)) {  // the id is echoed; compare the rest
      const std::string hex = wire::to_hex(sid);
      if (const auto at = e->text.find(hex); at != std::string::npos) e->text.replace(at, hex.size(), "<id>");
    }
    return m;
  };
  const wire::message foreign = answer(id, key_b), unknown = answer(other, key_b);
  EXPECT_EQ(error_of(foreign), wire::error_code::unknown_session);
  EXPECT_EQ(foreign, unknown);
  // The owner still has it: resuming and verifying on a new connection work.
  const wire::message back = answer(id, key_a);
  EXPECT_TRUE(std::holds_alternative<wire::session_opened>(back)) << wire::name_of(back);
  const wire::message v = owner.ask(wire::verify_request{.seq = 1});
  ASSERT_TRUE(std::holds_alternative<wire::verdict>(v)) << wire::name_of(v);
  EXPECT_EQ(std::get<wire::verdict>(v).next, reference_greedy(prompt, 1)[0]);
}

TEST(serve_auth, an_expired_session_fails_cleanly_and_the_client_reopens_it_with_its_key) {
  serve::serve_options o = test_support::serve_options();
  o.engine.session_ttl_seconds = 0.05;
  served s(two_keys, o);
  const std::vector<token_id> prompt{1, 403, 407, 261, 378};
  {
    raw_connection r(s.srv.verify_port());
    ASSERT_TRUE(std::holds_alternative<wire::session_opened>(r.ask(wire::open_session{.api_key = key_b, .prefix = prompt})));
    std::this_thread::sleep_for(std::chrono::milliseconds(400));
    EXPECT_EQ(error_of(r.ask(wire::verify_request{.seq = 1})), wire::error_code::unknown_session);
  }
  hybrid::verify_client c("127.0.0.1", s.srv.verify_port(), {.api_key = key_b});
  const auto got = split_greedy(c, prompt, 30, [](std::size_t round) {
    if (round == 2 || round == 5) std::this_thread::sleep_for(std::chrono::milliseconds(300));
  });
  EXPECT_EQ(got, reference_greedy(prompt, 30));
  EXPECT_EQ(c.reopens(), 2u);
  EXPECT_GE(s.srv.metrics().value("specdec_sessions_expired_total"), 3.0);
}

TEST(serve_bounds, silent_and_trickling_verify_connections_are_closed) {
  serve::serve_options o = test_support::serve_options();
  o.listener.handshake_timeout_seconds = 0.3;
  o.listener.frame_timeout_seconds = 0.3;
  o.listener.idle_timeout_seconds = 0.6;
  served s("", o);  // an open server: the timeouts hold without keys too
  const auto closed_within = [](raw_connection& r, double seconds) {
    const auto t0 = std::chrono::steady_clock::now();
    try {
      std::uint8_t b[16];
      while (true) (void)r.conn.recv_some(b, hybrid::deadline_after(seconds));
    } catch (const hybrid::link_timeout&) {
      return false;
    } catch (const hybrid::link_unavailable&) {
      return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() < seconds;
    }
  };
  raw_connection silent(s.srv.verify_port());
  EXPECT_TRUE(closed_within(silent, 5.0));
  raw_connection trickle(s.srv.verify_port());
  const std::vector<std::uint8_t> part{30, 1, 2};  // a 30-byte open_session, begun and never finished
  trickle.conn.send_all(part, hybrid::deadline_after(1.0));
  EXPECT_TRUE(closed_within(trickle, 5.0));
  raw_connection idle(s.srv.verify_port());
  ASSERT_TRUE(std::holds_alternative<wire::session_opened>(idle.ask(wire::open_session{.prefix = {1, 403}})));
  EXPECT_TRUE(closed_within(idle, 5.0));
  // The session outlives its connection: a client resumes it and the server still serves.
  hybrid::verify_client c("127.0.0.1", s.srv.verify_port());
  const std::vector<token_id> prompt{1, 403, 407};
  EXPECT_EQ(split_greedy(c, prompt, 12, [](std::size_t) {}), reference_greedy(prompt, 12));
}

// The server keeps no tokens of a finished completion or a closed session: their
// sequences are gone from the model (whose pooled caches are zeroed on removal).
TEST(serve_stateless, finished_requests_and_closed_sessions_leave_no_sequence) {
  served s(two_keys);
  EXPECT_EQ(s.post(R"({"prompt": [1, 403, 407], "max_tokens": 5})", key_b).first, 200);
  {
    hybrid::verify_client c("127.0.0.1", s.srv.verify_port(), {.api_key = key_b});
    (void)split_greedy(c, {1, 403, 407}, 8, [](std::size_t) {});
  }  // the destructor closes the session
  // The engine updates these counters (atomics) after removing the sequences, so once
  // they read 0 the model's sequence table is safe to read from this thread.
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while ((s.srv.core().sessions() != 0 || s.srv.core().completions() != 0) && std::chrono::steady_clock::now() < until)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_EQ(s.srv.core().sessions(), 0u);
  EXPECT_EQ(s.srv.core().completions(), 0u);
  EXPECT_EQ(s.model.sequence_count(), 0u);
}

#ifdef SPECDEC_SERVE_BINARY
// The program: a bad key file stops it with the file and line; a good one is announced
// and enforced; stderr never shows a key.
struct child {
  pid_t pid = -1;
  int err = -1;
  explicit child(const std::vector<std::string>& extra) {
    int p[2];
    if (::pipe(p) != 0) return;
    pid = ::fork();
    if (pid == 0) {
      ::dup2(p[1], 2);
      ::close(p[0]);
      std::vector<std::string> args{SPECDEC_SERVE_BINARY, "--model", model_path, "--port", "0", "--no-calibrate",
                                    "--http-threads", "2"};
      args.insert(args.end(), extra.begin(), extra.end());
      std::vector<char*> argv;
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      ::execv(SPECDEC_SERVE_BINARY, argv.data());
      ::_exit(127);
    }
    ::close(p[1]);
    err = p[0];
  }
  std::string line() {
    std::string l;
    char ch = 0;
    while (::read(err, &ch, 1) == 1 && ch != '\n') l += ch;
    return l;
  }
  int wait(bool terminate) {
    if (terminate) ::kill(pid, SIGTERM);
    const int status = test_support::wait_for_exit(pid, 10.0);
    ::close(err);
    return status;
  }
};

TEST(serve_auth, the_program_names_a_bad_key_file_line_and_enforces_a_good_one) {
  const auto dir = std::filesystem::temp_directory_path();
  const auto bad = dir / ("specdec_bad_keys_" + std::to_string(::getpid()) + ".txt");
  const auto good = dir / ("specdec_good_keys_" + std::to_string(::getpid()) + ".txt");
  std::ofstream(bad) << key_a << "\n" << key_b << " quota=3\n";
  std::ofstream(good) << "# one key\n" << key_a << " name=alpha\n";
  {
    child c({"--api-keys", bad.string()});
    const std::string msg = c.line();
    EXPECT_EQ(c.wait(false), 1);
    EXPECT_NE(msg.find(bad.string() + ":2"), std::string::npos) << msg;
    EXPECT_NE(msg.find("unknown limit 'quota'"), std::string::npos) << msg;
    EXPECT_EQ(msg.find(key_b), std::string::npos) << msg;
  }
  {
    child c({"--api-keys", good.string()});
    std::string first = c.line(), all = first;
    for (std::string l; all.find("API keys") == std::string::npos && !(l = c.line()).empty();) all += "\n" + l;
    EXPECT_NE(all.find("1 API keys from " + good.string()), std::string::npos) << all;
    EXPECT_EQ(all.find(key_a), std::string::npos) << all;
    const auto at = first.find("127.0.0.1:");
    ASSERT_NE(at, std::string::npos) << first;
    httplib::Client http("127.0.0.1", std::stoi(first.substr(at + 10)));
    auto no = http.Get("/v1/models");
    auto yes = http.Get("/v1/models", httplib::Headers{{"Authorization", "Bearer " + key_a}});
    ASSERT_TRUE(no && yes);
    EXPECT_EQ(no->status, 401);
    EXPECT_EQ(yes->status, 200);
    EXPECT_EQ(c.wait(true), 0);
  }
  {
    child c({});
    std::string all;
    for (std::string l; all.find("--api-keys") == std::string::npos && !(l = c.line()).empty();) all += l + "\n";
    EXPECT_NE(all.find("no --api-keys: both ports are open"), std::string::npos) << all;
    EXPECT_EQ(c.wait(true), 0);
  }
  std::filesystem::remove(bad);
  std::filesystem::remove(good);
}
#endif

}  // namespace
