#pragma once
/// \file hybrid/net_session.hpp
/// One device/cloud hybrid request over real sockets, privacy first: the on-device PII
/// detector classifies the request's text, the device model probes the prompt, the
/// arbiter picks a route from the link as measured by a `link_monitor` (never a nominal
/// preset), and the route runs against `specdec-serve`:
///
/// | route             | execution                                                             |
/// |-------------------|-----------------------------------------------------------------------|
/// | `device`          | `autoregressive_decoder` on the device model                          |
/// | `cloud`           | `completion_client`: one streaming `POST /v1/completions`; a `redactable` request sends its redacted text (`options.encode` set) and gets the values put back in `restored_text` |
/// | `speculative(g)`  | the device drafts g tokens a round, the server verifies: greedy with `pipelined_split_decoder` (overlapped drafting, unless `pipelined` is off), sampled with `basic_speculative_decoder` + `remote_verifier` |
/// | `cloud_prefix(k)` | the server streams the first k tokens, the device completes           |
///
/// Privacy: the session does not filter routes itself. It hands each client the request's
/// `request_privacy::of(detection, route)` and the audit log; the client's uplink gate
/// (uplink.hpp) refuses before connecting when `privacy::may_leave_device` says no, so the
/// guarantee sits below the arbiter and below this class. A refused leg (`refused`)
/// continues on the device. Only a `cloud_allowed` request makes the session probe the
/// link (`GET /health`): a request of another class opens no connection but those of its
/// own permitted legs. Every message that leaves is recorded in `options.audit`.
///
/// Measurement: every round trip of the verify loop feeds the monitor (RTT, bytes,
/// capacity), every failure too, and before the first decision (nothing measured yet) a
/// timed `GET /health` gives it one sample. When a cloud-using leg loses the link, the
/// device continues from the committed tokens (no token lost or repeated) and later
/// requests stay on the device until `retry_seconds` have passed and `/health` answers.
///
/// ```cpp
/// specdec::privacy::uplink_audit_log audit("uplink.jsonl");
/// specdec::hybrid::net_session s(little, specdec::hybrid::latency_arbiter{},
///                                {.host = "127.0.0.1", .http_port = 8080, .verify_port = 8081},
///                                {.audit = &audit});
/// specdec::hybrid::net_result r = s.run({.text = text, .prompt = tok.encode(text)}, {.max_new_tokens = 48});
/// std::cout << r.route_trace() << (r.refused ? " (refused)" : "") << " after RTT " << r.link.rtt_seconds << " s\n";
/// ```
#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <memory>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "specdec/decoder.hpp"
#include "specdec/error.hpp"
#include "specdec/fallback.hpp"
#include "specdec/hybrid/arbiter.hpp"
#include "specdec/hybrid/completion_client.hpp"
#include "specdec/hybrid/errors.hpp"
#include "specdec/hybrid/link_monitor.hpp"
#include "specdec/hybrid/pipelined.hpp"
#include "specdec/hybrid/predictor.hpp"
#include "specdec/hybrid/probe.hpp"
#include "specdec/hybrid/remote_verifier.hpp"
#include "specdec/hybrid/session.hpp"  // fixed_arbiter
#include "specdec/hybrid/uplink.hpp"
#include "specdec/model.hpp"
#include "specdec/privacy/audit.hpp"
#include "specdec/privacy/detector.hpp"
#include "specdec/privacy/redaction.hpp"
#include "specdec/sampling.hpp"
#include "specdec/token.hpp"

namespace specdec::hybrid {

/// Where `specdec-serve` answers: its HTTP port (completions, health) and verify port.
///
/// ```cpp
/// specdec::hybrid::net_endpoint ep{.host = "10.0.0.2", .http_port = 8080, .verify_port = 8081};
/// ```
struct net_endpoint {
  std::string host = "127.0.0.1";
  std::uint16_t http_port = 0;
  std::uint16_t verify_port = 0;

  void validate() const {
    if (http_port == 0 || verify_port == 0)
      throw invalid_argument("net_endpoint: http_port = " + std::to_string(http_port) + ", verify_port = " +
                             std::to_string(verify_port) + "; expected both set (the server's /health names the verify port)");
  }
};

/// Knobs of a `net_session`.
///
/// ```cpp
/// specdec::privacy::uplink_audit_log audit("uplink.jsonl");
/// specdec::hybrid::net_session_options o{.sampling = {.temperature = 0.8f}, .seed = 3, .pipelined = false,
///                                        .audit = &audit,
///                                        .detector = specdec::privacy::pii_detector({.on_detection = specdec::privacy::privacy_class::redactable})};
/// ```
struct net_session_options {
  sampling_params sampling{};  ///< temperature 0 = greedy
  std::uint64_t seed = 0;      ///< seeds every leg (with the request id and the leg's index)
  budget limits{};             ///< passed to the arbiter
  bool pipelined = true;       ///< greedy split decoding drafts ahead while a round is in flight
  double retry_seconds = 5.0;  ///< after a lost link, stay on the device at least this long
  verify_client_options verify{};    ///< its `audit` is replaced by `audit`
  completion_client_options http{};  ///< its `audit` is replaced by `audit`
  link_monitor_options monitor{};
  /// Where every message sent is recorded (uplink.hpp); null: no log. Must outlive the session.
  specdec::privacy::uplink_audit_log* audit = nullptr;
  /// Classifies each request's text (its `on_detection` says what a detected span makes
  /// of a request: `local_only` by default, `redactable` to opt in to redaction).
  specdec::privacy::pii_detector detector{};
  /// Text -> token ids, BOS first (the device's tokenizer). Only the cloud route of a
  /// `redactable` request needs it: the redacted text is encoded and sent instead of the
  /// prompt. Without it such a request is refused on that route and runs on the device.
  std::function<std::vector<token_id>(std::string_view)> encode{};

  void validate() const {
    sampling.validate();
    limits.validate();
    specdec::detail::check_non_negative("net_session_options.retry_seconds", retry_seconds);
    verify.validate();
    monitor.validate();
  }
};

/// One request: the text the detector reads (empty: nothing detected, the declared class
/// stands), the tokens the models read (the text's encoding), the class the caller
/// declares and an id (the arbiter's features, the legs' seeds).
///
/// ```cpp
/// specdec::hybrid::net_request q{.text = text, .prompt = ids,
///                                .declared = specdec::privacy::privacy_class::cloud_allowed, .id = 7};
/// ```
struct net_request {
  std::string_view text{};
  std::span<const token_id> prompt{};
  specdec::privacy::privacy_class declared = specdec::privacy::privacy_class::cloud_allowed;
  std::uint64_t id = 0;
};

/// What one request produced, where it ran and why, and what it cost, measured on the
/// wall clock and at the sockets.
///
/// ```cpp
/// auto r = s.execute(prompt, {.max_new_tokens = 32}, specdec::hybrid::route::speculative(4));
/// double per_token = r.latency_seconds / double(r.tokens.size());
/// ```
struct net_result {
  std::vector<token_id> tokens;  ///< generated tokens (of the redacted prompt, after a redacted cloud leg)
  specdec::privacy::detection detection;  ///< spans found and the request's class
  request_features features;     ///< what the arbiter saw (empty for `execute`)
  link_estimate link;            ///< the measured link the decision read
  route planned;
  std::vector<route> legs;       ///< the routes that ran, in order
  double latency_seconds = 0.0;  ///< request to last token (the probe included for `run`)
  double ttft_seconds = std::numeric_limits<double>::quiet_NaN();  ///< to the first token
  std::uint64_t bytes_up = 0;    ///< at the sockets, framing and HTTP headers included
  std::uint64_t bytes_down = 0;
  std::size_t verify_rounds = 0;  ///< verify requests (each one batched target forward)
  std::size_t cloud_tokens = 0;   ///< tokens the server wrote or verified
  std::size_t device_tokens = 0;  ///< tokens the device wrote alone
  bool fell_back_to_device = false;  ///< a cloud-using leg lost the link
  bool refused = false;              ///< the uplink gate refused a leg: the device ran it
  bool redacted = false;             ///< the cloud saw the redacted prompt
  std::string restored_text;         ///< a redacted cloud leg's text with the values put back
  stop_reason stop = stop_reason::none;

  /// E.g. "cloud_prefix(8)>device".
  [[nodiscard]] std::string route_trace() const {
    std::string s;
    for (const route& r : legs) {
      if (!s.empty()) s += '>';
      s += to_string(r.kind);
      if (r.kind == route_kind::speculative || r.kind == route_kind::cloud_prefix) {
        s += '(';
        s += std::to_string(r.kind == route_kind::speculative ? r.gamma : r.prefix_tokens);
        s += ')';
      }
    }
    return s;
  }
};

/// Runs hybrid requests against one server (see the file comment). Holds a reference to
/// the device model (it must outlive the session) and one client per kind of leg. One
/// request at a time.
///
/// ```cpp
/// specdec::hybrid::net_session s(little, specdec::hybrid::fixed_arbiter{specdec::hybrid::route::speculative(4)},
///                                {.http_port = 8080, .verify_port = 8081}, {.retry_seconds = 10.0});
/// auto r = s.execute(prompt, {.max_new_tokens = 32}, specdec::hybrid::route::cloud_prefix(8));
/// double rtt = s.monitor().rtt_quantile(0.95);
/// ```
template <language_model Device, arbiter A, length_predictor LP = constant_length_predictor,
          difficulty_predictor DP = entropy_difficulty_predictor>
class net_session {
 public:
  net_session(Device& device, A arb, net_endpoint ep, net_session_options o = {}, LP length = {}, DP difficulty = {})
      : device_(device), arbiter_(std::move(arb)), ep_(std::move(ep)), opt_(std::move(o)),
        length_(std::move(length)), difficulty_(std::move(difficulty)) {
    ep_.validate();
    opt_.validate();
    arbiter_.validate();
    opt_.http.audit = opt_.audit;
    opt_.verify.audit = opt_.audit;
    monitor_ = std::make_shared<link_monitor>(opt_.monitor);
    http_ = std::make_unique<completion_client>(ep_.host, ep_.http_port, opt_.http);
  }

  [[nodiscard]] A& arbiter() noexcept { return arbiter_; }
  /// The measured link: every client of this session feeds it.
  [[nodiscard]] const link_monitor& monitor() const noexcept { return *monitor_; }
  [[nodiscard]] const net_session_options& options() const noexcept { return opt_; }
  /// The pipelined decoder's overlap statistics (null before a greedy split request).
  [[nodiscard]] const pipeline_stats* pipeline() const noexcept { return piped_ ? &piped_->pipeline() : nullptr; }

  /// One timed `GET /health` (connection set-up included) recorded as an RTT sample;
  /// whether the server takes work.
  bool probe_link() {
    const std::uint64_t up0 = http_->bytes_sent(), down0 = http_->bytes_received();
    const auto t0 = clock::now();
    try {
      const server_health h = http_->health();
      monitor_->record(seconds_since(t0), http_->bytes_sent() - up0, http_->bytes_received() - down0);
      return h.ok;
    } catch (const link_unavailable&) {
      monitor_->record_failure();
      return false;
    }
  }

  /// The device's probe plus the predictions: `probe_trajectory` (default look-ahead,
  /// stopping at EOS) if the arbiter `reads_lookahead`, else `probe_request`.
  [[nodiscard]] request_features features(std::span<const token_id> prompt, std::uint64_t request_id = 0) {
    request_features f = reads_lookahead(arbiter_)
                             ? probe_trajectory(device_, prompt, {.stop_tokens = {eos_token}}).features
                             : probe_request(device_, prompt);
    f.request_id = request_id;
    f.predicted_length = static_cast<double>(length_.predict(f));
    f.predicted_difficulty = static_cast<double>(difficulty_.predict(f));
    return f;
  }

  /// Detect, probe, decide from the measured link, execute: one request end to end.
  [[nodiscard]] net_result run(const net_request& q, const generation_options& gen = {}) {
    const auto t0 = clock::now();
    specdec::privacy::detection d = opt_.detector.analyze(q.text, q.declared);
    request_features f = features(q.prompt, q.id);
    // Only a request that may leave in its plain form lets the session touch the link
    // before its legs do.
    const bool may_probe = d.decision == specdec::privacy::privacy_class::cloud_allowed;
    if (may_probe && monitor_->samples() == 0) (void)probe_link();
    const link_estimate l = monitor_->estimate();
    route r = arbiter_.decide(f, l, opt_.limits);
    if (r.uses_cloud() && !cloud_reachable(may_probe)) r = route::on_device();
    net_result res = execute_from(q, std::move(d), gen, r, t0);
    res.features = std::move(f);
    res.link = l;
    return res;
  }
  /// A request without text: nothing to detect, the class is `cloud_allowed`.
  [[nodiscard]] net_result run(std::span<const token_id> prompt, const generation_options& gen = {},
                               std::uint64_t request_id = 0) {
    return run(net_request{.prompt = prompt, .id = request_id}, gen);
  }

  /// Executes `r` for `q` without probing or asking the arbiter (the detector still runs).
  [[nodiscard]] net_result execute(const net_request& q, const generation_options& gen, route r) {
    net_result res = execute_from(q, opt_.detector.analyze(q.text, q.declared), gen, r, clock::now());
    res.link = monitor_->estimate();
    return res;
  }
  [[nodiscard]] net_result execute(std::span<const token_id> prompt, const generation_options& gen, route r) {
    return execute(net_request{.prompt = prompt}, gen, r);
  }

 private:
  using clock = std::chrono::steady_clock;
  enum class leg_end { done, prefix_done, link_lost, refused };
  using sampled_decoder = basic_speculative_decoder<Device, fixed_gamma, remote_verifier>;

  static double seconds_since(clock::time_point t0) { return std::chrono::duration<double>(clock::now() - t0).count(); }

  /// False while a lost link's back-off lasts; after it, whether /health answers (asked
  /// only when `may_probe`; otherwise the leg itself finds out).
  bool cloud_reachable(bool may_probe) {
    if (!down_since_) return true;
    if (seconds_since(*down_since_) < opt_.retry_seconds) return false;
    if (!may_probe) return true;
    if (!probe_link()) {
      down_since_ = clock::now();
      return false;
    }
    down_since_.reset();
    return true;
  }

  net_result execute_from(const net_request& q, specdec::privacy::detection d, const generation_options& gen,
                          route r, clock::time_point t0) {
    if (r.kind == route_kind::speculative && r.gamma == 0)
      throw invalid_argument("net_session: route speculative needs gamma >= 1, got 0");
    if (r.kind == route_kind::cloud_prefix && r.prefix_tokens == 0)
      throw invalid_argument("net_session: route cloud_prefix needs prefix_tokens >= 1, got 0");
    specdec::detail::validate_request(q.prompt, gen, device_.vocab_size(), device_.context_length(), "net_session");
    net_result res;
    res.detection = std::move(d);
    res.planned = r;
    prompt_.assign(q.prompt.begin(), q.prompt.end());
    q_ = &q;
    res_ = &res;
    gen_ = &gen;
    t0_ = t0;
    const std::uint64_t up0 = bytes_up(), down0 = bytes_down();
    std::uint64_t leg = 0;
    route cur = r;
    if (gen.max_new_tokens == 0) res.stop = stop_reason::max_tokens;
    while (res.stop == stop_reason::none) {
      if (prompt_.size() + res.tokens.size() >= device_.context_length()) {
        res.stop = stop_reason::context;
        break;
      }
      res.legs.push_back(cur);
      const std::uint64_t seed =
          specdec::hybrid::detail::mix64(specdec::hybrid::detail::mix64(opt_.seed ^ (q.id * 0x9e3779b97f4a7c15ULL)) + leg++);
      const std::size_t before = res.tokens.size();
      leg_end e = leg_end::done;
      try {
        switch (cur.kind) {
          case route_kind::device: e = run_device(seed); break;
          case route_kind::cloud: e = run_cloud(seed, cur, gen.max_new_tokens); break;
          case route_kind::cloud_prefix: e = run_cloud(seed, cur, cur.prefix_tokens); break;
          case route_kind::speculative: e = run_split(seed, cur); break;
        }
      } catch (const privacy_violation&) {
        if (res.tokens.size() != before) throw;  // the gate refuses before anything is sent
        e = leg_end::refused;
      } catch (const link_unavailable&) {
        if (cur.kind != route_kind::speculative) monitor_->record_failure();  // the split decoders record theirs
        down_since_ = clock::now();
        e = res.stop == stop_reason::none ? leg_end::link_lost : leg_end::done;
      }
      if (e == leg_end::done && res.stop == stop_reason::none)  // the leg ended early: EOS on the server, or the context
        res.stop = prompt_.size() + res.tokens.size() >= device_.context_length() ? stop_reason::context : stop_reason::eos;
      if (e == leg_end::link_lost) res.fell_back_to_device = true;
      if (e == leg_end::refused) res.refused = true;
      cur = route::on_device();
    }
    res.latency_seconds = seconds_since(t0);
    res.bytes_up = bytes_up() - up0;
    res.bytes_down = bytes_down() - down0;
    q_ = nullptr;
    res_ = nullptr;
    gen_ = nullptr;
    return res;
  }

  [[nodiscard]] std::uint64_t bytes_up() const {
    return http_->bytes_sent() + (piped_ ? piped_->client().bytes_sent() : 0) +
           (sampled_ ? sampled_->verifier().client().bytes_sent() : 0);
  }
  [[nodiscard]] std::uint64_t bytes_down() const {
    return http_->bytes_received() + (piped_ ? piped_->client().bytes_received() : 0) +
           (sampled_ ? sampled_->verifier().client().bytes_received() : 0);
  }

  /// The prompt plus every token committed so far.
  std::vector<token_id> leg_prompt() const {
    std::vector<token_id> p = prompt_;
    p.insert(p.end(), res_->tokens.begin(), res_->tokens.end());
    return p;
  }
  generation_options leg_options() const {
    generation_options o;
    o.max_new_tokens = gen_->max_new_tokens - res_->tokens.size();
    o.stop_at_eos = gen_->stop_at_eos;
    o.sync_caches = false;
    return o;  // stop sequences are matched by `commit`, across legs
  }

  /// Records a committed token; false when the request is complete.
  bool commit(token_id t, bool by_cloud) {
    net_result& res = *res_;
    res.tokens.push_back(t);
    (by_cloud ? res.cloud_tokens : res.device_tokens) += 1;
    if (res.tokens.size() == 1) res.ttft_seconds = seconds_since(t0_);
    if (specdec::detail::ends_with_any(res.tokens, gen_->stop_sequences)) res.stop = stop_reason::stop_sequence;
    else if (gen_->stop_at_eos && t == eos_token) res.stop = stop_reason::eos;
    else if (res.tokens.size() >= gen_->max_new_tokens) res.stop = stop_reason::max_tokens;
    return res.stop == stop_reason::none;
  }

  leg_end run_device(std::uint64_t seed) {
    const auto p = leg_prompt();
    autoregressive_decoder<Device> dec(device_, opt_.sampling, seed);
    (void)dec.generate(p, leg_options(), [&](token_id t) { return commit(t, false); });
    return leg_end::done;
  }

  /// A cloud leg writing at most `cap` tokens. A `redactable` request on the cloud route
  /// (and only as its first leg) sends its redacted text instead of the prompt.
  leg_end run_cloud(std::uint64_t seed, const route& r, std::size_t cap) {
    request_privacy priv = request_privacy::of(res_->detection, r);
    std::vector<token_id> p = leg_prompt();
    std::optional<specdec::privacy::redaction> red;
    if (priv.level == specdec::privacy::privacy_class::redactable && r.kind == route_kind::cloud &&
        res_->tokens.empty() && opt_.encode) {
      red = specdec::privacy::redact(q_->text, res_->detection.spans);
      p = opt_.encode(red->text);
      priv.form = specdec::privacy::payload_form::redacted;
    }
    const std::size_t left = gen_->max_new_tokens - res_->tokens.size();
    const std::size_t n = std::min(cap, left);
    const completion_result c =
        http_->complete({.prompt = std::move(p), .max_tokens = n, .params = opt_.sampling, .seed = seed, .data = priv},
                        [&](const completion_chunk& ch) {
                          for (token_id t : ch.tokens)
                            if (!commit(t, true)) return false;
                          return true;
                        });
    if (red) {
      res_->redacted = true;
      res_->restored_text = specdec::privacy::restore(c.text, *red).text;
    }
    // A capped prefix that ran its length hands over; EOS or the request's end stop here.
    return c.finish_reason == "length" && n < left ? leg_end::prefix_done : leg_end::done;
  }

  leg_end run_split(std::uint64_t seed, const route& r) {
    const auto p = leg_prompt();
    const request_privacy priv = request_privacy::of(res_->detection, r);
    auto on_token = [&](token_id t) { return commit(t, true); };
    if (opt_.sampling.greedy() && opt_.pipelined) {
      if (!piped_)
        piped_ = std::make_unique<pipelined_split_decoder<Device>>(
            device_, ep_.host, ep_.verify_port, pipeline_options{.client = opt_.verify, .monitor = monitor_});
      piped_->options().gamma = r.gamma;
      piped_->options().privacy = priv;
      const std::size_t rounds0 = piped_->pipeline().rounds;
      struct count_rounds {
        net_result& res;
        pipelined_split_decoder<Device>& d;
        std::size_t before;
        ~count_rounds() { res.verify_rounds += d.pipeline().rounds - before; }
      } counter{*res_, *piped_, rounds0};
      (void)piped_->generate(p, leg_options(), on_token);
      return leg_end::done;
    }
    if (!sampled_)
      sampled_ = std::make_unique<sampled_decoder>(
          device_, fixed_gamma{.gamma = r.gamma},
          remote_verifier(ep_.host, ep_.verify_port,
                          {.vocab = device_.vocab_size(), .client = opt_.verify, .monitor = monitor_}),
          opt_.sampling, seed);
    sampled_->fallback().gamma = r.gamma;
    sampled_->set_seed(seed);
    sampled_->verifier().set_privacy(priv);
    const std::size_t rounds0 = sampled_->verifier().monitor().samples();
    // Counts the rounds, and ends the server's session and the connection when the leg
    // ends (the server keeps no state for a finished request).
    struct end_leg {
      net_result& res;
      remote_verifier& v;
      std::size_t before;
      ~end_leg() {
        res.verify_rounds += v.monitor().samples() - before;
        v.reset();
      }
    } guard{*res_, sampled_->verifier(), rounds0};
    (void)sampled_->generate(p, leg_options(), on_token);
    return leg_end::done;
  }

  Device& device_;
  A arbiter_;
  net_endpoint ep_;
  net_session_options opt_;
  LP length_;
  DP difficulty_;
  std::shared_ptr<link_monitor> monitor_;
  std::unique_ptr<completion_client> http_;
  std::unique_ptr<pipelined_split_decoder<Device>> piped_;
  std::unique_ptr<sampled_decoder> sampled_;
  std::optional<clock::time_point> down_since_;
  // Per-request state.
  std::vector<token_id> prompt_;
  const net_request* q_ = nullptr;
  net_result* res_ = nullptr;
  const generation_options* gen_ = nullptr;
  clock::time_point t0_{};
};

}  // namespace specdec::hybrid
