#pragma once
/// \file hybrid/completion_client.hpp
/// The device's cloud-only route: a blocking, streaming client of an OpenAI-compatible
/// `POST /v1/completions` (such as `specdec-serve`'s), over HTTP/1.1 on the transport of
/// transport.hpp (HTTPS with `completion_client_options::security`). It sends token ids,
/// asks for server-sent events and for the generated token ids (`return_token_ids`, a
/// `specdec-serve` extension; other servers send text only), and hands each event to a
/// callback as it arrives, so the device can show text at once and, if the link fails,
/// continue from the last token it received.
///
/// The incremental parsers it is built on, `http_response_parser` and `sse_parser`, read
/// untrusted bytes: both bound every line and the whole response, and reject malformed
/// input with `protocol_error`. JSON is parsed with nlohmann::json (Debian
/// nlohmann-json3-dev); including this header needs it on the include path.
///
/// ```cpp
/// specdec::hybrid::completion_client cloud("127.0.0.1", http_port);
/// specdec::hybrid::completion_result r = cloud.complete(
///     {.prompt = prompt, .max_tokens = 32},
///     [](const specdec::hybrid::completion_chunk& c) { std::cout << c.text << std::flush; });
/// // r.tokens: the generated ids; r.finish_reason: "stop" or "length"
/// ```
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "specdec/error.hpp"
#include "specdec/hybrid/errors.hpp"
#include "specdec/hybrid/run_ahead.hpp"
#include "specdec/hybrid/transport.hpp"
#include "specdec/hybrid/uplink.hpp"
#include "specdec/sampling.hpp"
#include "specdec/token.hpp"

namespace specdec::hybrid {

/// Bounds of `http_response_parser`: a line, the headers, the body.
struct http_limits {
  std::size_t max_line = 8192;
  std::size_t max_header_bytes = 65536;
  std::size_t max_body_bytes = std::size_t{64} << 20;
};

/// Incremental parser of one HTTP/1.1 response: status line, headers, then the body as
/// sent (Content-Length, chunked transfer coding, or until the connection closes),
/// delivered to `on_body` piece by piece. Lines are bounded by `max_line`, the headers
/// by `max_header_bytes`, the body by `max_body_bytes`.
///
/// ```cpp
/// specdec::hybrid::http_response_parser p([&](std::string_view piece) { body += piece; });
/// p.feed(bytes);                    // any split of the response
/// if (p.complete()) use(p.status(), body);
/// ```
class http_response_parser {
 public:
  using limits = http_limits;

  explicit http_response_parser(std::function<void(std::string_view)> on_body, limits lim = {})
      : on_body_(std::move(on_body)), lim_(lim) {}

  /// Consumes `data`; throws `protocol_error` on malformed or oversized input.
  void feed(std::string_view data) {
    std::size_t i = 0;
    while (i < data.size() && state_ != state::done) {
      if (state_ == state::body_length || state_ == state::chunk_data || state_ == state::body_until_close) {
        std::size_t n = data.size() - i;
        if (state_ != state::body_until_close) n = std::min<std::size_t>(n, remaining_);
        body(data.substr(i, n));
        i += n;
        if (state_ == state::body_until_close) continue;
        remaining_ -= n;
        if (remaining_ == 0) state_ = state_ == state::body_length ? state::done : state::chunk_data_end;
        continue;
      }
      const char c = data[i++];
      if (c != '\n') {
        if (line_.size() >= lim_.max_line) fail("a line longer than " + std::to_string(lim_.max_line) + " bytes");
        line_.push_back(c);
        continue;
      }
      if (!line_.empty() && line_.back() == '\r') line_.pop_back();
      std::string line;
      line.swap(line_);
      on_line(line);
    }
    if (state_ == state::done && i < data.size())
      fail(std::to_string(data.size() - i) + " bytes after the end of the response");
  }
  /// The connection closed: completes a body delimited by the close, else throws if the
  /// response was cut short.
  void finish() {
    if (state_ == state::body_until_close) state_ = state::done;
    if (state_ != state::done) fail("the connection closed before the response was complete");
  }
  [[nodiscard]] bool headers_done() const noexcept { return state_ > state::headers; }
  [[nodiscard]] bool complete() const noexcept { return state_ == state::done; }
  [[nodiscard]] int status() const noexcept { return status_; }
  /// A header's value (name compared case-insensitively), or "".
  [[nodiscard]] std::string header(std::string_view name) const {
    for (const auto& [k, v] : headers_)
      if (iequals(k, name)) return v;
    return {};
  }

 private:
  enum class state { status_line, headers, body_length, chunk_size, chunk_data, chunk_data_end, trailers, body_until_close, done };

  [[noreturn]] static void fail(const std::string& what) {
    throw protocol_error("http_response_parser: " + what);
  }
  static bool iequals(std::string_view a, std::string_view b) {
    return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
             return std::tolower(static_cast<unsigned char>(x)) == std::tolower(static_cast<unsigned char>(y));
           });
  }
  void body(std::string_view piece) {
    body_bytes_ += piece.size();
    if (body_bytes_ > lim_.max_body_bytes)
      fail("a body longer than " + std::to_string(lim_.max_body_bytes) + " bytes");
    if (!piece.empty() && on_body_) on_body_(piece);
  }
  void on_line(const std::string& line) {
    switch (state_) {
      case state::status_line: {
        // "HTTP/1.x SSS reason"
        if (line.size() < 12 || line.compare(0, 7, "HTTP/1.") != 0 || line[8] != ' ' ||
            !std::isdigit(static_cast<unsigned char>(line[9])) || !std::isdigit(static_cast<unsigned char>(line[10])) ||
            !std::isdigit(static_cast<unsigned char>(line[11])))
          fail("malformed status line '" + line.substr(0, 64) + "'");
        status_ = std::stoi(line.substr(9, 3));
        state_ = state::headers;
        return;
      }
      case state::headers: {
        header_bytes_ += line.size() + 2;
        if (header_bytes_ > lim_.max_header_bytes)
          fail("headers longer than " + std::to_string(lim_.max_header_bytes) + " bytes");
        if (!line.empty()) {
          const auto colon = line.find(':');
          if (colon == std::string::npos || colon == 0) fail("malformed header line '" + line.substr(0, 64) + "'");
          std::string v = line.substr(colon + 1);
          const auto b = v.find_first_not_of(" \t");
          v = b == std::string::npos ? "" : v.substr(b, v.find_last_not_of(" \t") - b + 1);
          headers_.emplace_back(line.substr(0, colon), std::move(v));
          return;
        }
        if (iequals(header("Transfer-Encoding"), "chunked")) {
          state_ = state::chunk_size;
        } else if (const std::string cl = header("Content-Length"); !cl.empty()) {
          remaining_ = parse_number(cl, 10, "Content-Length");
          state_ = remaining_ == 0 ? state::done : state::body_length;
        } else {
          state_ = state::body_until_close;
        }
        return;
      }
      case state::chunk_size: {
        const std::string size = line.substr(0, line.find(';'));  // chunk extensions ignored
        remaining_ = parse_number(size, 16, "chunk size");
        state_ = remaining_ == 0 ? state::trailers : state::chunk_data;
        return;
      }
      case state::chunk_data_end:
        if (!line.empty()) fail("chunk data longer than its size");
        state_ = state::chunk_size;
        return;
      case state::trailers:
        if (line.empty()) state_ = state::done;
        return;
      default:
        return;
    }
  }
  std::size_t parse_number(const std::string& s, int base, const char* what) const {
    if (s.empty() || s.size() > 15) fail(std::string("malformed ") + what + " '" + s.substr(0, 32) + "'");
    std::size_t v = 0;
    for (char c : s) {
      const int d = std::isdigit(static_cast<unsigned char>(c))                      ? c - '0'
                    : base == 16 && c >= 'a' && c <= 'f'                            ? c - 'a' + 10
                    : base == 16 && c >= 'A' && c <= 'F'                            ? c - 'A' + 10
                                                                                    : -1;
      if (d < 0) fail(std::string("malformed ") + what + " '" + s.substr(0, 32) + "'");
      v = v * static_cast<std::size_t>(base) + static_cast<std::size_t>(d);
    }
    if (v > lim_.max_body_bytes) fail(std::string(what) + " " + std::to_string(v) + " exceeds the body limit");
    return v;
  }

  std::function<void(std::string_view)> on_body_;
  limits lim_;
  state state_ = state::status_line;
  std::string line_;
  int status_ = 0;
  std::vector<std::pair<std::string, std::string>> headers_;
  std::size_t header_bytes_ = 0, body_bytes_ = 0, remaining_ = 0;
};

/// Incremental parser of a server-sent-events stream: calls `on_data` with the data of
/// each event (its `data:` lines joined by newlines) when the blank line that ends it
/// arrives. Other fields (event, id, retry) and comments are ignored. Lines are bounded
/// by `max_line` bytes.
///
/// ```cpp
/// specdec::hybrid::sse_parser sse([&](std::string_view data) { if (data == "[DONE]") done = true; });
/// sse.feed("data: {\"x\": 1}\n\n");
/// ```
class sse_parser {
 public:
  explicit sse_parser(std::function<void(std::string_view)> on_data, std::size_t max_line = std::size_t{1} << 20)
      : on_data_(std::move(on_data)), max_line_(max_line) {}

  void feed(std::string_view data) {
    for (char c : data) {
      if (c != '\n') {
        if (line_.size() >= max_line_) throw protocol_error("sse_parser: an event line longer than " + std::to_string(max_line_) + " bytes");
        line_.push_back(c);
        continue;
      }
      if (!line_.empty() && line_.back() == '\r') line_.pop_back();
      if (line_.empty()) {
        if (has_data_) on_data_(data_);
        data_.clear();
        has_data_ = false;
      } else if (line_.compare(0, 5, "data:") == 0) {
        std::string_view v(line_);
        v.remove_prefix(5);
        if (!v.empty() && v.front() == ' ') v.remove_prefix(1);
        if (has_data_) data_.push_back('\n');
        if (data_.size() + v.size() > max_line_) throw protocol_error("sse_parser: an event longer than " + std::to_string(max_line_) + " bytes");
        data_.append(v);
        has_data_ = true;
      }
      line_.clear();
    }
  }

 private:
  std::function<void(std::string_view)> on_data_;
  std::size_t max_line_;
  std::string line_, data_;
  bool has_data_ = false;
};

/// A completion for the cloud: the committed tokens as the prompt, how many to generate,
/// and how.
struct completion_request {
  std::vector<token_id> prompt;
  std::size_t max_tokens = 16;
  sampling_params params{};  ///< temperature 0 = greedy
  std::uint64_t seed = 0;
  std::vector<std::string> stop{};
  /// The request's class and route (uplink.hpp; unset route: cloud). A request that may not
  /// leave the device under them is refused before connecting.
  request_privacy data = privacy::may_leave_device;
};

/// What one server-sent event brought: new text and the new token ids.
struct completion_chunk {
  std::string text;
  std::vector<token_id> tokens;
};

/// A whole completion: the generated text and ids, why it ended ("stop", "length"), the
/// server's usage counts, and the time to the first token and in total.
struct completion_result {
  std::string text;
  std::vector<token_id> tokens;
  std::string finish_reason;
  std::size_t prompt_tokens = 0;
  std::size_t completion_tokens = 0;
  double first_token_seconds = 0.0;
  double total_seconds = 0.0;
};

/// What `GET /health` says: `ok` when the server takes work now.
struct server_health {
  bool ok = false;
  std::string status;  ///< "ok" or "draining"
  std::string model;
  std::uint16_t verify_port = 0;  ///< where `verify_client` connects
  std::size_t vocab_size = 0;
  std::size_t context_length = 0;
  /// The server's measured step-time curve, (rows, seconds of one batched forward) by
  /// increasing rows (`specdec-serve` reports it; empty if the server does not): a
  /// simulation charges it with `step_time_cost` (remote_model.hpp).
  std::vector<std::pair<double, double>> step_time_curve;
  /// When a split session is run ahead instead of drafting (`specdec-serve
  /// --device-draft-gain`; absent: the server announces drafts by its own throughput
  /// only): a simulation models it with `session_options::run_ahead`.
  std::optional<run_ahead_rule> run_ahead;
};

/// Deadlines and bounds of a `completion_client`.
struct completion_client_options {
  double connect_timeout_seconds = 2.0;
  /// Longest wait for the response to start and between two events.
  double read_timeout_seconds = 30.0;
  std::string model{};  ///< sent as "model" when non-empty
  http_limits limits{};
  /// TLS (`tls_client(...)` from hybrid/tls.hpp) or plain TCP; plain TCP reaches only
  /// loopback hosts unless `allow_plaintext` is set.
  transport_security security{};
  /// Sent as `Authorization: Bearer KEY` when non-empty (`specdec-serve --api-keys`); a
  /// wrong key makes `complete` throw `remote_error` with status 401.
  std::string api_key{};
  /// Where every request sent is recorded (uplink.hpp); null: no log. Must outlive the client.
  specdec::privacy::uplink_audit_log* audit = nullptr;
};

/// The streaming client of the file comment, plus `health()` (is the server back, and
/// where is its verify port). One request at a time; each opens its own connection (a
/// generation is one request, so the handshake is paid once per generation).
class completion_client {
 public:
  completion_client(std::string host, std::uint16_t port, completion_client_options options = {})
      : host_(std::move(host)), port_(port), options_(std::move(options)) {
    check_api_key(options_.api_key, "completion_client_options.api_key");
  }

  /// Runs `req` and calls `on_chunk(const completion_chunk&)` for each event with new
  /// text or tokens; if it returns something false-like the request is abandoned (the
  /// connection closed) and what arrived so far is returned with finish_reason
  /// "cancelled". Throws `privacy_violation` (nothing sent) for a request whose class and
  /// route may not leave the device (the HTTP request, headers included, passes the gate
  /// of uplink.hpp and is recorded in `options.audit` before it is written),
  /// `link_unavailable` / `link_timeout` when the server cannot be reached or answers
  /// 5xx or 429 (rate limited: decode on the device for now), `remote_error` (with the
  /// HTTP status) for another 4xx answer, `protocol_error` for malformed responses.
  template <class OnChunk = std::nullptr_t>
  completion_result complete(const completion_request& req, OnChunk&& on_chunk = nullptr) {
    const uplink_gate gate(host_ + ":" + std::to_string(port_), route::in_cloud(), req.data, options_.audit);
    (void)gate.before_connect("completion_client::complete");
    const auto t0 = std::chrono::steady_clock::now();
    const std::string body = request_body(req);
    completion_result result;
    bool done = false, cancelled = false;
    sse_parser sse([&](std::string_view data) {
      if (done || cancelled) return;
      if (data == "[DONE]") {
        done = true;
        return;
      }
      completion_chunk chunk = parse_event(data, result);
      if (chunk.text.empty() && chunk.tokens.empty()) return;
      if (result.tokens.empty() && !chunk.tokens.empty()) result.first_token_seconds = seconds_since(t0);
      result.text += chunk.text;
      result.tokens.insert(result.tokens.end(), chunk.tokens.begin(), chunk.tokens.end());
      if constexpr (!std::is_same_v<std::decay_t<OnChunk>, std::nullptr_t>) {
        if constexpr (std::is_same_v<std::invoke_result_t<OnChunk&, const completion_chunk&>, void>) {
          on_chunk(chunk);
        } else {
          if (!on_chunk(chunk)) cancelled = true;
        }
      }
    });
    const std::string head = "POST /v1/completions HTTP/1.1\r\nHost: " + host_ + ":" + std::to_string(port_) +
                             "\r\nContent-Type: application/json\r\nAccept: text/event-stream\r\nContent-Length: " +
                             std::to_string(body.size()) + "\r\n" + authorization() + "Connection: close\r\n\r\n";
    std::string error_body;
    const int status = exchange(
        head + body, gate, req.prompt.size(),
        [&](int st, std::string_view piece) {
          if (st == 200) sse.feed(piece);
          else append_bounded(error_body, piece);
        },
        [&] { return done || cancelled; });
    if (status != 200) fail_status(status, error_body);
    if (cancelled) result.finish_reason = "cancelled";
    else if (!done)
      throw link_unavailable("completion_client: the stream from " + host_ + ":" + std::to_string(port_) +
                             " ended without [DONE] after " + std::to_string(result.tokens.size()) + " tokens");
    result.total_seconds = seconds_since(t0);
    return result;
  }

  /// `GET /health`: whether the server takes work now (200 "ok"; 503 "draining" gives
  /// `ok == false`), and where its verify port is. Throws `link_unavailable` when it
  /// cannot be reached, `protocol_error` for an answer that is not the health JSON. The
  /// probe carries nothing of a request, so it is not gated by a request's class (only by
  /// `data`), but it is recorded in `options.audit` (as `cloud_allowed`, route cloud).
  server_health health(privacy data = privacy::may_leave_device) {
    check_may_leave(data, "completion_client::health");
    const uplink_gate gate(host_ + ":" + std::to_string(port_), route::in_cloud(), data, options_.audit);
    const std::string head = "GET /health HTTP/1.1\r\nHost: " + host_ + ":" + std::to_string(port_) +
                             "\r\nConnection: close\r\n\r\n";
    std::string body;
    const int status = exchange(
        head, gate, 0, [&](int, std::string_view piece) { append_bounded(body, piece); }, [] { return false; });
    if (status != 200 && status != 503) fail_status(status, body);
    server_health h;
    try {
      const auto j = nlohmann::json::parse(body);
      h.status = j.at("status").get<std::string>();
      h.model = j.value("model", std::string());
      h.verify_port = j.value("verify_port", std::uint16_t{0});
      h.vocab_size = j.value("vocab_size", std::size_t{0});
      h.context_length = j.value("context_length", std::size_t{0});
      if (j.contains("step_time_curve"))
        h.step_time_curve = j.at("step_time_curve").get<std::vector<std::pair<double, double>>>();
      if (j.contains("run_ahead")) {
        const auto& r = j.at("run_ahead");
        h.run_ahead = run_ahead_rule{.depth = r.at("depth").get<std::size_t>(),
                                     .device_gain = r.at("device_gain").get<double>(),
                                     .reply = r.at("reply").get<std::size_t>()};
        try {
          h.run_ahead->validate();
        } catch (const invalid_argument& e) {
          throw protocol_error(std::string("completion_client::health: run_ahead: ") + e.what());
        }
      }
    } catch (const nlohmann::json::exception& e) {
      throw protocol_error(std::string("completion_client::health: not the health JSON: ") + e.what());
    }
    h.ok = status == 200 && h.status == "ok";
    return h;
  }

  /// Bytes written to / read from the sockets by all requests so far (HTTP headers included).
  [[nodiscard]] std::uint64_t bytes_sent() const noexcept { return sent_; }
  [[nodiscard]] std::uint64_t bytes_received() const noexcept { return received_; }

 private:
  static double seconds_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
  /// Sends `request` (carrying `tokens` token ids) on a new connection, through `gate`, and
  /// reads the response: the body goes to `on_body(status, piece)` until `stop()` says
  /// enough. Returns the status.
  template <class OnBody, class Stop>
  int exchange(const std::string& request, const uplink_gate& gate, std::size_t tokens, OnBody&& on_body, Stop&& stop) {
    tcp_connection conn = tcp_connection::connect(host_, port_, options_.connect_timeout_seconds,
                                                  gate.before_connect("completion_client::connect"), options_.security);
    std::optional<http_response_parser> http;
    http.emplace([&](std::string_view piece) { on_body(http->status(), piece); }, options_.limits);
    try {
      gate.before_send(request, tokens);
      conn.send_all(request, deadline_after(options_.read_timeout_seconds));
      std::uint8_t buf[8192];
      while (!stop() && !http->complete()) {
        std::size_t n = 0;
        try {
          n = conn.recv_some(buf, deadline_after(options_.read_timeout_seconds));
        } catch (const link_timeout&) {
          throw;
        } catch (const tls_error&) {
          throw;  // a broken secure channel is not the end of a body
        } catch (const link_unavailable&) {
          if (!http->headers_done()) throw;
          http->finish();  // a body delimited by the close, or a cut-short response
          break;
        }
        http->feed(std::string_view(reinterpret_cast<const char*>(buf), n));
      }
    } catch (...) {
      account(conn);
      throw;
    }
    account(conn);
    return http->status();
  }
  /// Appends `piece` to `body`, keeping at most its first 64 KiB.
  static void append_bounded(std::string& body, std::string_view piece) {
    body.append(piece.substr(0, 65536 - std::min<std::size_t>(body.size(), 65536)));
  }
  void account(const tcp_connection& c) {
    sent_ += c.bytes_sent();
    received_ += c.bytes_received();
  }
  [[nodiscard]] std::string request_body(const completion_request& req) const {
    nlohmann::json j{{"prompt", req.prompt},
                     {"max_tokens", req.max_tokens},
                     {"temperature", req.params.temperature},
                     {"top_p", req.params.top_p},
                     {"seed", req.seed},
                     {"stream", true},
                     {"stream_options", {{"include_usage", true}}},
                     {"return_token_ids", true}};
    if (req.params.top_k > 0) j["top_k"] = req.params.top_k;
    if (!req.stop.empty()) j["stop"] = req.stop;
    if (!options_.model.empty()) j["model"] = options_.model;
    return j.dump();
  }
  /// One event's JSON: the chunk's new text and ids; records finish_reason and usage.
  completion_chunk parse_event(std::string_view data, completion_result& r) const {
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(data);
    } catch (const nlohmann::json::exception& e) {
      throw protocol_error(std::string("completion_client: an event is not JSON: ") + e.what());
    }
    if (!j.is_object()) throw protocol_error("completion_client: an event is not a JSON object");
    if (const auto e = j.find("error"); e != j.end()) fail_status(503, j.dump());
    completion_chunk chunk;
    try {
      if (const auto u = j.find("usage"); u != j.end() && u->is_object()) {
        r.prompt_tokens = u->value("prompt_tokens", std::size_t{0});
        r.completion_tokens = u->value("completion_tokens", std::size_t{0});
      }
      const auto choices = j.find("choices");
      if (choices == j.end() || !choices->is_array() || choices->empty()) return chunk;
      const nlohmann::json& c = (*choices)[0];
      if (const auto t = c.find("text"); t != c.end() && t->is_string()) chunk.text = t->get<std::string>();
      if (const auto ids = c.find("token_ids"); ids != c.end() && ids->is_array())
        for (const auto& id : *ids) chunk.tokens.push_back(id.get<token_id>());
      if (const auto f = c.find("finish_reason"); f != c.end() && f->is_string()) r.finish_reason = f->get<std::string>();
    } catch (const nlohmann::json::exception& e) {
      throw protocol_error(std::string("completion_client: an event has a field of the wrong type: ") + e.what());
    }
    return chunk;
  }
  /// The Authorization header line, or "" without a key.
  [[nodiscard]] std::string authorization() const {
    return options_.api_key.empty() ? std::string() : "Authorization: Bearer " + options_.api_key + "\r\n";
  }
  /// Throws for a non-200 answer: 5xx and 429 -> link_unavailable (decode on the device),
  /// otherwise remote_error with the server's message.
  [[noreturn]] void fail_status(int status, const std::string& body) const {
    std::string message = body.substr(0, 512);
    try {
      const auto j = nlohmann::json::parse(body);
      message = j.at("error").at("message").get<std::string>();
    } catch (const std::exception&) {
    }
    const std::string what = "completion_client: " + host_ + ":" + std::to_string(port_) + " answered " +
                             std::to_string(status) + ": " + message;
    if (status >= 500 || status == 429) throw link_unavailable(what);
    throw remote_error(status, status, what);
  }

  std::string host_;
  std::uint16_t port_;
  completion_client_options options_;
  std::uint64_t sent_ = 0, received_ = 0;
};

}  // namespace specdec::hybrid
