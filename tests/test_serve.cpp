// Tests for specdec-serve's HTTP side (server/specdec_serve/{server,http_api,engine,
// metrics}.hpp) with the server in process on ephemeral loopback ports, plus the real
// program as a child process for SIGTERM: /v1/completions equals autoregressive_decoder
// (greedy and seeded sampling, alone and with concurrent requests batched together),
// streams server-sent events ending in [DONE], reports logprobs / echo / usage, honours
// stop strings; malformed requests get OpenAI-shaped 4xx errors and the server keeps
// serving; /v1/models, /health and /metrics answer; a stop drains cleanly.
#include <gtest/gtest.h>

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "specdec/backend/cpu/batched_transformer.hpp"
#include "specdec/backend/cpu/tokenizer.hpp"
#include "specdec/backend/cpu/transformer.hpp"
#include "specdec/decoder.hpp"
#include "specdec/hybrid/completion_client.hpp"
#include "specdec_serve/server.hpp"
#define SPECDEC_SERVE_TESTS
#include "serve_test_support.hpp"

namespace {
using namespace specdec;
using serve::json;

const std::string models = SPECDEC_MODELS_DIR;

struct served {
  cpu::batched_transformer model;
  cpu::tokenizer tok;
  serve::server<cpu::batched_transformer> srv;
  httplib::Client http;
  served(const std::string& name, const std::string& tokenizer, serve::serve_options o = test_support::serve_options())
      : model(models + "/" + name + ".bin", {.threads = 1}),
        tok(models + "/" + tokenizer, model.vocab_size()),
        srv(model, codec(tok), with_id(std::move(o), name)),
        http("127.0.0.1", (srv.start(), srv.http_port())) {
    http.set_read_timeout(30, 0);
  }
  static serve::text_codec codec(const cpu::tokenizer& t) {
    return {[&t](std::string_view s) { return t.encode(s); },
            [&t](token_id prev, token_id x) { return t.decode_piece(prev, x); }};
  }
  static serve::serve_options with_id(serve::serve_options o, const std::string& name) {
    o.engine.model_id = name;
    return o;
  }
  // POST /v1/completions; returns (status, parsed body or the raw text as a JSON string).
  std::pair<int, json> post(const json& body) { return post_raw(body.dump()); }
  std::pair<int, json> post_raw(const std::string& body) {
    auto r = http.Post("/v1/completions", body, "application/json");
    if (!r) return {-1, json(httplib::to_string(r.error()))};
    json j = json::parse(r->body, nullptr, false);
    return {r->status, j.is_discarded() ? json(r->body) : j};
  }
};

std::vector<token_id> ids_of(const json& choice) { return choice.at("token_ids").get<std::vector<token_id>>(); }

TEST(serve, completions_equal_autoregressive_decoding_greedy_and_sampled) {
  served s("kjv-big", "kjv2k-tokenizer.bin");
  cpu::transformer target(models + "/kjv-big.bin", {.threads = 1});
  for (const char* prompt : {"In the beginning", "Blessed are the"}) {
    autoregressive_decoder greedy(target);
    const auto ref = greedy.generate(s.tok.encode(prompt), {.max_new_tokens = 24});
    auto [status, body] = s.post({{"prompt", prompt}, {"max_tokens", 24}, {"temperature", 0}, {"return_token_ids", true}});
    ASSERT_EQ(status, 200) << body.dump();
    const json& c = body["choices"][0];
    EXPECT_EQ(ids_of(c), ref.tokens) << prompt;
    EXPECT_EQ(c["text"], s.tok.decode(ref.tokens));
    EXPECT_EQ(c["finish_reason"], ref.stop_reason == "eos" ? "stop" : "length");
    EXPECT_EQ(body["usage"]["prompt_tokens"], s.tok.encode(prompt).size());
    EXPECT_EQ(body["usage"]["completion_tokens"], ref.tokens.size());
    EXPECT_EQ(body["object"], "text_completion");
    EXPECT_EQ(body["model"], "kjv-big");
  }
  // Seeded sampling draws the same tokens as the local decoder with the same seed.
  const sampling_params params{.temperature = 0.8f, .top_p = 0.9f};
  autoregressive_decoder sampled(target, params, 42);
  const auto prompt = s.tok.encode("And God said");
  const auto ref = sampled.generate(prompt, {.max_new_tokens = 24});
  auto [status, body] = s.post({{"prompt", prompt}, {"max_tokens", 24}, {"temperature", 0.8}, {"top_p", 0.9},
                                {"seed", 42}, {"return_token_ids", true}});
  ASSERT_EQ(status, 200) << body.dump();
  EXPECT_EQ(ids_of(body["choices"][0]), ref.tokens);
}

// Concurrent requests share batched steps; each still gets exactly its own greedy output.
TEST(serve, concurrent_completions_are_batched_and_each_exact) {
  served s("stories260K", "tok512.bin");
  cpu::transformer target(models + "/stories260K.bin", {.threads = 1});
  const std::vector<std::string> prompts{"Once upon a time", "The cat", "Lily and Tom went to", "One day",
                                         "The little dog", "She saw a big"};
  std::vector<std::vector<token_id>> want;
  for (const auto& p : prompts) {
    autoregressive_decoder ar(target);
    want.push_back(ar.generate(s.tok.encode(p), {.max_new_tokens = 80}).tokens);
  }
  std::vector<std::vector<token_id>> got(prompts.size());
  std::vector<std::thread> clients;
  for (std::size_t i = 0; i < prompts.size(); ++i)
    clients.emplace_back([&, i] {
      httplib::Client c("127.0.0.1", s.srv.http_port());
      auto r = c.Post("/v1/completions",
                      json{{"prompt", prompts[i]}, {"max_tokens", 80}, {"temperature", 0}, {"return_token_ids", true}}.dump(),
                      "application/json");
      if (r && r->status == 200) got[i] = ids_of(json::parse(r->body)["choices"][0]);
    });
  for (auto& t : clients) t.join();
  for (std::size_t i = 0; i < prompts.size(); ++i) EXPECT_EQ(got[i], want[i]) << prompts[i];
  // Some step carried more than one sequence.
  const std::string m = s.srv.metrics().render();
  EXPECT_NE(m.find("specdec_batch_sequences_bucket{le=\"1\"}"), std::string::npos);
  EXPECT_LT(s.srv.metrics().value("specdec_step_seconds"),
            s.srv.metrics().value("specdec_tokens_total", "kind=\"generated\""));
}

// Parses an SSE body into its data payloads.
std::vector<std::string> sse_events(const std::string& body) {
  std::vector<std::string> out;
  hybrid::sse_parser p([&](std::string_view d) { out.emplace_back(d); });
  p.feed(body);
  return out;
}

TEST(serve, streaming_sends_server_sent_events_ending_in_done) {
  served s("stories260K", "tok512.bin");
  const json req{{"prompt", "Once upon a time"}, {"max_tokens", 40}, {"temperature", 0}, {"return_token_ids", true}};
  auto [status, plain] = s.post(req);
  ASSERT_EQ(status, 200);
  json sreq = req;
  sreq["stream"] = true;
  sreq["stream_options"] = {{"include_usage", true}};
  auto r = s.http.Post("/v1/completions", sreq.dump(), "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  EXPECT_NE(r->get_header_value("Content-Type").find("text/event-stream"), std::string::npos);
  const auto events = sse_events(r->body);
  ASSERT_GE(events.size(), 3u);
  EXPECT_EQ(events.back(), "[DONE]");
  std::string text;
  std::vector<token_id> ids;
  std::string finish;
  for (std::size_t i = 0; i + 2 < events.size(); ++i) {
    const json e = json::parse(events[i]);
    EXPECT_EQ(e["object"], "text_completion");
    text += e["choices"][0]["text"].get<std::string>();
    const auto chunk_ids = ids_of(e["choices"][0]);
    ids.insert(ids.end(), chunk_ids.begin(), chunk_ids.end());
    if (e["choices"][0]["finish_reason"].is_string()) finish = e["choices"][0]["finish_reason"];
  }
  EXPECT_EQ(text, plain["choices"][0]["text"]);
  EXPECT_EQ(ids, ids_of(plain["choices"][0]));
  EXPECT_EQ(finish, "length");
  const json usage = json::parse(events[events.size() - 2]);
  EXPECT_TRUE(usage["choices"].empty());
  EXPECT_EQ(usage["usage"]["completion_tokens"], 40);
}

TEST(serve, the_completion_client_streams_exact_tokens) {
  served s("stories260K", "tok512.bin");
  cpu::transformer target(models + "/stories260K.bin", {.threads = 1});
  const auto prompt = s.tok.encode("Once upon a time");
  autoregressive_decoder ar(target);
  const auto ref = ar.generate(prompt, {.max_new_tokens = 60});
  hybrid::completion_client c("127.0.0.1", s.srv.http_port());
  std::size_t chunks = 0;
  const auto r = c.complete({.prompt = prompt, .max_tokens = 60}, [&](const hybrid::completion_chunk&) { ++chunks; });
  EXPECT_EQ(r.tokens, ref.tokens);
  EXPECT_EQ(r.text, s.tok.decode(ref.tokens));
  EXPECT_EQ(r.completion_tokens, 60u);
  EXPECT_EQ(r.prompt_tokens, prompt.size());
  EXPECT_GE(chunks, 1u);
  EXPECT_GT(c.bytes_received(), 0u);
  // The device learns from /health that the server is up and where to verify.
  const hybrid::server_health h = c.health();
  EXPECT_TRUE(h.ok);
  EXPECT_EQ(h.verify_port, s.srv.verify_port());
  EXPECT_EQ(h.model, "stories260K");
  // ... and the rule that runs a split session ahead, which a simulation of it models.
  ASSERT_TRUE(h.run_ahead.has_value());
  EXPECT_EQ(h.run_ahead->depth, 32u);
  EXPECT_DOUBLE_EQ(h.run_ahead->device_gain, 2.0);
  EXPECT_EQ(h.run_ahead->reply, 4u);
  // Cancelling from the callback abandons the request; the server frees it.
  const auto cut = c.complete({.prompt = prompt, .max_tokens = 400}, [](const hybrid::completion_chunk&) { return false; });
  EXPECT_EQ(cut.finish_reason, "cancelled");
  for (int i = 0; i < 200 && s.srv.core().completions() > 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  EXPECT_EQ(s.srv.core().completions(), 0u);
  // Errors: 4xx is remote_error with the status, local_only sends nothing.
  try {
    c.complete({.prompt = {1, 9999}, .max_tokens = 4});
    ADD_FAILURE() << "an out-of-range id was accepted";
  } catch (const hybrid::remote_error& e) {
    EXPECT_EQ(e.status(), 400);
  }
  const auto before = c.bytes_sent();
  EXPECT_THROW(c.complete({.prompt = prompt, .data = hybrid::privacy::local_only}), hybrid::privacy_violation);
  EXPECT_EQ(c.bytes_sent(), before);
}

TEST(serve, logprobs_echo_and_stop_strings) {
  served s("stories260K", "tok512.bin");
  const auto prompt = s.tok.encode("Once upon a time");
  auto [status, body] = s.post({{"prompt", "Once upon a time"}, {"max_tokens", 5}, {"temperature", 0},
                                {"logprobs", 3}, {"echo", true}, {"return_token_ids", true}});
  ASSERT_EQ(status, 200) << body.dump();
  const json& c = body["choices"][0];
  const json& lp = c["logprobs"];
  ASSERT_EQ(lp["tokens"].size(), prompt.size() + 5);
  EXPECT_TRUE(lp["token_logprobs"][0].is_null());
  EXPECT_TRUE(lp["top_logprobs"][0].is_null());
  for (std::size_t i = 1; i < lp["tokens"].size(); ++i) {
    EXPECT_EQ(lp["top_logprobs"][i].size(), 3u) << i;
    EXPECT_LE(lp["token_logprobs"][i].get<double>(), 0.0);
  }
  // Greedy: each generated token is the most likely one.
  for (std::size_t i = prompt.size(); i < lp["tokens"].size(); ++i) {
    double best = -1e30;
    for (const auto& [k, v] : lp["top_logprobs"][i].items()) best = std::max(best, v.get<double>());
    EXPECT_DOUBLE_EQ(lp["token_logprobs"][i].get<double>(), best);
  }
  const std::string text = c["text"];
  EXPECT_EQ(text.rfind("Once upon a time", 0), 0u);  // echoed
  EXPECT_EQ(lp["text_offset"][prompt.size()], std::string("Once upon a time").size());
  // A stop string cuts the text before it and ends the generation.
  auto [s2, full] = s.post({{"prompt", "Once upon a time"}, {"max_tokens", 40}, {"temperature", 0}});
  const std::string all = full["choices"][0]["text"];
  const std::size_t cut = all.find(' ', 10);
  ASSERT_NE(cut, std::string::npos);
  const std::string stop = all.substr(cut, 3);
  auto [s3, stopped] = s.post({{"prompt", "Once upon a time"}, {"max_tokens", 40}, {"temperature", 0}, {"stop", {stop}}});
  ASSERT_EQ(s3, 200);
  EXPECT_EQ(stopped["choices"][0]["text"], all.substr(0, all.find(stop)));
  EXPECT_EQ(stopped["choices"][0]["finish_reason"], "stop");
  EXPECT_LT(stopped["usage"]["completion_tokens"].get<int>(), 40);
}

TEST(serve, malformed_requests_get_openai_errors_and_the_server_keeps_serving) {
  served s("stories260K", "tok512.bin");
  const auto expect_error = [&](const std::string& body, int status, const std::string& param) {
    auto [st, j] = s.post_raw(body);
    EXPECT_EQ(st, status) << body << " -> " << j.dump();
    ASSERT_TRUE(j.is_object() && j.contains("error")) << body << " -> " << j.dump();
    EXPECT_TRUE(j["error"]["message"].is_string());
    EXPECT_TRUE(j["error"]["type"].is_string());
    if (!param.empty()) {
      EXPECT_EQ(j["error"]["param"], param) << body;
    }
  };
  expect_error("{bad json", 400, "");
  expect_error("[1, 2]", 400, "");
  expect_error("{}", 400, "prompt");
  expect_error(R"({"prompt": 5})", 400, "prompt");
  expect_error(R"({"prompt": "x", "max_tokens": "5"})", 400, "max_tokens");
  expect_error(R"({"prompt": "x", "max_tokens": -1})", 400, "max_tokens");
  expect_error(R"({"prompt": "x", "temperature": "hot"})", 400, "temperature");
  expect_error(R"({"prompt": "x", "temperature": 3})", 400, "temperature");
  expect_error(R"({"prompt": "x", "top_p": 0})", 400, "top_p");
  expect_error(R"({"prompt": "x", "stream": "yes"})", 400, "stream");
  expect_error(R"({"prompt": "x", "stop": 7})", 400, "stop");
  expect_error(R"({"prompt": "x", "stop": ["a", "b", "c", "d", "e"]})", 400, "stop");
  expect_error(R"({"prompt": "x", "logprobs": 99})", 400, "logprobs");
  expect_error(R"({"prompt": "x", "n": 2})", 400, "n");
  expect_error(R"({"prompt": "x", "seed": 1.5})", 400, "seed");
  expect_error(R"({"prompt": [1, 512]})", 400, "prompt");
  expect_error(R"({"prompt": [1, -1]})", 400, "prompt");
  expect_error(R"({"prompt": [1, 2.5]})", 400, "prompt");
  expect_error(R"({"prompt": []})", 400, "prompt");
  expect_error(R"({"prompt": ["a", "b"]})", 400, "prompt");
  expect_error(R"({"prompt": "x", "max_tokens": 100000})", 400, "max_tokens");
  expect_error(R"({"prompt": "x", "model": "gpt-4"})", 404, "model");
  expect_error(R"({"prompt": "x", "presence_penalty": 1})", 400, "presence_penalty");
  expect_error(std::string(40, '[') + std::string(40, ']'), 400, "");  // nesting beyond the limit
  // A body over the limit (1 MiB) is refused with 413 and a JSON error.
  expect_error("{\"prompt\": \"" + std::string(std::size_t{2} << 20, 'a') + "\"}", 413, "");
  auto nf = s.http.Get("/no/such/route");
  ASSERT_TRUE(nf);
  EXPECT_EQ(nf->status, 404);
  EXPECT_TRUE(json::parse(nf->body).contains("error"));
  // The server still serves well-formed requests.
  auto [status, ok] = s.post({{"prompt", "Once upon a time"}, {"max_tokens", 5}, {"model", "stories260K"}});
  EXPECT_EQ(status, 200) << ok.dump();
  EXPECT_EQ(ok["usage"]["completion_tokens"], 5);
  EXPECT_GE(s.srv.metrics().value("specdec_http_requests_total", "route=\"/v1/completions\",code=\"400\""), 20.0);
}

TEST(serve, models_health_and_metrics) {
  served s("stories260K", "tok512.bin");
  auto m = s.http.Get("/v1/models");
  ASSERT_TRUE(m);
  const json models_json = json::parse(m->body);
  EXPECT_EQ(models_json["object"], "list");
  EXPECT_EQ(models_json["data"][0]["id"], "stories260K");
  EXPECT_EQ(models_json["data"][0]["object"], "model");
  auto h = s.http.Get("/health");
  ASSERT_TRUE(h);
  EXPECT_EQ(h->status, 200);
  const json health = json::parse(h->body);
  EXPECT_EQ(health["status"], "ok");
  EXPECT_EQ(health["verify_port"], s.srv.verify_port());
  EXPECT_EQ(health["context_length"], 512);
  (void)s.post({{"prompt", "Once"}, {"max_tokens", 3}});
  auto x = s.http.Get("/metrics");
  ASSERT_TRUE(x);
  for (const char* want : {"# TYPE specdec_http_requests_total counter", "specdec_tokens_total{kind=\"generated\"} 3",
                           "# TYPE specdec_step_seconds histogram", "specdec_step_seconds_bucket{le=\"+Inf\"}",
                           "specdec_active_sessions 0", "# TYPE specdec_verify_seconds histogram",
                           "specdec_batch_rows_count"})
    EXPECT_NE(x->body.find(want), std::string::npos) << want;
}

// The listening socket of `port` in this process (-1 if none).
int listening_socket(std::uint16_t port) {
  for (int fd = 0; fd < 4096; ++fd) {
    int listening = 0;
    socklen_t n = sizeof listening;
    sockaddr_storage a{};
    socklen_t len = sizeof a;
    if (::getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &n) != 0 || !listening ||
        ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0)
      continue;
    const std::uint16_t p = a.ss_family == AF_INET ? ntohs(reinterpret_cast<const sockaddr_in&>(a).sin_port)
                            : a.ss_family == AF_INET6 ? ntohs(reinterpret_cast<const sockaddr_in6&>(a).sin6_port)
                                                      : 0;
    if (p == port) return fd;
  }
  return -1;
}

TEST(serve, the_http_port_queues_a_burst_of_connections_and_is_not_shared) {
  serve::serve_options o = test_support::serve_options();
  o.http_backlog = 300;
  served s("stories260K", "tok512.bin", o);
  // Linux reports a listening socket's backlog as tcpi_sacked; httplib alone would leave 5,
  // and a burst of more devices than that waits for the kernel's 1 s SYN retry.
  const int fd = listening_socket(s.srv.http_port());
  ASSERT_GE(fd, 0);
  tcp_info info{};
  socklen_t len = sizeof info;
  ASSERT_EQ(::getsockopt(fd, IPPROTO_TCP, TCP_INFO, &info, &len), 0);
  int somaxconn = 4096;
  if (std::FILE* f = std::fopen("/proc/sys/net/core/somaxconn", "r")) {
    if (std::fscanf(f, "%d", &somaxconn) != 1) somaxconn = 4096;
    std::fclose(f);
  }
  EXPECT_EQ(info.tcpi_sacked, static_cast<std::uint32_t>(std::min(300, somaxconn)));
  // The verify port queues as many as its own option says (512 by default).
  const int vfd = listening_socket(s.srv.verify_port());
  ASSERT_GE(vfd, 0);
  ASSERT_EQ(::getsockopt(vfd, IPPROTO_TCP, TCP_INFO, &info, &len), 0);
  EXPECT_EQ(info.tcpi_sacked, static_cast<std::uint32_t>(std::min(512, somaxconn)));
  // 40 connections at once, each answered.
  std::vector<std::thread> burst;
  std::atomic<int> ok{0};
  for (int i = 0; i < 40; ++i)
    burst.emplace_back([&] {
      httplib::Client c("127.0.0.1", s.srv.http_port());
      c.set_connection_timeout(0, 500'000);  // well below the 1 s SYN retry
      if (auto r = c.Get("/health"); r && r->status == 200) ++ok;
    });
  for (auto& t : burst) t.join();
  EXPECT_EQ(ok.load(), 40);
  // A second server on the same port fails to bind (SO_REUSEPORT would let it share).
  serve::serve_options same = test_support::serve_options();
  same.http_port = s.srv.http_port();
  cpu::batched_transformer m2(models + "/stories260K.bin", {.threads = 1});
  serve::server<cpu::batched_transformer> second(m2, served::codec(s.tok), same);
  try {
    second.start();
    ADD_FAILURE() << "a second server bound port " << same.http_port;
  } catch (const specdec::error& e) {
    EXPECT_NE(std::string(e.what()).find("cannot bind HTTP on 127.0.0.1:" + std::to_string(same.http_port)),
              std::string::npos)
        << e.what();
  }
  same.http_port = 0;
  same.http_backlog = 0;
  serve::server<cpu::batched_transformer> bad(m2, served::codec(s.tok), same);
  EXPECT_THROW(bad.start(), specdec::invalid_argument);
  same.http_backlog = 512;
  same.listener.backlog = 0;  // refused before anything starts
  EXPECT_THROW(serve::server<cpu::batched_transformer>(m2, served::codec(s.tok), same), specdec::invalid_argument);
}

TEST(serve, metrics_registry_renders_prometheus_text) {
  serve::metrics_registry r;
  r.describe("a_total", "counter", "A counter");
  r.describe("h_seconds", "histogram", "A histogram", {0.1, 1});
  r.add("a_total", "k=\"x\"", 2);
  r.observe("h_seconds", "", 0.05);
  r.observe("h_seconds", "", 0.5);
  r.observe("h_seconds", "", 5);
  const std::string t = r.render();
  EXPECT_NE(t.find("a_total{k=\"x\"} 2\n"), std::string::npos) << t;
  EXPECT_NE(t.find("h_seconds_bucket{le=\"0.10000000000000001\"} 1\n"), std::string::npos) << t;
  EXPECT_NE(t.find("h_seconds_bucket{le=\"1\"} 2\n"), std::string::npos) << t;
  EXPECT_NE(t.find("h_seconds_bucket{le=\"+Inf\"} 3\n"), std::string::npos) << t;
  EXPECT_NE(t.find("h_seconds_count 3\n"), std::string::npos) << t;
  EXPECT_THROW(r.add("undeclared", ""), specdec::invalid_argument);
  EXPECT_THROW(r.describe("x", "summary", "no"), specdec::invalid_argument);
}

// Starts a streaming greedy completion of `max_tokens` on `s` in a thread, waits until the
// engine runs it, calls `during(s)`, then `s.srv.stop()`; returns the stream's events.
template <class During>
std::vector<std::string> stream_through_stop(served& s, int max_tokens, During during) {
  std::string body;
  std::thread client([&] {
    httplib::Client c("127.0.0.1", s.srv.http_port());
    auto r = c.Post("/v1/completions",
                    json{{"prompt", "In the beginning"}, {"max_tokens", max_tokens}, {"temperature", 0}, {"stream", true}}
                        .dump(),
                    "application/json");
    if (r) body = r->body;
  });
  for (int i = 0; i < 400 && s.srv.core().completions() == 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(2));
  during(s);
  s.srv.stop();
  client.join();
  return sse_events(body);
}

TEST(serve, stop_drains_in_flight_streams_and_refuses_new_work) {
  serve::serve_options o = test_support::serve_options();
  o.drain_seconds = 60.0;  // ample, also under sanitizers on a loaded machine
  served s("kjv-big", "kjv2k-tokenizer.bin", o);
  const auto events = stream_through_stop(s, 60, [](served& x) {
    x.srv.core().begin_drain();  // what stop() does first: new work is refused ...
    auto [status, refused] = x.post({{"prompt", "x"}, {"max_tokens", 2}});
    EXPECT_EQ(status, 503) << refused.dump();
    auto h = x.http.Get("/health");
    ASSERT_TRUE(h);
    EXPECT_EQ(h->status, 503);
    EXPECT_FALSE(hybrid::completion_client("127.0.0.1", x.srv.http_port()).health().ok);
  });  // ... and the in-flight stream finishes within the drain time
  ASSERT_GE(events.size(), 2u);
  EXPECT_EQ(events.back(), "[DONE]");
  EXPECT_EQ(json::parse(events[events.size() - 2])["choices"][0]["finish_reason"], "length");
}

TEST(serve, an_expired_drain_fails_the_stream_cleanly) {
  serve::serve_options o = test_support::serve_options();
  o.drain_seconds = 0.0;
  served s("kjv-big", "kjv2k-tokenizer.bin", o);
  const auto events = stream_through_stop(s, 250, [](served&) {});
  ASSERT_GE(events.size(), 2u);
  EXPECT_EQ(events.back(), "[DONE]");
  const json last = json::parse(events[events.size() - 2]);
  // Either the generation won the race, or it was failed with an error event.
  EXPECT_TRUE(last.contains("error") || last["choices"][0]["finish_reason"] == "length") << last.dump();
}

#ifdef SPECDEC_SERVE_BINARY
TEST(serve, the_program_drains_and_exits_on_sigterm) {
  // Also: the command line reaches the engine (--device-draft-gain off; --first-block-wait-ms
  // is accepted, or the program would exit before it serves).
  int err[2];
  ASSERT_EQ(::pipe(err), 0);
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    ::dup2(err[1], 2);
    ::close(err[0]);
    const std::string model = models + "/stories260K.bin", tok = models + "/tok512.bin";
    ::execl(SPECDEC_SERVE_BINARY, SPECDEC_SERVE_BINARY, "--model", model.c_str(), "--tokenizer", tok.c_str(), "--port",
            "0", "--no-calibrate", "--http-threads", "2", "--device-draft-gain", "off", "--first-block-wait-ms", "5",
            static_cast<char*>(nullptr));
    ::_exit(127);
  }
  ::close(err[1]);
  // "specdec-serve: model ... on http://127.0.0.1:PORT, verify port N"
  std::string line;
  char ch = 0;
  while (::read(err[0], &ch, 1) == 1 && ch != '\n') line += ch;
  const auto at = line.find("127.0.0.1:");
  ASSERT_NE(at, std::string::npos) << line;
  const int port = std::stoi(line.substr(at + 10));
  httplib::Client c("127.0.0.1", port);
  auto h = c.Get("/health");
  ASSERT_TRUE(h);
  EXPECT_EQ(h->status, 200);
  // --device-draft-gain off: no run-ahead rule to report (the default's is tested above).
  EXPECT_FALSE(json::parse(h->body).contains("run_ahead")) << h->body;
  ASSERT_EQ(::kill(pid, SIGTERM), 0);
  EXPECT_EQ(test_support::wait_for_exit(pid, 5.0), 0) << "specdec-serve did not exit with 0 within 5 s of SIGTERM";
  std::string rest;
  while (::read(err[0], &ch, 1) == 1) rest += ch;
  ::close(err[0]);
  EXPECT_NE(rest.find("stopped"), std::string::npos) << rest;
}
#endif

}  // namespace
