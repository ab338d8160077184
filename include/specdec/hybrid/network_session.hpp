#pragma once
/// \file hybrid/network_session.hpp
/// One device/cloud hybrid request over real sockets, privacy first: the on-device PII
/// detector classifies the prompt, an arbiter picks a route, and the route runs against
/// `specdec-serve` with the network clients of this directory:
///
/// | route             | execution                                                                  |
/// |-------------------|----------------------------------------------------------------------------|
/// | `device`          | `autoregressive_decoder` on the device                                     |
/// | `cloud`           | `completion_client` (streaming); redacted first if the request is `redactable` and a text encoder is configured |
/// | `speculative(g)`  | `basic_speculative_decoder(device, fixed_gamma{g}, remote_verifier)`, greedy or sampled |
/// | `cloud_prefix(k)` | `completion_client` writes k tokens, the device completes                  |
///
/// The session does not filter routes by privacy itself: it hands the request's class
/// (`request_privacy::of(detection, route)`) to the client of the route, whose uplink gate
/// (uplink.hpp) refuses before connecting when `privacy::may_leave_device` says no - the
/// guarantee sits below the arbiter and below this class. A refused leg (`refused`) and a
/// leg whose link fails (`fell_back_to_device`) continue on the device from the committed
/// tokens. Every message that does leave is recorded in `options.audit`.
///
/// ```cpp
/// specdec::cpu::transformer little("models/kjv-little.bin");
/// specdec::privacy::uplink_audit_log audit("uplink.jsonl");
/// specdec::hybrid::network_session s(little, specdec::hybrid::confidence_arbiter{},
///                                    {.host = "127.0.0.1", .http_port = 8080, .verify_port = 8081},
///                                    {.audit = &audit});
/// auto r = s.run({.text = text, .prompt = tok.encode(text)}, {.max_new_tokens = 32});
/// // r.detection.decision: the class; r.route_trace(): e.g. "cloud" or "device" if refused
/// ```
#include <cstddef>
#include <cstdint>
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
#include "specdec/generation.hpp"
#include "specdec/hybrid/arbiter.hpp"
#include "specdec/hybrid/completion_client.hpp"
#include "specdec/hybrid/errors.hpp"
#include "specdec/hybrid/probe.hpp"
#include "specdec/hybrid/remote_verifier.hpp"
#include "specdec/hybrid/uplink.hpp"
#include "specdec/model.hpp"
#include "specdec/privacy/detector.hpp"
#include "specdec/privacy/redaction.hpp"
#include "specdec/sampling.hpp"
#include "specdec/token.hpp"

namespace specdec::hybrid {

/// Where `specdec-serve` listens: its HTTP port (cloud and cloud-prefix legs) and its verify
/// port (split legs).
///
/// ```cpp
/// specdec::hybrid::cloud_endpoint e{.host = "10.0.0.5", .http_port = 8080, .verify_port = 8081};
/// ```
struct cloud_endpoint {
  std::string host = "127.0.0.1";
  std::uint16_t http_port = 0;
  std::uint16_t verify_port = 0;
};

/// Knobs of a `network_session`.
///
/// ```cpp
/// specdec::privacy::uplink_audit_log audit("uplink.jsonl");
/// specdec::hybrid::network_session_options o{.sampling = {.temperature = 0.8f}, .seed = 7, .audit = &audit};
/// ```
struct network_session_options {
  sampling_params sampling{};  ///< temperature 0 = greedy
  std::uint64_t seed = 0;      ///< seeds every leg (with the request id and the leg's index)
  link_estimate link{};        ///< what the arbiter is told about the link
  budget limits{};             ///< passed to the arbiter
  /// Where every message sent is recorded (uplink.hpp); null: no log. Must outlive the session.
  specdec::privacy::uplink_audit_log* audit = nullptr;
  completion_client_options http{};  ///< its `audit` is replaced by `audit`
  verify_client_options verify{};    ///< its `audit` is replaced by `audit`
  /// Text -> token ids, BOS first (the device's tokenizer). Only the cloud route of a
  /// `redactable` request needs it: the redacted text is encoded and sent instead of the
  /// prompt. Without it such a request is answered on the device.
  std::function<std::vector<token_id>(std::string_view)> encode{};

  void validate() const {
    sampling.validate();
    limits.validate();
    verify.validate();
  }
};

/// One request: the text the detector reads, the tokens the models read (the text's
/// encoding), the class the caller declares and an id for the arbiter's features.
///
/// ```cpp
/// specdec::hybrid::network_request q{.text = text, .prompt = ids,
///                                    .declared = specdec::privacy::privacy_class::cloud_allowed};
/// ```
struct network_request {
  std::string_view text{};
  std::span<const token_id> prompt{};
  specdec::privacy::privacy_class declared = specdec::privacy::privacy_class::cloud_allowed;
  std::uint64_t id = 0;
};

/// What a request produced, where it ran and why.
struct network_result {
  std::vector<token_id> tokens;           ///< generated tokens (of the redacted prompt, on a redacted cloud leg)
  specdec::privacy::detection detection;  ///< spans found and the request's class
  route planned;                          ///< the arbiter's decision
  std::vector<route> legs;                ///< the routes executed, in order
  bool refused = false;                   ///< the uplink gate refused a leg: it ran on the device
  bool fell_back_to_device = false;       ///< a cloud-using leg lost the link
  bool redacted = false;                  ///< the cloud saw the redacted prompt
  std::string restored_text;              ///< a redacted cloud leg's text with the values put back
  std::size_t cloud_tokens = 0;           ///< written or verified by the cloud
  std::size_t device_tokens = 0;          ///< written by the device alone
  specdec::stop_reason stop_reason = specdec::stop_reason::none;

  /// E.g. "cloud_prefix(4)>device".
  [[nodiscard]] std::string route_trace() const {
    std::string s;
    for (const auto& r : legs) {
      if (!s.empty()) s += '>';
      s += to_string(r.kind);
      if (r.kind == route_kind::speculative) s += "(" + std::to_string(r.gamma) + ")";
      if (r.kind == route_kind::cloud_prefix) s += "(" + std::to_string(r.prefix_tokens) + ")";
    }
    return s;
  }
};

/// Runs requests with a device model, an arbiter and a `specdec-serve` (see the file
/// comment). Holds a reference to the device model (it must outlive the session). One
/// request at a time.
template <language_model Device, arbiter A>
class network_session {
 public:
  network_session(Device& device, A arb, cloud_endpoint cloud, network_session_options options = {},
                  specdec::privacy::pii_detector detector = specdec::privacy::pii_detector{})
      : device_(device),
        arbiter_(std::move(arb)),
        cloud_(std::move(cloud)),
        opts_(std::move(options)),
        detector_(std::move(detector)) {
    opts_.validate();
    arbiter_.validate();
    opts_.http.audit = opts_.audit;
    opts_.verify.audit = opts_.audit;
  }

  [[nodiscard]] A& arbiter() noexcept { return arbiter_; }
  [[nodiscard]] const network_session_options& options() const noexcept { return opts_; }

  /// Detects, probes the device for the arbiter's features, routes and executes.
  [[nodiscard]] network_result run(const network_request& q, const generation_options& gen = {}) {
    request_features f = probe_request(device_, q.prompt);
    f.request_id = q.id;
    f.predicted_length = static_cast<double>(gen.max_new_tokens);
    return execute(q, gen, arbiter_.decide(f, opts_.link, opts_.limits));
  }

  /// Executes route `r` for `q` without asking the arbiter (the detector still runs).
  [[nodiscard]] network_result execute(const network_request& q, const generation_options& gen, route r) {
    specdec::detail::validate_request(q.prompt, gen, device_.vocab_size(), device_.context_length(),
                                      "hybrid::network_session");
    network_result res;
    res.detection = detector_.analyze(q.text, q.declared);
    res.planned = r;
    q_ = &q;
    gen_ = &gen;
    res_ = &res;
    route cur = r;
    std::size_t leg = 0;
    if (gen.max_new_tokens == 0) res.stop_reason = stop_reason::max_tokens;
    while (res.stop_reason == stop_reason::none) {
      if (q.prompt.size() + res.tokens.size() >= device_.context_length()) {
        res.stop_reason = stop_reason::context;
        break;
      }
      res.legs.push_back(cur);
      const std::uint64_t seed = detail::mix64(detail::mix64(opts_.seed ^ (q.id * 0x9e3779b97f4a7c15ULL)) + leg++);
      const std::size_t before = res.tokens.size();
      try {
        switch (cur.kind) {
          case route_kind::device: run_device(seed); break;
          case route_kind::cloud: run_cloud(seed, cur, remaining()); break;
          case route_kind::cloud_prefix: run_cloud(seed, cur, std::min(cur.prefix_tokens, remaining())); break;
          case route_kind::speculative: run_split(seed, cur); break;
        }
        if (cur.kind == route_kind::cloud_prefix && res.stop_reason == stop_reason::none) {
          // The prefix is written, or the server ended early (EOS, a stop string).
          if (res.tokens.size() - before < std::min(cur.prefix_tokens, gen.max_new_tokens - before))
            res.stop_reason = stop_reason::eos;
          cur = route::on_device();
        } else if (cur.kind == route_kind::cloud && res.stop_reason == stop_reason::none) {
          res.stop_reason = stop_reason::eos;  // the server stopped before max_tokens
        }
      } catch (const privacy_violation&) {
        if (res.tokens.size() != before) throw;  // the gate refuses before anything is sent
        res.refused = true;
        cur = route::on_device();
      } catch (const link_unavailable&) {
        res.fell_back_to_device = true;
        cur = route::on_device();
      }
    }
    q_ = nullptr;
    gen_ = nullptr;
    res_ = nullptr;
    return res;
  }

 private:
  [[nodiscard]] std::size_t remaining() const { return gen_->max_new_tokens - res_->tokens.size(); }

  /// The prompt plus every token committed so far.
  [[nodiscard]] std::vector<token_id> leg_prompt() const {
    std::vector<token_id> p(q_->prompt.begin(), q_->prompt.end());
    p.insert(p.end(), res_->tokens.begin(), res_->tokens.end());
    return p;
  }
  [[nodiscard]] generation_options leg_options() const {
    generation_options o;
    o.max_new_tokens = remaining();
    o.stop_at_eos = gen_->stop_at_eos;
    o.sync_caches = false;
    return o;  // stop sequences are matched by `commit`, across legs
  }

  /// Records a committed token; false when the request is complete.
  bool commit(token_id t, bool by_cloud) {
    network_result& res = *res_;
    res.tokens.push_back(t);
    (by_cloud ? res.cloud_tokens : res.device_tokens) += 1;
    if (specdec::detail::ends_with_any(res.tokens, gen_->stop_sequences)) res.stop_reason = stop_reason::stop_sequence;
    else if (gen_->stop_at_eos && t == eos_token) res.stop_reason = stop_reason::eos;
    else if (res.tokens.size() >= gen_->max_new_tokens) res.stop_reason = stop_reason::max_tokens;
    return res.stop_reason == stop_reason::none;
  }
  void finish(const generation_result& g) {
    if (res_->stop_reason == stop_reason::none && g.stop_reason != stop_reason::callback)
      res_->stop_reason = g.stop_reason;
  }

  void run_device(std::uint64_t seed) {
    autoregressive_decoder<Device> dec(device_, opts_.sampling, seed);
    finish(dec.generate(leg_prompt(), leg_options(), [&](token_id t) { return commit(t, false); }));
  }

  void run_split(std::uint64_t seed, const route& r) {
    remote_verifier cloud(cloud_.host, cloud_.verify_port,
                          {.vocab = device_.vocab_size(),
                           .client = opts_.verify,
                           .privacy = request_privacy::of(res_->detection, r)});
    basic_speculative_decoder dec(device_, fixed_gamma{.gamma = r.gamma == 0 ? 1 : r.gamma}, std::move(cloud),
                                  opts_.sampling, seed);
    finish(dec.generate(leg_prompt(), leg_options(), [&](token_id t) { return commit(t, true); }));
  }

  /// A cloud leg writing at most `cap` tokens. A `redactable` request on the cloud route
  /// (and only as its first leg) sends its redacted text instead of the prompt.
  void run_cloud(std::uint64_t seed, const route& r, std::size_t cap) {
    request_privacy p = request_privacy::of(res_->detection, r);
    std::vector<token_id> prompt = leg_prompt();
    std::optional<specdec::privacy::redaction> red;
    if (p.level == specdec::privacy::privacy_class::redactable && r.kind == route_kind::cloud &&
        res_->tokens.empty() && opts_.encode) {
      red = specdec::privacy::redact(q_->text, res_->detection.spans);
      prompt = opts_.encode(red->text);
      p.form = specdec::privacy::payload_form::redacted;
    }
    completion_client client(cloud_.host, cloud_.http_port, opts_.http);
    completion_request req{.prompt = std::move(prompt), .max_tokens = cap, .params = opts_.sampling, .seed = seed,
                           .data = p};
    const completion_result c = client.complete(req, [&](const completion_chunk& chunk) {
      for (token_id t : chunk.tokens)
        if (!commit(t, true)) return false;
      return true;
    });
    if (red) {
      res_->redacted = true;
      res_->restored_text = specdec::privacy::restore(c.text, *red).text;
    }
  }

  Device& device_;
  A arbiter_;
  cloud_endpoint cloud_;
  network_session_options opts_;
  specdec::privacy::pii_detector detector_;
  // Per-request state.
  const network_request* q_ = nullptr;
  const generation_options* gen_ = nullptr;
  network_result* res_ = nullptr;
};

}  // namespace specdec::hybrid
