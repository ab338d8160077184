// Tests for include/specdec/hybrid/completion_client.hpp without a model: the incremental
// HTTP response and server-sent-events parsers on every split of their input and on
// malformed input, and the client against a scripted loopback server (chunked and
// close-delimited streams, 4xx / 5xx answers, a stream cut short, a silent server), plus
// the privacy gate. Its run against specdec-serve is in test_serve.cpp.
#include <gtest/gtest.h>

#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "serve_test_support.hpp"
#include "specdec/hybrid/completion_client.hpp"

namespace {
using namespace specdec;
using hybrid::http_response_parser;
using hybrid::sse_parser;

// Feeds `bytes` to a fresh parser in pieces of `step` bytes; returns (status, body).
std::pair<int, std::string> parse_http(const std::string& bytes, std::size_t step, bool close_at_end = false) {
  std::string body;
  http_response_parser p([&](std::string_view s) { body += s; });
  for (std::size_t i = 0; i < bytes.size(); i += step) p.feed(std::string_view(bytes).substr(i, step));
  if (close_at_end) p.finish();
  EXPECT_TRUE(p.complete());
  return {p.status(), body};
}

TEST(http_response_parser, content_length_chunked_and_close_delimited_bodies) {
  const std::string cl = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A:  b \r\n\r\nhello";
  const std::string chunked =
      "HTTP/1.1 201 Created\r\ntransfer-encoding: Chunked\r\n\r\n5;ext=1\r\nhello\r\nA\r\n, world!!!\r\n0\r\nT: x\r\n\r\n";
  const std::string closed = "HTTP/1.0 500 Oops\r\n\r\nuntil the end";
  for (std::size_t step : {1u, 2u, 3u, 7u, 1000u}) {
    EXPECT_EQ(parse_http(cl, step), std::make_pair(200, std::string("hello")));
    EXPECT_EQ(parse_http(chunked, step), std::make_pair(201, std::string("hello, world!!!")));
    EXPECT_EQ(parse_http(closed, step, true), std::make_pair(500, std::string("until the end")));
  }
  http_response_parser p(nullptr);
  p.feed(cl);
  EXPECT_EQ(p.header("x-a"), "b");
  EXPECT_EQ(p.header("missing"), "");
}

TEST(http_response_parser, rejects_malformed_and_oversized_responses) {
  const auto rejects = [](const std::string& bytes, hybrid::http_limits lim = {}) {
    http_response_parser p(nullptr, lim);
    EXPECT_THROW(
        {
          p.feed(bytes);
          p.finish();
        },
        hybrid::protocol_error)
        << bytes;
  };
  rejects("SMTP/1.1 200 OK\r\n\r\n");
  rejects("HTTP/1.1 2x0 OK\r\n\r\n");
  rejects("HTTP/1.1 200 OK\r\nno colon here\r\n\r\n");
  rejects("HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\n");
  rejects("HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n");
  rejects("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n");
  rejects("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcdef\r\n");  // chunk longer than its size
  rejects("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort");                   // closed early
  rejects("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nabEXTRA");                   // bytes after the end
  rejects("HTTP/1.1 200 OK\r\n" + std::string(10000, 'a') + "\r\n\r\n");             // line too long
  rejects("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n", {.max_body_bytes = 10});
  rejects("HTTP/1.1 200 OK\r\n\r\n" + std::string(100, 'x'), {.max_body_bytes = 10});
}

TEST(sse_parser, events_across_any_split) {
  const std::string s = ": comment\nevent: x\ndata: {\"a\":1}\n\ndata:two\r\ndata: lines\r\n\r\nid: 3\n\ndata: [DONE]\n\n";
  for (std::size_t step : {1u, 2u, 5u, 100u}) {
    std::vector<std::string> got;
    sse_parser p([&](std::string_view d) { got.emplace_back(d); });
    for (std::size_t i = 0; i < s.size(); i += step) p.feed(std::string_view(s).substr(i, step));
    EXPECT_EQ(got, (std::vector<std::string>{"{\"a\":1}", "two\nlines", "[DONE]"}));
  }
  sse_parser small([](std::string_view) {}, 16);
  EXPECT_THROW(small.feed("data: " + std::string(100, 'x') + "\n"), hybrid::protocol_error);
}

// A loopback server that answers the first connection with a scripted response.
struct scripted_server {
  int fd = -1;
  std::uint16_t port = 0;
  std::string request;
  std::thread th;
  explicit scripted_server(std::string response, bool hang = false) {
    std::tie(fd, port) = test_support::loopback_socket();
    th = std::thread([this, response = std::move(response), hang] {
      pollfd p{fd, POLLIN, 0};
      if (::poll(&p, 1, 3000) <= 0) return;
      const int c = ::accept(fd, nullptr, nullptr);
      char buf[4096];
      pollfd q{c, POLLIN, 0};
      // The headers, and for a POST its JSON body.
      while (request.find("\r\n\r\n") == std::string::npos ||
             (request.rfind("POST", 0) == 0 && request.find('}') == std::string::npos)) {
        if (::poll(&q, 1, 1000) <= 0) break;
        const ssize_t n = ::recv(c, buf, sizeof buf, 0);
        if (n <= 0) break;
        request.append(buf, static_cast<std::size_t>(n));
      }
      if (!hang) (void)::send(c, response.data(), response.size(), MSG_NOSIGNAL);
      else ::poll(&q, 1, 1500);
      ::close(c);
    });
  }
  ~scripted_server() {
    th.join();
    ::close(fd);
  }
};

std::string chunk(const std::string& s) {
  char head[32];
  std::snprintf(head, sizeof head, "%zx\r\n", s.size());
  return head + s + "\r\n";
}
std::string event(const std::string& text, const std::string& ids, const char* finish = nullptr) {
  return "data: {\"choices\":[{\"text\":\"" + text + "\",\"token_ids\":[" + ids + "],\"finish_reason\":" +
         (finish ? "\"" + std::string(finish) + "\"" : std::string("null")) + "}]}\n\n";
}

TEST(completion_client, streams_chunks_from_a_chunked_response) {
  const std::string body = event("Hel", "5,6") + event("lo", "7", "length") +
                           "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":2,\"completion_tokens\":3}}\n\n" +
                           "data: [DONE]\n\n";
  std::string resp = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n";
  for (std::size_t i = 0; i < body.size(); i += 17) resp += chunk(body.substr(i, 17));
  resp += "0\r\n\r\n";
  scripted_server srv(resp);
  hybrid::completion_client c("127.0.0.1", srv.port);
  std::vector<std::string> pieces;
  const auto r = c.complete({.prompt = {1, 2}, .max_tokens = 3, .seed = 9},
                            [&](const hybrid::completion_chunk& ch) { pieces.push_back(ch.text); });
  EXPECT_EQ(r.text, "Hello");
  EXPECT_EQ(r.tokens, (std::vector<token_id>{5, 6, 7}));
  EXPECT_EQ(r.finish_reason, "length");
  EXPECT_EQ(r.prompt_tokens, 2u);
  EXPECT_EQ(r.completion_tokens, 3u);
  EXPECT_EQ(pieces, (std::vector<std::string>{"Hel", "lo"}));
  EXPECT_EQ(c.bytes_received(), resp.size());
  EXPECT_EQ(c.bytes_sent(), srv.request.size());
  // What it asked for: token ids, streaming, the sampling knobs.
  const auto json_at = srv.request.find("\r\n\r\n");
  const auto req = nlohmann::json::parse(srv.request.substr(json_at + 4));
  EXPECT_EQ(req["prompt"], (std::vector<int>{1, 2}));
  EXPECT_EQ(req["stream"], true);
  EXPECT_EQ(req["return_token_ids"], true);
  EXPECT_EQ(req["seed"], 9);
  EXPECT_EQ(req["temperature"], 0.0);
}

TEST(completion_client, errors_map_to_exceptions) {
  {
    const std::string body = R"({"error":{"message":"bad prompt","type":"x"}})";
    scripted_server srv("HTTP/1.1 400 Bad Request\r\nContent-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body);
    hybrid::completion_client c("127.0.0.1", srv.port);
    try {
      c.complete({.prompt = {1}});
      ADD_FAILURE();
    } catch (const hybrid::remote_error& e) {
      EXPECT_EQ(e.status(), 400);
      EXPECT_NE(std::string(e.what()).find("bad prompt"), std::string::npos);
    }
  }
  {
    scripted_server srv("HTTP/1.1 503 Service Unavailable\r\nContent-Length: 2\r\n\r\n{}");
    hybrid::completion_client c("127.0.0.1", srv.port);
    EXPECT_THROW(c.complete({.prompt = {1}}), hybrid::link_unavailable);
  }
  {
    // A stream cut short (no [DONE]): link_unavailable, the device continues on its own.
    scripted_server srv("HTTP/1.1 200 OK\r\n\r\n" + event("a", "3"));
    hybrid::completion_client c("127.0.0.1", srv.port);
    std::vector<token_id> seen;
    EXPECT_THROW(c.complete({.prompt = {1}}, [&](const hybrid::completion_chunk& ch) {
                   seen.insert(seen.end(), ch.tokens.begin(), ch.tokens.end());
                 }),
                 hybrid::link_unavailable);
    EXPECT_EQ(seen, (std::vector<token_id>{3}));  // what arrived was delivered
  }
  {
    scripted_server srv("HTTP/1.1 200 OK\r\n\r\ndata: not json\n\n");
    hybrid::completion_client c("127.0.0.1", srv.port);
    EXPECT_THROW(c.complete({.prompt = {1}}), hybrid::protocol_error);
  }
  {
    scripted_server srv("", /*hang=*/true);
    hybrid::completion_client c("127.0.0.1", srv.port, {.read_timeout_seconds = 0.2});
    EXPECT_THROW(c.complete({.prompt = {1}}), hybrid::link_timeout);
  }
}

TEST(completion_client, health) {
  {
    const std::string body = R"({"status":"draining","model":"m","verify_port":4321,"vocab_size":10})";
    scripted_server srv("HTTP/1.1 503 Service Unavailable\r\nContent-Length: " + std::to_string(body.size()) +
                        "\r\n\r\n" + body);
    const hybrid::server_health h = hybrid::completion_client("127.0.0.1", srv.port).health();
    EXPECT_FALSE(h.ok);
    EXPECT_EQ(h.status, "draining");
    EXPECT_EQ(h.verify_port, 4321);
    EXPECT_TRUE(h.step_time_curve.empty());  // a server that reports none
    EXPECT_EQ(srv.request.rfind("GET /health HTTP/1.1\r\n", 0), 0u);
  }
  {  // specdec-serve's measured step-time curve, (rows, seconds) pairs
    const std::string body = R"({"status":"ok","step_time_curve":[[1,0.001],[4.5,0.0025]]})";
    scripted_server srv("HTTP/1.1 200 OK\r\nContent-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body);
    const hybrid::server_health h = hybrid::completion_client("127.0.0.1", srv.port).health();
    EXPECT_TRUE(h.ok);
    const std::vector<std::pair<double, double>> want{{1.0, 0.001}, {4.5, 0.0025}};
    EXPECT_EQ(h.step_time_curve, want);
    EXPECT_FALSE(h.run_ahead.has_value());  // a server without the rule
  }
  {  // specdec-serve's run-ahead rule
    const std::string body = R"({"status":"ok","run_ahead":{"depth":16,"device_gain":1.5,"reply":2}})";
    scripted_server srv("HTTP/1.1 200 OK\r\nContent-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body);
    const hybrid::server_health h = hybrid::completion_client("127.0.0.1", srv.port).health();
    ASSERT_TRUE(h.run_ahead.has_value());
    EXPECT_EQ(h.run_ahead->depth, 16u);
    EXPECT_DOUBLE_EQ(h.run_ahead->device_gain, 1.5);
    EXPECT_EQ(h.run_ahead->reply, 2u);
  }
  for (const std::string rule : {R"({"depth":0,"device_gain":1.5,"reply":4})", R"({"depth":4,"device_gain":0.5,"reply":4})",
                            R"({"depth":4,"device_gain":1.5})"}) {
    // an invalid or incomplete rule is not the health JSON
    const std::string body = R"({"status":"ok","run_ahead":)" + rule + "}";
    scripted_server srv("HTTP/1.1 200 OK\r\nContent-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body);
    EXPECT_THROW(hybrid::completion_client("127.0.0.1", srv.port).health(), hybrid::protocol_error) << rule;
  }
  {  // a curve of the wrong shape is not the health JSON
    const std::string body = R"({"status":"ok","step_time_curve":[[1]]})";
    scripted_server srv("HTTP/1.1 200 OK\r\nContent-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body);
    EXPECT_THROW(hybrid::completion_client("127.0.0.1", srv.port).health(), hybrid::protocol_error);
  }
  {
    scripted_server srv("HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nnope");
    EXPECT_THROW(hybrid::completion_client("127.0.0.1", srv.port).health(), hybrid::protocol_error);
  }
  hybrid::completion_client nowhere("127.0.0.1", 1);
  EXPECT_THROW(nowhere.health(hybrid::privacy::local_only), hybrid::privacy_violation);
}

TEST(completion_client, a_local_only_request_never_connects) {
  scripted_server srv("", /*hang=*/true);  // would hang if connected
  hybrid::completion_client c("127.0.0.1", srv.port);
  EXPECT_THROW(c.complete({.prompt = {1, 2, 3}, .data = hybrid::privacy::local_only}), hybrid::privacy_violation);
  EXPECT_EQ(c.bytes_sent(), 0u);
  // Unblock the server's accept with one permitted request (the control).
  EXPECT_THROW((hybrid::completion_client("127.0.0.1", srv.port, {.read_timeout_seconds = 0.1}).complete({.prompt = {1}})),
               hybrid::link_unavailable);
  EXPECT_FALSE(srv.request.empty());
}

}  // namespace
