// Tests for include/specdec/hybrid/verify_client.hpp (and transport.hpp) against
// specdec-serve's engine and verify listener, started in process on ephemeral loopback
// ports: greedy split decoding through the client equals the target's own greedy output;
// replayed sequence numbers are answered identically and applied once; malformed frames,
// unknown sessions and out-of-order sequence numbers get protocol errors while the server
// keeps serving; expired sessions and dropped connections are recovered transparently; a
// local_only request sends zero bytes; stopping the server fails in-flight work cleanly;
// open_and_verify sends its first block right behind open_session and decodes exactly as
// open then verify, also after a refused open.
#include <gtest/gtest.h>

#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <string>
#include <thread>
#include <tuple>
#include <variant>
#include <vector>

#include "specdec/backend/cpu/batched_transformer.hpp"
#include "specdec/backend/cpu/tokenizer.hpp"
#include "specdec/backend/cpu/transformer.hpp"
#include "specdec/decoder.hpp"
#include "specdec/hybrid/verify_client.hpp"
#include "specdec_serve/server.hpp"
#define SPECDEC_SERVE_TESTS
#include "serve_test_support.hpp"

namespace {
using namespace specdec;
using hybrid::verify_client;
namespace wire = hybrid::wire;

const std::string models = SPECDEC_MODELS_DIR;

// A target served in process.
struct served {
  cpu::batched_transformer model;
  serve::server<cpu::batched_transformer> srv;
  explicit served(const std::string& checkpoint, serve::serve_options o = test_support::serve_options())
      : model(checkpoint, {.threads = 1}), srv(model, {}, std::move(o)) {
    srv.start();
  }
};

// stories260K served with the tests' options changed by `tweak`, and the same model as
// the device's draft.
struct stories_pair {
  const std::string path = models + "/stories260K.bin";
  served s;
  cpu::transformer draft{path, {.threads = 1}};
  template <class F>
  explicit stories_pair(F tweak) : s(path, [&] {
    serve::serve_options o = test_support::serve_options();
    tweak(o);
    return o;
  }()) {}
};

// The target's own greedy continuation of `prompt` (n tokens, EOS not special).
std::vector<token_id> reference_greedy(cpu::transformer& target, const std::vector<token_id>& prompt, std::size_t n) {
  autoregressive_decoder ar(target);
  return ar.generate(prompt, {.max_new_tokens = n, .stop_at_eos = false}).tokens;
}
std::vector<token_id> reference_greedy(const std::string& checkpoint, const std::vector<token_id>& prompt,
                                       std::size_t n) {
  cpu::transformer target(checkpoint, {.threads = 1});
  autoregressive_decoder ar(target);
  return ar.generate(prompt, {.max_new_tokens = n, .stop_at_eos = false}).tokens;
}

using test_support::draft_greedy;
using test_support::split_greedy;

TEST(verify_client, greedy_split_decoding_equals_the_targets_greedy_output_kjv) {
  const std::string big = models + "/kjv-big.bin";
  served s(big);
  cpu::transformer little(models + "/kjv-little.bin", {.threads = 1});
  cpu::transformer target(big, {.threads = 1});
  cpu::tokenizer tok(models + "/kjv2k-tokenizer.bin", little.vocab_size());
  std::size_t announced = 0;
  for (const char* text : {"In the beginning", "The LORD is my shepherd"}) {
    const auto prompt = tok.encode(text);
    verify_client c("127.0.0.1", s.srv.verify_port());
    const auto got = split_greedy(c, little, prompt, 32);
    EXPECT_EQ(got, reference_greedy(target, prompt, 32)) << text;
    EXPECT_GT(c.bytes_sent(), 0u);
    EXPECT_GT(c.bytes_received(), 0u);
    EXPECT_GT(c.last_rtt_seconds(), 0.0);
    announced += c.max_draft() == 4 ? 1 : 0;
    // Greedy rounds cost a few dozen bytes: at most 100 per token, up plus down.
    EXPECT_LT(static_cast<double>(c.bytes_sent() + c.bytes_received()) / 32.0, 100.0);
  }
  EXPECT_EQ(announced, 2u);  // the fixed announcement reached the client
  EXPECT_GT(s.srv.metrics().value("specdec_tokens_total", "kind=\"accepted\""), 0.0);
}

TEST(verify_client, greedy_split_decoding_with_rejections_and_byte_budget) {
  const std::string path = models + "/stories260K.bin";
  served s(path);
  cpu::transformer draft(path, {.threads = 1});
  const std::vector<token_id> prompt{1, 403, 407, 261, 378};
  verify_client c("127.0.0.1", s.srv.verify_port());
  const auto got = split_greedy(c, draft, prompt, 60, /*corrupt=*/3);
  EXPECT_EQ(got, reference_greedy(path, prompt, 60));
  // Some drafts were rejected, some accepted.
  const double drafted = s.srv.metrics().value("specdec_tokens_total", "kind=\"drafted\"");
  const double accepted = s.srv.metrics().value("specdec_tokens_total", "kind=\"accepted\"");
  EXPECT_GT(accepted, 0.0);
  EXPECT_LT(accepted, drafted);
  const double per_token = static_cast<double>(c.bytes_sent() + c.bytes_received()) / 60.0;
  EXPECT_LT(per_token, 100.0) << c.bytes_sent() << " up, " << c.bytes_received() << " down";
  // Each token is fed once: the prefix but its last token at open, then per round the one
  // committed token the server has not seen (accepted drafts stay cached) plus the drafts.
  const double rounds = s.srv.metrics().value("specdec_verify_requests_total", "type=\"verify\",result=\"verdict\"");
  EXPECT_EQ(s.srv.metrics().sum("specdec_batch_rows"), static_cast<double>(prompt.size() - 1) + drafted + rounds);
}

// A sampling session whose draft is the target itself: q == p bit for bit, so rejection
// sampling accepts every draft; a q that puts mass where p has little is rejected often.
TEST(verify_client, sampled_verification_densifies_the_sent_support) {
  const std::string path = models + "/stories260K.bin";
  served s(path);
  cpu::transformer draft(path, {.threads = 1});
  const sampling_params params{.temperature = 0.9f, .top_k = 20};
  const std::vector<token_id> prompt{1, 403, 407};
  verify_client c("127.0.0.1", s.srv.verify_port());
  c.open(prompt, params, /*seed=*/7);
  sampler smp(params, 11);
  std::vector<token_id> seq = prompt, delta;
  std::vector<float> q(draft.vocab_size());
  std::size_t drafted = 0, accepted = 0, rejected_bad = 0, drafted_bad = 0;
  for (int round = 0; round < 12; ++round) {
    const bool bad = round % 2 == 1;  // odd rounds: claim q(x) = 1 for each drafted x
    draft.truncate(0);
    logits_block l = draft.forward(seq);
    std::vector<token_id> d;
    wire::sparse_rows rows;
    for (int i = 0; i < 3; ++i) {
      const token_id t = smp.next(l.row(l.rows - 1), q);
      if (bad) {
        rows.add_row(std::vector<token_id>{t}, std::vector<float>{1.0f});  // accepted w.p. p(x) only
      } else {
        rows.add_dense_row(q);
      }
      d.push_back(t);
      l = draft.forward(std::span<const token_id>(&d.back(), 1));
    }
    const auto v = c.verify(delta, d, &rows);
    ASSERT_LE(v.accepted, d.size());
    ASSERT_GE(v.next, 0);
    ASSERT_LT(v.next, static_cast<token_id>(draft.vocab_size()));
    if (bad) drafted_bad += d.size(), rejected_bad += v.accepted < d.size() ? 1 : 0;
    else drafted += d.size(), accepted += v.accepted;
    delta.assign(d.begin(), d.begin() + static_cast<std::ptrdiff_t>(v.accepted));
    delta.push_back(v.next);
    seq.insert(seq.end(), delta.begin(), delta.end());
  }
  EXPECT_EQ(accepted, drafted);  // q == p: always accepted
  EXPECT_GT(rejected_bad, 0u);   // a wrong q is caught
  // Greedy verification without q and sampled verification without q for k > 0 differ:
  EXPECT_THROW(c.verify(delta, std::vector<token_id>{5}), hybrid::remote_error);
}

// ---- the raw protocol ----

using test_support::raw_connection;
using test_support::error_of;

TEST(verify_protocol, replayed_sequence_numbers_are_answered_identically_and_applied_once) {
  const std::string path = models + "/stories260K.bin";
  served s(path);
  const std::vector<token_id> prompt{1, 403, 407, 261};
  const std::vector<token_id> greedy = reference_greedy(path, prompt, 8);
  raw_connection r(s.srv.verify_port());
  ASSERT_TRUE(std::holds_alternative<wire::session_opened>(r.ask(wire::open_session{.prefix = prompt})));
  // Round 1: draft the right first two tokens.
  const wire::verify_request v1{.seq = 1, .draft = {greedy[0], greedy[1]}};
  const wire::message a = r.ask(v1);
  const wire::message b = r.ask(v1);  // a retry of the same request
  ASSERT_TRUE(std::holds_alternative<wire::verdict>(a));
  EXPECT_EQ(a, b);
  EXPECT_EQ(std::get<wire::verdict>(a).accepted, 2u);
  EXPECT_EQ(std::get<wire::verdict>(a).next, greedy[2]);
  EXPECT_EQ(s.srv.metrics().value("specdec_verify_requests_total", "type=\"verify\",result=\"replay\""), 1.0);
  // The same seq with another body is refused, and so are gaps and old numbers.
  EXPECT_EQ(error_of(r.ask(wire::verify_request{.seq = 1, .draft = {greedy[0]}})), wire::error_code::bad_sequence);
  EXPECT_EQ(error_of(r.ask(wire::verify_request{.seq = 3})), wire::error_code::bad_sequence);
  EXPECT_EQ(error_of(r.ask(wire::verify_request{.seq = 0})), wire::error_code::bad_sequence);
  // Round 2 continues from the state after ONE application of round 1.
  const wire::message c = r.ask(wire::verify_request{.seq = 2, .committed = {greedy[0], greedy[1], greedy[2]},
                                                     .draft = {greedy[3], greedy[4]}});
  ASSERT_TRUE(std::holds_alternative<wire::verdict>(c)) << wire::name_of(c);
  EXPECT_EQ(std::get<wire::verdict>(c).accepted, 2u);
  EXPECT_EQ(std::get<wire::verdict>(c).next, greedy[5]);
}

TEST(verify_protocol, bad_requests_get_errors_and_the_server_keeps_serving) {
  const std::string path = models + "/stories260K.bin";
  served s(path);
  const std::vector<token_id> prompt{1, 403, 407};
  {
    raw_connection r(s.srv.verify_port());
    // No session on this connection yet / an unknown session.
    EXPECT_EQ(error_of(r.ask(wire::verify_request{.seq = 1, .draft = {3}})), wire::error_code::unknown_session);
    EXPECT_EQ(error_of(r.ask(wire::resume_session{})), wire::error_code::unknown_session);
    EXPECT_EQ(error_of(r.ask(wire::open_session{.version = 99, .prefix = prompt})),
              wire::error_code::unsupported_version);
    EXPECT_EQ(error_of(r.ask(wire::open_session{.prefix = {}})), wire::error_code::invalid_request);
    ASSERT_TRUE(std::holds_alternative<wire::session_opened>(r.ask(wire::open_session{.prefix = prompt})));
    // Context overflow: 512 - 3 committed tokens leave no room for 509 + 4.
    EXPECT_EQ(error_of(r.ask(wire::verify_request{.seq = 1, .committed = std::vector<token_id>(509, 5),
                                                   .draft = {1, 2, 3, 4}})),
              wire::error_code::invalid_request);
    // A server message sent by a client closes the connection.
    EXPECT_EQ(error_of(r.ask(wire::verdict{})), wire::error_code::invalid_request);
    EXPECT_THROW(r.receive(), hybrid::link_unavailable);
  }
  {
    // Bytes that are not a frame: answered `malformed`, then the connection is closed.
    raw_connection r(s.srv.verify_port());
    const std::vector<std::uint8_t> junk{3, 99, 1, 2};
    r.conn.send_all(junk, hybrid::deadline_after(2.0));
    EXPECT_EQ(error_of(r.receive()), wire::error_code::malformed);
    EXPECT_THROW(r.receive(), hybrid::link_unavailable);
  }
  {
    // An out-of-range token id and too many drafts are rejected by the decoder.
    raw_connection r(s.srv.verify_port());
    ASSERT_TRUE(std::holds_alternative<wire::session_opened>(r.ask(wire::open_session{.prefix = prompt})));
    EXPECT_EQ(error_of(r.ask(wire::verify_request{.seq = 1, .draft = {512}})), wire::error_code::malformed);
  }
  {
    raw_connection r(s.srv.verify_port());
    ASSERT_TRUE(std::holds_alternative<wire::session_opened>(r.ask(wire::open_session{.prefix = prompt})));
    EXPECT_EQ(error_of(r.ask(wire::verify_request{.seq = 1, .draft = std::vector<token_id>(17, 5)})),
              wire::error_code::malformed);
  }
  // After all that, a well-formed client still decodes exactly.
  cpu::transformer draft(path, {.threads = 1});
  verify_client c("127.0.0.1", s.srv.verify_port());
  EXPECT_EQ(split_greedy(c, draft, prompt, 20, 4), reference_greedy(path, prompt, 20));
  EXPECT_THROW(c.verify({}, std::vector<token_id>(17, 5)), specdec::invalid_argument);  // over draft_limit
}

TEST(verify_client, an_expired_session_is_reopened_with_the_committed_prefix) {
  stories_pair t([](serve::serve_options& o) { o.engine.session_ttl_seconds = 0.05; });
  auto& [path, s, draft] = t;
  const std::vector<token_id> prompt{1, 403, 407, 261, 378};
  verify_client c("127.0.0.1", s.srv.verify_port());
  const auto got = split_greedy(c, draft, prompt, 30, 3, [](std::size_t round) {
    if (round == 2 || round == 5) std::this_thread::sleep_for(std::chrono::milliseconds(300));
  });
  EXPECT_EQ(got, reference_greedy(path, prompt, 30));
  EXPECT_EQ(c.reopens(), 2u);
  EXPECT_GE(s.srv.metrics().value("specdec_sessions_expired_total"), 2.0);
}

TEST(verify_client, a_dropped_connection_is_resumed_without_reapplying) {
  // The server hangs up on idle connections.
  stories_pair t([](serve::serve_options& o) { o.listener.idle_timeout_seconds = 0.15; });
  auto& [path, s, draft] = t;
  const std::vector<token_id> prompt{1, 403, 407};
  verify_client c("127.0.0.1", s.srv.verify_port(), {.retries = 2});
  const auto got = split_greedy(c, draft, prompt, 30, 3, [](std::size_t round) {
    if (round == 3) std::this_thread::sleep_for(std::chrono::milliseconds(400));
  });
  EXPECT_EQ(got, reference_greedy(path, prompt, 30));
  EXPECT_GE(c.reconnects(), 1u);
  EXPECT_EQ(c.reopens(), 0u);  // the session survived; the connection was resumed
}

// A scripted server: accepts one connection on `fd` within 5 s and runs `script` on it;
// the connection's end (or a timeout) ends the script quietly.
template <class Script>
std::thread scripted_server(int fd, Script script) {
  return std::thread([fd, script = std::move(script)]() mutable {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 5000) <= 0) return;
    hybrid::tcp_connection conn(::accept4(fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC));
    std::vector<std::uint8_t> buf;
    try {
      script(conn, buf);
    } catch (const std::exception&) {
    }
  });
}

TEST(verify_client, open_and_verify_sends_the_first_block_behind_open_session) {
  // A scripted server that answers nothing until it has read two frames: a client that
  // waited for session_opened before sending its request would time out here.
  const auto [fd, port] = test_support::loopback_socket();
  std::vector<wire::message> seen;
  std::thread server = scripted_server(fd, [&](hybrid::tcp_connection& conn, std::vector<std::uint8_t>& buf) {
    for (int i = 0; i < 2; ++i) seen.push_back(hybrid::read_frame(conn, buf, {}, hybrid::deadline_after(5.0)).message);
    hybrid::write_frame(conn, wire::session_opened{{}, 512, 256, 3, 16}, hybrid::deadline_after(5.0));
    hybrid::write_frame(conn, wire::verdict{1, 1, 42, 3}, hybrid::deadline_after(5.0));
    (void)hybrid::read_frame(conn, buf, {}, hybrid::deadline_after(5.0));  // close_session
  });
  {
    verify_client c("127.0.0.1", port, {.request_timeout_seconds = 2.0, .retries = 0});
    const hybrid::verify_verdict v = c.open_and_verify(std::vector<token_id>{1, 5, 7}, std::vector<token_id>{9, 10});
    EXPECT_EQ(v.accepted, 1u);
    EXPECT_EQ(v.next, 42);
    EXPECT_EQ(v.max_draft, 3u);
    EXPECT_TRUE(c.connected());
    EXPECT_EQ(c.vocab_size(), 512u);
    // The next round continues the session: seq 2.
  }
  server.join();
  ::close(fd);
  ASSERT_EQ(seen.size(), 2u);
  ASSERT_TRUE(std::holds_alternative<wire::open_session>(seen[0]));
  EXPECT_EQ(std::get<wire::open_session>(seen[0]).prefix, (std::vector<token_id>{1, 5, 7}));
  ASSERT_TRUE(std::holds_alternative<wire::verify_request>(seen[1]));
  const auto& r = std::get<wire::verify_request>(seen[1]);
  EXPECT_EQ(r.seq, 1u);
  EXPECT_TRUE(r.committed.empty());
  EXPECT_EQ(r.draft, (std::vector<token_id>{9, 10}));
}

TEST(verify_client, following_tokens_come_only_after_a_request_without_drafts) {
  // A scripted server: the first request (no drafts) is answered with two following
  // tokens, which the client returns; the second (one draft) with one, which no server
  // may send: a protocol error.
  const auto [fd, port] = test_support::loopback_socket();
  std::thread server = scripted_server(fd, [](hybrid::tcp_connection& conn, std::vector<std::uint8_t>& buf) {
    for (int i = 0; i < 2; ++i) (void)hybrid::read_frame(conn, buf, {}, hybrid::deadline_after(5.0));
    hybrid::write_frame(conn, wire::session_opened{{}, 512, 256, 0, 16}, hybrid::deadline_after(5.0));
    hybrid::write_frame(conn, wire::verdict{1, 0, 42, 1, {43, 44}}, hybrid::deadline_after(5.0));
    (void)hybrid::read_frame(conn, buf, {}, hybrid::deadline_after(5.0));
    hybrid::write_frame(conn, wire::verdict{2, 0, 7, 0, {8}}, hybrid::deadline_after(5.0));
    (void)hybrid::read_frame(conn, buf, {}, hybrid::deadline_after(2.0));
  });
  {
    verify_client c("127.0.0.1", port, {.request_timeout_seconds = 2.0, .retries = 0});
    const hybrid::verify_verdict v = c.open_and_verify(std::vector<token_id>{1, 5, 7}, {});
    EXPECT_EQ(v.next, 42);
    EXPECT_EQ(v.following, (std::vector<token_id>{43, 44}));
    EXPECT_THROW((void)c.verify(std::vector<token_id>{42, 43, 44}, std::vector<token_id>{9}), hybrid::protocol_error);
  }
  server.join();
  ::close(fd);
}

TEST(verify_client, open_and_verify_decodes_like_open_then_verify_and_recovers_from_a_refused_open) {
  stories_pair t([](serve::serve_options& o) { o.engine.max_sessions = 1; });
  auto& [path, s, draft] = t;
  const std::vector<token_id> prompt{1, 403, 407, 261, 378};
  verify_client c("127.0.0.1", s.srv.verify_port(), {.retries = 0});
  {
    // The server is full: the open is refused, and the answer to the request behind it
    // (no session on the connection) must not be read as the next call's answer.
    verify_client other("127.0.0.1", s.srv.verify_port());
    other.open(prompt);
    EXPECT_THROW(c.open_and_verify(prompt, std::vector<token_id>{5}), hybrid::link_unavailable);
  }
  // `other` closed its session on the way out; the server applies the close in its own time.
  for (int i = 0; i < 500 && s.srv.metrics().value("specdec_active_sessions") > 0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  const auto got = split_greedy(c, draft, prompt, 40, /*corrupt=*/3, [](std::size_t) {}, /*first_block=*/4);
  EXPECT_EQ(got, reference_greedy(path, prompt, 40));
  EXPECT_EQ(c.reopens(), 0u);
}

// A listener that counts every connection and byte it receives.
struct counting_listener {
  int fd = -1;
  std::uint16_t port = 0;
  std::atomic<std::size_t> connections{0}, bytes{0};
  std::atomic<bool> stop{false};
  std::thread th;
  counting_listener() {
    std::tie(fd, port) = test_support::loopback_socket();
    th = std::thread([this] {
      while (!stop) {
        pollfd p{fd, POLLIN, 0};
        if (::poll(&p, 1, 20) <= 0) continue;
        const int c = ::accept(fd, nullptr, nullptr);
        if (c < 0) continue;
        ++connections;
        char buf[4096];
        pollfd q{c, POLLIN, 0};
        while (::poll(&q, 1, 50) > 0) {
          const ssize_t n = ::recv(c, buf, sizeof buf, 0);
          if (n <= 0) break;
          bytes += static_cast<std::size_t>(n);
        }
        ::close(c);
      }
    });
  }
  ~counting_listener() {
    stop = true;
    th.join();
    ::close(fd);
  }
};

TEST(verify_client, a_local_only_session_sends_nothing) {
  counting_listener l;
  {
    verify_client c("127.0.0.1", l.port);
    EXPECT_THROW(c.open(std::vector<token_id>{1, 2, 3}, {}, 0, hybrid::privacy::local_only),
                 hybrid::privacy_violation);
    EXPECT_THROW(c.verify(std::vector<token_id>{4}, std::vector<token_id>{5}), hybrid::privacy_violation);
    EXPECT_EQ(c.bytes_sent(), 0u);
    EXPECT_THROW(hybrid::tcp_connection::connect("127.0.0.1", l.port, 1.0, hybrid::privacy::local_only),
                 hybrid::privacy_violation);
  }
  // The control: a request that may leave does reach the listener.
  {
    verify_client c("127.0.0.1", l.port, {.request_timeout_seconds = 0.2, .retries = 0});
    EXPECT_THROW(c.open(std::vector<token_id>{1, 2, 3}), hybrid::link_unavailable);
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  EXPECT_EQ(l.connections.load(), 1u);
  EXPECT_GT(l.bytes.load(), 0u);
}

TEST(verify_client, an_unreachable_server_is_link_unavailable) {
  // A port that was just free: bound, never listened on, closed.
  const auto [fd, port] = test_support::loopback_socket(/*listen=*/false);
  ::close(fd);
  verify_client c("127.0.0.1", port, {.connect_timeout_seconds = 0.5, .retries = 1});
  EXPECT_THROW(c.open(std::vector<token_id>{1, 2}), hybrid::link_unavailable);
  EXPECT_FALSE(c.connected());
}

TEST(verify_client, stopping_the_server_fails_in_flight_work_cleanly) {
  const std::string path = models + "/stories260K.bin";
  auto s = std::make_unique<served>(path);
  cpu::transformer draft(path, {.threads = 1});
  const std::vector<token_id> prompt{1, 403, 407};
  verify_client c("127.0.0.1", s->srv.verify_port(), {.retries = 0});
  std::atomic<bool> failed_cleanly{false};
  std::thread device([&] {  // decodes until the server goes away
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    try {
      while (std::chrono::steady_clock::now() < until) split_greedy(c, draft, prompt, 200, 3);
    } catch (const hybrid::link_unavailable&) {
      failed_cleanly = true;
    }
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  const auto t0 = std::chrono::steady_clock::now();
  s->srv.stop();
  device.join();
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 3.0);
  EXPECT_TRUE(failed_cleanly);
  EXPECT_FALSE(s->srv.running());
}

}  // namespace
