#pragma once
/// \file specdec_serve/http_api.hpp
/// The HTTP side of `specdec-serve` (cpp-httplib): the OpenAI-compatible
/// `POST /v1/completions` (streaming with server-sent events), `GET /v1/models`,
/// `GET /health` and `GET /metrics`, every error in OpenAI's JSON shape
/// (`{"error": {"message", "type", "param", "code"}}`) with its HTTP status.
///
/// Request bounds: the body (`max_body_bytes`, else 413), the JSON nesting
/// (`max_json_depth`), the prompt (at most the context, ids in [0, vocab)), the stop
/// strings (4, each at most 256 bytes) and `logprobs` (0..20). Wrong types and values get
/// 400 naming the parameter. Extensions beyond OpenAI's fields: `top_k`, and
/// `return_token_ids` (each choice then carries `token_ids`, the generated ids, which
/// the device's completion client needs to continue exactly where the cloud stopped).
///
/// API keys (auth.hpp): with a non-empty `key_ring`, every route but `/health` needs
/// `Authorization: Bearer KEY` (else 401 `invalid_api_key`, before the body is read) and
/// draws one request from the key's token bucket (else 429 `rate_limit_exceeded` with
/// `Retry-After`); a completion's `max_tokens` above the key's cap is a 400.
///
/// ```cpp
/// httplib::Server http;
/// specdec::serve::http_api api(engine, metrics, codec, {.max_body_bytes = 1 << 20});
/// api.install(http);
/// ```
#include <httplib.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <ctime>
#include <functional>
#include <memory>
#include <optional>
#include <cctype>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "specdec/error.hpp"
#include "specdec/sampling.hpp"
#include "specdec/token.hpp"
#include "specdec_serve/auth.hpp"
#include "specdec_serve/http_watchdog.hpp"
#include "specdec_serve/metrics.hpp"
#include "specdec_serve/services.hpp"

namespace specdec::serve {

using json = nlohmann::json;

/// Text <-> tokens for the HTTP API. Without a codec (empty functions) prompts must be
/// token ids and returned texts are empty (use `return_token_ids`).
///
/// ```cpp
/// specdec::serve::text_codec codec{
///     [&](std::string_view s) { return tok.encode(s); },
///     [&](specdec::token_id prev, specdec::token_id t) { return tok.decode_piece(prev, t); }};
/// ```
struct text_codec {
  std::function<std::vector<token_id>(std::string_view)> encode;  ///< text -> ids, BOS first
  std::function<std::string(token_id prev, token_id t)> piece;    ///< the text of t after prev
  [[nodiscard]] explicit operator bool() const { return encode && piece; }
};

/// Bounds and knobs of the HTTP API.
struct http_options {
  std::size_t max_body_bytes = std::size_t{1} << 20;
  std::size_t max_json_depth = 16;
  std::size_t max_logprobs = 20;
  std::size_t max_stop_strings = 4;
  std::size_t max_stop_bytes = 256;
  double stream_poll_seconds = 0.05;  ///< how often a waiting stream checks that its client is still there
};

/// An error for the client: HTTP status + OpenAI's error object.
struct api_error {
  int status = 400;
  std::string message;
  std::string param;
  std::string code;
  [[nodiscard]] std::string type() const {
    if (status == 404) return "not_found_error";
    if (status == 429) return "requests";  // OpenAI's type for request-rate limits
    if (status == 413) return "invalid_request_error";
    if (status >= 500) return "server_error";
    return "invalid_request_error";
  }
  [[nodiscard]] json body() const {
    json e{{"message", message}, {"type", type()}, {"param", nullptr}, {"code", nullptr}};
    if (!param.empty()) e["param"] = param;
    if (!code.empty()) e["code"] = code;
    return json{{"error", e}};
  }
};

/// JSON text that survives invalid UTF-8 from byte-level tokens (replaced by U+FFFD).
[[nodiscard]] inline std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

/// Incremental detokenization with stop strings: `push` returns the text that is safe to
/// send now, holding back what could be the start of a stop string or an incomplete UTF-8
/// character; a matched stop string ends the text before it.
///
/// ```cpp
/// specdec::serve::text_assembler a(&codec, {"\n\n"}, prompt.back());
/// std::string now = a.push(t);  // may be empty
/// if (a.stopped()) cancel();
/// std::string rest = a.flush();
/// ```
class text_assembler {
 public:
  text_assembler(const text_codec* codec, std::vector<std::string> stop, token_id prev)
      : codec_(codec), stop_(std::move(stop)), prev_(prev) {
    for (const auto& s : stop_) hold_ = std::max(hold_, s.size() - 1);
  }
  /// Byte offset of the next token's text (OpenAI's `text_offset`, before `base`).
  [[nodiscard]] std::size_t offset() const noexcept { return text_.size(); }
  /// The text of `t` (empty without a codec).
  [[nodiscard]] std::string piece(token_id t) const { return codec_ != nullptr && *codec_ ? codec_->piece(prev_, t) : ""; }
  std::string push(token_id t) {
    if (stopped_) return {};
    const std::size_t before = text_.size();
    text_ += piece(t);
    prev_ = t;
    const std::size_t from = before > hold_ ? before - hold_ : 0;
    std::size_t cut = std::string::npos;
    for (const auto& s : stop_) cut = std::min(cut, text_.find(s, from));
    if (cut != std::string::npos) {
      text_.resize(cut);
      stopped_ = true;
      return take(text_.size());
    }
    const std::size_t safe = text_.size() > hold_ ? text_.size() - hold_ : 0;
    return take(utf8_boundary(safe));
  }
  /// Everything not yet returned.
  std::string flush() { return take(text_.size()); }
  [[nodiscard]] bool stopped() const noexcept { return stopped_; }
  [[nodiscard]] const std::string& text() const noexcept { return text_; }

 private:
  std::string take(std::size_t end) {
    if (end <= sent_) return {};
    std::string out = text_.substr(sent_, end - sent_);
    sent_ = end;
    return out;
  }
  /// The largest position <= end that does not split a UTF-8 sequence.
  [[nodiscard]] std::size_t utf8_boundary(std::size_t end) const {
    for (std::size_t back = 1; back <= 3 && back <= end; ++back) {
      const auto c = static_cast<unsigned char>(text_[end - back]);
      if ((c & 0xC0) == 0x80) continue;  // continuation byte: look further back
      const std::size_t need = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
      return need > back ? end - back : end;
    }
    return end;
  }

  const text_codec* codec_;
  std::vector<std::string> stop_;
  token_id prev_;
  std::size_t hold_ = 0;
  std::string text_;
  std::size_t sent_ = 0;
  bool stopped_ = false;
};

/// A validated `/v1/completions` request.
struct completion_request {
  completion_params params;
  bool stream = false;
  bool include_usage = false;
  bool echo = false;
  bool return_token_ids = false;
  std::vector<std::string> stop;
};

/// Parses and validates a `/v1/completions` body; throws `api_error`.
class request_parser {
 public:
  request_parser(const model_info& model, const text_codec& codec, const http_options& options)
      : model_(model), codec_(codec), options_(options) {}

  [[nodiscard]] json parse_json(const std::string& body) const {
    const std::size_t max_depth = options_.max_json_depth;
    try {
      return json::parse(body, [max_depth](int depth, json::parse_event_t, json&) {
        if (static_cast<std::size_t>(depth) > max_depth)
          throw api_error{400, "the JSON body nests deeper than " + std::to_string(max_depth) + " levels", "", ""};
        return true;
      });
    } catch (const json::exception& e) {
      throw api_error{400, std::string("the body is not valid JSON: ") + e.what(), "", "invalid_json"};
    }
  }

  /// `max_tokens_cap` (0 = none) is the key's limit on `max_tokens` (a 400 above it; the
  /// default of 16 is lowered to it).
  [[nodiscard]] completion_request parse(const std::string& body, std::size_t max_tokens_cap = 0) const {
    const json j = parse_json(body);
    if (!j.is_object()) throw api_error{400, "the body must be a JSON object", "", ""};
    completion_request r;
    if (const json* m = field(j, "model")) {
      if (!m->is_string()) throw wrong_type("model", "a string");
      if (m->get<std::string>() != model_.id)
        throw api_error{404, "the model '" + m->get<std::string>() + "' does not exist; this server serves '" +
                                 model_.id + "'",
                        "model", "model_not_found"};
    }
    r.params.prompt = prompt(j);
    const std::int64_t default_tokens = max_tokens_cap > 0 ? std::min<std::int64_t>(16, static_cast<std::int64_t>(max_tokens_cap)) : 16;
    r.params.max_tokens = static_cast<std::size_t>(integer(j, "max_tokens", default_tokens, 0, 1 << 30));
    if (max_tokens_cap > 0 && r.params.max_tokens > max_tokens_cap)
      throw api_error{400, "max_tokens is " + std::to_string(r.params.max_tokens) + "; this API key may ask for at most " +
                               std::to_string(max_tokens_cap) + " tokens per request",
                      "max_tokens", "max_tokens_exceeded"};
    const double temperature = number(j, "temperature", 1.0, 0.0, 2.0);
    const double top_p = number(j, "top_p", 1.0, 0.0, 1.0);
    if (top_p <= 0.0) throw api_error{400, "top_p must be in (0, 1], got 0", "top_p", ""};
    const auto top_k = integer(j, "top_k", 0, 0, static_cast<std::int64_t>(model_.vocab_size));
    r.params.sampling = {static_cast<float>(temperature), static_cast<int>(top_k), static_cast<float>(top_p)};
    if (const json* s = field(j, "seed")) {
      if (!s->is_number_integer()) throw wrong_type("seed", "an integer");
      r.params.seed = s->is_number_unsigned() ? s->get<std::uint64_t>() : static_cast<std::uint64_t>(s->get<std::int64_t>());
    } else {
      secure_random(&r.params.seed, sizeof r.params.seed);
    }
    r.stream = boolean(j, "stream", false);
    r.echo = boolean(j, "echo", false);
    r.return_token_ids = boolean(j, "return_token_ids", false);
    if (const json* so = field(j, "stream_options")) {
      if (!so->is_object()) throw wrong_type("stream_options", "an object");
      r.include_usage = boolean(*so, "include_usage", false);
    }
    if (const json* lp = field(j, "logprobs")) {
      if (!lp->is_number_integer()) throw wrong_type("logprobs", "an integer or null");
      const auto n = lp->get<std::int64_t>();
      if (n < 0 || n > static_cast<std::int64_t>(options_.max_logprobs))
        throw api_error{400, "logprobs must be in [0, " + std::to_string(options_.max_logprobs) + "], got " +
                                 std::to_string(n),
                        "logprobs", ""};
      r.params.logprobs = static_cast<std::size_t>(n);
      r.params.prompt_logprobs = r.echo;
    }
    r.stop = stops(j);
    (void)integer(j, "n", 1, 1, 1);  // one choice per request
    (void)integer(j, "best_of", 1, 1, 1);
    for (const char* p : {"presence_penalty", "frequency_penalty"})
      if (number(j, p, 0.0, -2.0, 2.0) != 0.0)
        throw api_error{400, std::string(p) + " is not supported; expected 0 or absent", p, "unsupported"};
    if (const json* lb = field(j, "logit_bias"); lb && !(lb->is_object() && lb->empty()))
      throw api_error{400, "logit_bias is not supported; expected {} or absent", "logit_bias", "unsupported"};
    if (const json* sx = field(j, "suffix"); sx && !(sx->is_string() && sx->get<std::string>().empty()))
      throw api_error{400, "suffix is not supported", "suffix", "unsupported"};
    const std::size_t ctx = model_.context_length;
    if (r.params.prompt.size() >= ctx || r.params.prompt.size() + r.params.max_tokens > ctx)
      throw api_error{400, "this model's maximum context length is " + std::to_string(ctx) + " tokens, but " +
                               std::to_string(r.params.prompt.size() + r.params.max_tokens) + " were requested (" +
                               std::to_string(r.params.prompt.size()) + " in the prompt, " +
                               std::to_string(r.params.max_tokens) + " for the completion)",
                      "max_tokens", "context_length_exceeded"};
    return r;
  }

 private:
  static const json* field(const json& j, const char* name) {
    const auto it = j.find(name);
    return it == j.end() || it->is_null() ? nullptr : &*it;
  }
  static api_error wrong_type(const char* name, const char* expected) {
    return {400, std::string(name) + " must be " + expected, name, "invalid_type"};
  }
  static double number(const json& j, const char* name, double def, double lo, double hi) {
    const json* v = field(j, name);
    if (v == nullptr) return def;
    if (!v->is_number()) throw wrong_type(name, "a number");
    const double x = v->get<double>();
    if (!(x >= lo && x <= hi))
      throw api_error{400, std::string(name) + " must be in [" + std::to_string(lo) + ", " + std::to_string(hi) +
                               "], got " + v->dump(),
                      name, ""};
    return x;
  }
  static std::int64_t integer(const json& j, const char* name, std::int64_t def, std::int64_t lo, std::int64_t hi) {
    const json* v = field(j, name);
    if (v == nullptr) return def;
    if (!v->is_number_integer()) throw wrong_type(name, "an integer");
    if (v->is_number_unsigned() && v->get<std::uint64_t>() > static_cast<std::uint64_t>(hi))
      throw api_error{400, std::string(name) + " must be at most " + std::to_string(hi) + ", got " + v->dump(), name, ""};
    const auto x = v->get<std::int64_t>();
    if (x < lo || x > hi)
      throw api_error{400, std::string(name) + " must be in [" + std::to_string(lo) + ", " + std::to_string(hi) +
                               "], got " + v->dump(),
                      name, ""};
    return x;
  }
  static bool boolean(const json& j, const char* name, bool def) {
    const json* v = field(j, name);
    if (v == nullptr) return def;
    if (!v->is_boolean()) throw wrong_type(name, "a boolean");
    return v->get<bool>();
  }

  [[nodiscard]] std::vector<token_id> token_ids(const json& a) const {
    if (a.empty()) throw api_error{400, "the prompt has no tokens", "prompt", ""};
    if (a.size() >= model_.context_length)
      throw api_error{400, "the prompt has " + std::to_string(a.size()) + " tokens; this model's context is " +
                               std::to_string(model_.context_length),
                      "prompt", "context_length_exceeded"};
    std::vector<token_id> ids;
    ids.reserve(a.size());
    for (std::size_t i = 0; i < a.size(); ++i) {
      const json& t = a[i];
      if (!t.is_number_integer()) throw wrong_type("prompt", "a string, or an array of token ids (integers)");
      const bool in_range = t.is_number_unsigned() ? t.get<std::uint64_t>() < model_.vocab_size
                                                   : t.get<std::int64_t>() >= 0 &&
                                                         static_cast<std::uint64_t>(t.get<std::int64_t>()) < model_.vocab_size;
      if (!in_range)
        throw api_error{400, "token id " + t.dump() + " at position " + std::to_string(i) +
                                 " is out of range; expected 0 <= id < " + std::to_string(model_.vocab_size),
                        "prompt", "token_out_of_range"};
      ids.push_back(static_cast<token_id>(t.get<std::int64_t>()));
    }
    return ids;
  }
  [[nodiscard]] std::vector<token_id> text(const std::string& s) const {
    if (!codec_) throw api_error{400, "this server has no tokenizer; send the prompt as token ids", "prompt", ""};
    return codec_.encode(s);
  }
  [[nodiscard]] std::vector<token_id> prompt(const json& j) const {
    const json* p = field(j, "prompt");
    if (p == nullptr) throw api_error{400, "prompt is required", "prompt", "missing"};
    if (p->is_string()) return text(p->get<std::string>());
    if (!p->is_array()) throw wrong_type("prompt", "a string, an array of token ids, or a one-element array of either");
    if (!p->empty() && ((*p)[0].is_string() || (*p)[0].is_array())) {
      if (p->size() != 1)
        throw api_error{400, "batched prompts are not supported; send one prompt per request", "prompt", "unsupported"};
      const json& only = (*p)[0];
      if (only.is_string()) return text(only.get<std::string>());
      return token_ids(only);
    }
    return token_ids(*p);
  }
  [[nodiscard]] std::vector<std::string> stops(const json& j) const {
    const json* s = field(j, "stop");
    if (s == nullptr) return {};
    std::vector<std::string> out;
    if (s->is_string()) out.push_back(s->get<std::string>());
    else if (s->is_array()) {
      for (const json& x : *s) {
        if (!x.is_string()) throw wrong_type("stop", "a string or an array of strings");
        out.push_back(x.get<std::string>());
      }
    } else {
      throw wrong_type("stop", "a string or an array of strings");
    }
    if (out.size() > options_.max_stop_strings)
      throw api_error{400, "at most " + std::to_string(options_.max_stop_strings) + " stop strings, got " +
                               std::to_string(out.size()),
                      "stop", ""};
    for (const auto& x : out)
      if (x.empty() || x.size() > options_.max_stop_bytes)
        throw api_error{400, "each stop string must have 1 to " + std::to_string(options_.max_stop_bytes) + " bytes",
                        "stop", ""};
    return out;
  }

  const model_info& model_;
  const text_codec& codec_;
  const http_options& options_;
};

/// The routes of the file comment, installed on an `httplib::Server`. `extra_health` adds
/// fields to `/health` (e.g. the verify port).
class http_api {
 public:
  /// Without `keys` (or with an empty ring) every route is open to anyone who reaches it.
  http_api(completion_service& service, metrics_registry& metrics, text_codec codec, http_options options = {},
           std::function<void(json&)> extra_health = {}, key_ring* keys = nullptr)
      : service_(service),
        metrics_(metrics),
        codec_(std::move(codec)),
        options_(options),
        extra_health_(std::move(extra_health)),
        keys_(keys),
        model_(service.info()),
        parser_(model_, codec_, options_),
        created_(static_cast<std::int64_t>(std::time(nullptr))) {
    metrics_.describe("specdec_http_requests_total", "counter", "HTTP requests by route and status");
    metrics_.describe("specdec_rejected_requests_total", "counter",
                      "Requests refused for their API key, by port and reason (unauthorized, rate_limited)");
    metrics_.describe("specdec_http_request_seconds", "histogram", "HTTP request handling time by route (streams: to the last event)",
                      {0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30});
  }

  /// Installs the routes on `s`; with a `watchdog`, reports each request's begin and end
  /// to it (the watchdog's deadlines apply between requests).
  void install(httplib::Server& s, http_watchdog* watchdog = nullptr) {
    if (watchdog != nullptr)
      s.set_post_routing_handler([watchdog](const httplib::Request& req, httplib::Response&) { watchdog->begin(req); });
    s.set_payload_max_length(options_.max_body_bytes);
    // Runs after the headers and before the body is read: an unauthenticated or
    // rate-limited client costs no body read.
    s.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
      if (keys_ == nullptr || !keys_->enabled() || req.path == "/health") return httplib::Server::HandlerResponse::Unhandled;
      const std::optional<principal> who = caller(req);
      if (!who) {
        res.set_header("WWW-Authenticate", "Bearer");
        return refuse(res, api_error{401,
                                     "a missing or unknown API key; send the header 'Authorization: Bearer KEY' "
                                     "with a key of this server's --api-keys",
                                     "", "invalid_api_key"},
                      "unauthorized");
      }
      if (!keys_->admit(*who)) {
        res.set_header("Retry-After", "1");
        return refuse(res, api_error{429, "this API key's request rate is exhausted; retry later", "",
                                     "rate_limit_exceeded"},
                      "rate_limited");
      }
      return httplib::Server::HandlerResponse::Unhandled;
    });
    s.set_error_handler(httplib::Server::HandlerWithResponse([this](const httplib::Request&, httplib::Response& res) {
      if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
      api_error e{res.status, "", "", ""};
      if (res.status == 413)
        e.message = "the request body exceeds " + std::to_string(options_.max_body_bytes) + " bytes";
      else if (res.status == 404)
        e.message = "no such route", e.code = "unknown_url";
      else
        e.message = "HTTP status " + std::to_string(res.status);
      res.set_content(dump(e.body()), "application/json");
      return httplib::Server::HandlerResponse::Handled;
    }));
    s.set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
      std::string what = "internal error";
      try {
        std::rethrow_exception(ep);
      } catch (const std::exception& e) {
        what += std::string(": ") + e.what();
      } catch (...) {
      }
      reply(res, api_error{500, what, "", ""});
    });
    s.set_logger([this, watchdog](const httplib::Request& req, const httplib::Response& res) {
      if (watchdog != nullptr) watchdog->end(req);
      metrics_.add("specdec_http_requests_total",
                   "route=\"" + route_label(req.path) + "\",code=\"" + std::to_string(res.status) + "\"");
    });
    s.Post("/v1/completions", [this](const httplib::Request& req, httplib::Response& res) { completions(req, res); });
    s.Get("/v1/models", [this](const httplib::Request&, httplib::Response& res) {
      res.set_content(dump(json{{"object", "list"}, {"data", json::array({model_json()})}}), "application/json");
    });
    s.Get(R"(/v1/models/(.+))", [this](const httplib::Request& req, httplib::Response& res) {
      if (req.matches[1] != model_.id)
        return reply(res, api_error{404, "the model '" + std::string(req.matches[1]) + "' does not exist", "model",
                                    "model_not_found"});
      res.set_content(dump(model_json()), "application/json");
    });
    s.Get("/health", [this](const httplib::Request&, httplib::Response& res) {
      const bool ok = service_.accepting();
      json h{{"status", ok ? "ok" : "draining"},
             {"model", model_.id},
             {"vocab_size", model_.vocab_size},
             {"context_length", model_.context_length},
             {"sessions", service_.sessions()},
             {"completions", service_.completions()}};
      if (extra_health_) extra_health_(h);
      res.status = ok ? 200 : 503;
      res.set_content(dump(h), "application/json");
    });
    s.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
      res.set_content(metrics_.render(), "text/plain; version=0.0.4");
    });
  }

  /// Completion responses still being written (a stream counts until its last byte).
  [[nodiscard]] std::size_t responses_in_flight() const noexcept { return in_flight_; }

  static void reply(httplib::Response& res, const api_error& e) {
    res.status = e.status;
    res.set_content(dump(e.body()), "application/json");
  }

 private:
  /// The principal of the request's bearer key (principal 0 on an open server).
  [[nodiscard]] std::optional<principal> caller(const httplib::Request& req) const {
    if (keys_ == nullptr) return principal{};
    const std::string header = req.get_header_value("Authorization");
    std::string_view h = header;
    if (h.size() < 7 || !std::equal(h.begin(), h.begin() + 7, "bearer ", [](char a, char b) {
          return std::tolower(static_cast<unsigned char>(a)) == b;
        }))
      h = {};
    else
      h.remove_prefix(7);
    while (!h.empty() && h.front() == ' ') h.remove_prefix(1);
    while (!h.empty() && h.back() == ' ') h.remove_suffix(1);
    return keys_->authenticate(h);
  }
  httplib::Server::HandlerResponse refuse(httplib::Response& res, const api_error& e, const char* reason) {
    metrics_.add("specdec_rejected_requests_total", std::string("port=\"http\",reason=\"") + reason + "\"");
    res.set_header("Connection", "close");  // the body was not read: the stream cannot carry another request
    reply(res, e);
    return httplib::Server::HandlerResponse::Handled;
  }

  static std::string route_label(const std::string& path) {
    for (const char* r : {"/v1/completions", "/v1/models", "/health", "/metrics"})
      if (path == r) return r;
    return path.rfind("/v1/models/", 0) == 0 ? "/v1/models/{id}" : "other";
  }
  [[nodiscard]] json model_json() const {
    return {{"id", model_.id}, {"object", "model"}, {"created", created_}, {"owned_by", "specdec"},
            {"max_model_len", model_.context_length}};
  }

  /// Everything one completion accumulates, shared by the streaming and the plain path.
  struct generation {
    completion_request req;
    std::shared_ptr<completion_stream> stream;
    text_assembler text;
    std::string id;
    std::int64_t created = 0;
    std::vector<token_id> tokens;  ///< generated
    std::size_t tokens_sent = 0;   ///< streamed already (each chunk carries only new ids)
    token_id prev = 0;             ///< the token before the next one (for its text)
    std::string echo;              ///< the prompt's text when echoing
    std::vector<std::size_t> prompt_offsets;  ///< byte offset of each prompt token in `echo`
    std::size_t prompt_next = 1;   ///< the next prompt token whose logprob arrives
    json logprobs;                 ///< OpenAI's legacy logprobs object, or null
    std::size_t logprobs_sent = 0; ///< entries already streamed
    std::string finish_reason;
    std::string failure;           ///< set when the engine failed the request
    bool done = false;
    clock::time_point started = clock::now();

    generation(completion_request r, std::shared_ptr<completion_stream> s, const text_codec* codec, std::string i,
               std::int64_t c)
        : req(std::move(r)),
          stream(std::move(s)),
          text(codec, req.stop, req.params.prompt.back()),
          id(std::move(i)),
          created(c),
          prev(req.params.prompt.back()) {
      if (req.params.logprobs)
        logprobs = json{{"tokens", json::array()}, {"token_logprobs", json::array()}, {"top_logprobs", json::array()},
                        {"text_offset", json::array()}};
    }
    [[nodiscard]] std::size_t logprob_entries() const { return logprobs.is_object() ? logprobs["tokens"].size() : 0; }
    generation(const generation&) = delete;
    generation& operator=(const generation&) = delete;
    ~generation() {  // the request's tokens and text do not outlive it
      wipe(req.params.prompt);
      wipe(tokens);
      wipe(echo);
    }
  };

  /// Counts a response in `in_flight_` for as long as it lives.
  struct in_flight_token {
    std::atomic<std::size_t>& n;
    explicit in_flight_token(std::atomic<std::size_t>& c) : n(c) { ++n; }
    ~in_flight_token() { --n; }
    in_flight_token(const in_flight_token&) = delete;
    in_flight_token& operator=(const in_flight_token&) = delete;
  };

  void completions(const httplib::Request& req, httplib::Response& res) {
    auto token = std::make_shared<in_flight_token>(in_flight_);  // held by the stream's provider too
    std::shared_ptr<generation> g;
    try {
      const std::optional<principal> who = caller(req);
      completion_request r = parser_.parse(req.body, who && keys_ != nullptr ? keys_->limits(*who).max_tokens : 0);
      if (!service_.accepting()) throw api_error{503, "the server is shutting down", "", "shutting_down"};
      auto stream = service_.submit(r.params);
      g = std::make_shared<generation>(std::move(r), std::move(stream), &codec_, "cmpl-" + random_id(),
                                       static_cast<std::int64_t>(std::time(nullptr)));
    } catch (const api_error& e) {
      return reply(res, e);
    } catch (const unavailable& e) {
      return reply(res, api_error{503, e.what(), "", "overloaded"});
    } catch (const invalid_argument& e) {
      return reply(res, api_error{400, e.what(), "prompt", ""});
    }
    if (g->req.echo) echo_prompt(*g);
    if (!g->req.stream) {
      std::string text = g->echo;
      while (!g->done) text += next_text(*g, clock::now() + std::chrono::seconds(60));
      observe_time(*g);
      if (!g->failure.empty()) return reply(res, api_error{503, g->failure, "", "generation_failed"});
      json body = envelope(*g, text, g->finish_reason);
      if (g->logprobs.is_object()) body["choices"][0]["logprobs"] = g->logprobs;
      body["usage"] = usage(*g);
      return res.set_content(dump(body), "application/json");
    }
    res.set_header("Cache-Control", "no-cache");
    auto echoed = std::make_shared<bool>(!g->req.echo);
    res.set_chunked_content_provider(
        "text/event-stream",
        [this, g, echoed, token](std::size_t, httplib::DataSink& sink) {
          const auto write = [&](const json& j) {
            const std::string s = "data: " + dump(j) + "\n\n";
            return sink.write(s.data(), s.size());
          };
          std::string piece;
          if (!*echoed) {
            *echoed = true;
            piece = g->echo;
          }
          piece += next_text(*g, clock::now() + std::chrono::duration_cast<clock::duration>(
                                                    std::chrono::duration<double>(options_.stream_poll_seconds)));
          const bool new_logprobs = g->logprob_entries() > g->logprobs_sent;
          if (piece.empty() && !new_logprobs && !g->done) {
            if (sink.is_writable && !sink.is_writable()) return cancel(*g);
            return true;  // nothing new yet; httplib calls again
          }
          if (g->failure.empty() && (!piece.empty() || new_logprobs || g->done)) {
            json chunk = envelope(*g, piece, g->done ? g->finish_reason : "");
            if (g->logprobs.is_object()) chunk["choices"][0]["logprobs"] = take_logprobs(*g);
            if (!write(chunk)) return cancel(*g);
          }
          if (!g->done) return true;
          if (!g->failure.empty()) {
            write(api_error{503, g->failure, "", "generation_failed"}.body());
          } else if (g->req.include_usage) {
            write(json{{"id", g->id}, {"object", "text_completion"}, {"created", g->created}, {"model", model_.id},
                       {"choices", json::array()}, {"usage", usage(*g)}});
          }
          const std::string last = "data: [DONE]\n\n";
          sink.write(last.data(), last.size());
          observe_time(*g);
          sink.done();
          return true;
        },
        [g](bool) { g->stream->cancel(); });
  }

  static bool cancel(generation& g) {
    g.stream->cancel();
    return false;
  }

  /// Waits for events until `until` (then drains what is queued without waiting) and
  /// returns the text that became safe to send; sets `done` at the end (finished,
  /// failed, or a stop string matched).
  std::string next_text(generation& g, clock::time_point until) {
    std::string out;
    completion_event e;
    while (!g.done && g.stream->next(e, until)) {
      until = clock::now();
      switch (e.what) {
        case completion_event::kind::prompt:
          if (g.logprobs.is_object() && e.logprobs && g.prompt_next < g.prompt_offsets.size()) {
            const std::size_t i = g.prompt_next++;
            add_logprobs(g, g.req.params.prompt[i - 1], *e.logprobs, g.prompt_offsets[i]);
          }
          break;
        case completion_event::kind::token:
          g.tokens.push_back(e.token);
          if (g.logprobs.is_object() && e.logprobs) add_logprobs(g, g.prev, *e.logprobs, g.echo.size() + g.text.offset());
          g.prev = e.token;
          out += g.text.push(e.token);
          if (g.text.stopped()) {
            g.stream->cancel();
            g.finish_reason = "stop";
            g.done = true;
          }
          break;
        case completion_event::kind::finished:
          g.finish_reason = e.reason;
          g.done = true;
          break;
        case completion_event::kind::failed:
          g.failure = e.reason;
          g.done = true;
          break;
      }
    }
    if (g.done) out += g.text.flush();
    return out;
  }

  /// The echoed prompt's text, and (with logprobs) its first token's null entry.
  void echo_prompt(generation& g) const {
    token_id prev = -1;
    for (token_id t : g.req.params.prompt) {
      g.prompt_offsets.push_back(g.echo.size());
      if (codec_) g.echo += codec_.piece(prev, t);
      prev = t;
    }
    if (!g.logprobs.is_object()) return;
    g.logprobs["tokens"].push_back(label(-1, g.req.params.prompt[0]));
    g.logprobs["token_logprobs"].push_back(nullptr);
    g.logprobs["top_logprobs"].push_back(nullptr);
    g.logprobs["text_offset"].push_back(0);
  }
  void add_logprobs(generation& g, token_id prev, const token_logprobs& lp, std::size_t offset) const {
    json top = json::object();
    for (const auto& [t, v] : lp.top) top[label(prev, t)] = v;
    g.logprobs["tokens"].push_back(label(prev, lp.token));
    g.logprobs["token_logprobs"].push_back(lp.logprob);
    g.logprobs["top_logprobs"].push_back(std::move(top));
    g.logprobs["text_offset"].push_back(offset);
  }
  /// The logprobs entries not yet streamed.
  static json take_logprobs(generation& g) {
    json out = json::object();
    for (const char* k : {"tokens", "token_logprobs", "top_logprobs", "text_offset"}) {
      const json& all = g.logprobs[k];
      out[k] = json(all.begin() + static_cast<std::ptrdiff_t>(g.logprobs_sent), all.end());
    }
    g.logprobs_sent = g.logprob_entries();
    return out;
  }
  /// A token's text for logprobs keys: its piece, or "[id]" without a tokenizer.
  [[nodiscard]] std::string label(token_id prev, token_id t) const {
    if (codec_) return codec_.piece(prev, t);
    std::string s = "[";  // built in steps: GCC 12 warns falsely (-Wrestrict) on "[" + to_string(t)
    s += std::to_string(t);
    s += ']';
    return s;
  }

  /// A response (or, streaming, a chunk) with one choice; `token_ids` are all generated
  /// ids, or in a stream those not sent yet.
  [[nodiscard]] json envelope(generation& g, const std::string& text, const std::string& finish) const {
    json choice{{"text", text}, {"index", 0}, {"logprobs", nullptr},
                {"finish_reason", finish.empty() ? json(nullptr) : json(finish)}};
    if (g.req.return_token_ids) {
      const std::size_t from = g.req.stream ? g.tokens_sent : 0;
      choice["token_ids"] = std::vector<token_id>(g.tokens.begin() + static_cast<std::ptrdiff_t>(from), g.tokens.end());
      g.tokens_sent = g.tokens.size();
    }
    return {{"id", g.id}, {"object", "text_completion"}, {"created", g.created}, {"model", model_.id},
            {"choices", json::array({choice})}};
  }
  static json usage(const generation& g) {
    return {{"prompt_tokens", g.req.params.prompt.size()}, {"completion_tokens", g.tokens.size()},
            {"total_tokens", g.req.params.prompt.size() + g.tokens.size()}};
  }
  void observe_time(const generation& g) {
    metrics_.observe("specdec_http_request_seconds", "route=\"/v1/completions\"",
                     std::chrono::duration<double>(clock::now() - g.started).count());
  }
  static std::string random_id() {
    static constexpr char digits[] = "0123456789abcdef";
    std::uint8_t bytes[12];
    secure_random(bytes, sizeof bytes);
    std::string s;
    for (std::uint8_t b : bytes) s.push_back(digits[b >> 4]), s.push_back(digits[b & 15]);
    return s;
  }

  completion_service& service_;
  metrics_registry& metrics_;
  text_codec codec_;
  http_options options_;
  std::function<void(json&)> extra_health_;
  key_ring* keys_;
  model_info model_;
  request_parser parser_;
  std::int64_t created_;
  std::atomic<std::size_t> in_flight_{0};
};

}  // namespace specdec::serve
