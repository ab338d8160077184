#pragma once
/// \file remote_model.hpp
/// Models over a simulated link: `timed_model<M>` charges each forward's compute to the
/// link's virtual clock (the device side), and `remote_model<M>` is the cloud side, whose
/// forwards also pay for the messages they need (token ids up, verdicts / rows / streamed
/// tokens down). Both model `specdec::language_model`, so the generic decoders run over
/// them unchanged: `speculative_decoder(timed device, remote cloud, ...)` is split
/// speculative decoding over the link.
///
/// Compute time is either the measured wall time of the wrapped forward or, for
/// reproducible experiments and tests, an injected `cost_function`; either way it is
/// multiplied by a scale (a `compute_model`'s device or cloud factor) before it is
/// charged.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <functional>
#include <limits>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "specdec/error.hpp"
#include "specdec/hybrid/errors.hpp"
#include "specdec/hybrid/link.hpp"
#include "specdec/hybrid/run_ahead.hpp"
#include "specdec/model.hpp"
#include "specdec/sampling.hpp"
#include "specdec/token.hpp"

namespace specdec::hybrid {

/// Seconds of real work a forward of `block` new tokens after `cached` cached tokens
/// stands for (before scaling). Empty = measure the wall time of the forward.
///
/// ```cpp
/// specdec::hybrid::cost_function c = specdec::hybrid::linear_cost{.per_call = 1e-3, .per_token = 1e-4};
/// double s = c(8, 100);  // 1.8 ms
/// ```
using cost_function = std::function<double(std::size_t block, std::size_t cached)>;

/// A deterministic cost: `per_call + per_token * block` seconds per forward.
///
/// ```cpp
/// specdec::hybrid::linear_cost c{.per_call = 2e-3, .per_token = 5e-4};
/// ```
struct linear_cost {
  double per_call = 0.0;   ///< >= 0, seconds per forward
  double per_token = 0.0;  ///< >= 0, seconds per token of the block

  [[nodiscard]] double operator()(std::size_t block, std::size_t /*cached*/) const noexcept {
    return per_call + per_token * static_cast<double>(block);
  }
  void validate() const {
    detail::check_non_negative("linear_cost.per_call", per_call);
    detail::check_non_negative("linear_cost.per_token", per_token);
  }
};

/// t(rows) of a measured step-time curve given as (rows, seconds) points by increasing
/// rows: linear between points, the first point's time below it, and proportional to
/// the rows above the last (the compute-bound limit, the pessimistic side); 0 for no points.
///
/// ```cpp
/// std::vector<std::pair<double, double>> p{{1, 1e-3}, {4, 2e-3}};
/// double t = specdec::hybrid::step_time_at(p, 2.5);  // 1.5 ms
/// double u = specdec::hybrid::step_time_at(p, 8);    // 4 ms
/// ```
[[nodiscard]] inline double step_time_at(const std::vector<std::pair<double, double>>& points, double rows) {
  if (points.empty()) return 0.0;
  if (rows <= points.front().first) return points.front().second;
  for (std::size_t i = 1; i < points.size(); ++i) {
    if (rows <= points[i].first) {
      const double f = (rows - points[i - 1].first) / (points[i].first - points[i - 1].first);
      return points[i - 1].second + f * (points[i].second - points[i - 1].second);
    }
  }
  return points.back().second * rows / points.back().first;
}

/// A cost from a server's own measured step-time curve (`specdec-serve`'s `/health`
/// reports it as `step_time_curve`, `server_health::step_time_curve` reads it): a forward
/// of `block` tokens costs t(block) (`step_time_at`), whatever the cache holds. Charging
/// it instead of timing a second in-process copy of the model makes a simulation predict
/// the server it stands for, with the server's load, not the simulating process's.
///
/// ```cpp
/// specdec::hybrid::step_time_cost c{.points = {{1, 1e-3}, {5, 1.2e-3}, {16, 3e-3}}};
/// c.validate();
/// double s = c(5, 100);  // 1.2 ms
/// ```
struct step_time_cost {
  std::vector<std::pair<double, double>> points;  ///< (rows >= 1, seconds >= 0), rows increasing

  [[nodiscard]] double operator()(std::size_t block, std::size_t /*cached*/) const {
    return step_time_at(points, static_cast<double>(block));
  }
  void validate() const {
    if (points.empty())
      throw invalid_argument("step_time_cost.points is empty; expected at least one (rows, seconds) point");
    for (std::size_t i = 0; i < points.size(); ++i) {
      const std::string at = "step_time_cost.points[" + std::to_string(i) + "]";
      if (!(points[i].first >= 1.0) || !std::isfinite(points[i].first) ||
          (i > 0 && !(points[i].first > points[i - 1].first)))
        throw invalid_argument(at + ".rows = " + std::to_string(points[i].first) +
                               "; expected finite, >= 1 and above the previous point's rows");
      detail::check_non_negative(at + ".seconds", points[i].second);
    }
  }
};

namespace detail {

/// What `metered_forward` returns: the logits, the seconds the forward stands for (the
/// cost function's, else its wall time) and its wall time in this process.
struct metered {
  logits_block out;
  double seconds = 0.0;
  double wall_seconds = 0.0;
};

/// Runs `m.forward(tokens)` and meters it (`metered`).
template <language_model M>
metered metered_forward(M& m, std::span<const token_id> tokens, const cost_function& cost) {
  const std::size_t cached = static_cast<std::size_t>(m.cache_length());
  const auto t0 = std::chrono::steady_clock::now();
  logits_block out = m.forward(tokens);
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (!cost) return {out, wall, wall};
  const double s = cost(tokens.size(), cached);
  if (!(s >= 0.0) || !std::isfinite(s))
    throw invalid_argument("cost_function returned " + std::to_string(s) + " seconds; expected a finite value >= 0");
  return {out, s, wall};
}

}  // namespace detail

/// A `language_model` adapter that forwards to `M` and charges each forward's compute,
/// times `scale`, to the virtual clock of a `simulated_link`: the device side of a hybrid
/// run. Optionally records the confidence (max probability and entropy of the softmax at
/// temperature 1) of the last row of every forward, which is what a per-segment arbiter
/// reads.
///
/// ```cpp
/// specdec::hybrid::simulated_link link(specdec::hybrid::link_config::wan(), 1);
/// specdec::hybrid::timed_model dev(little, link, /*scale=*/3.0);  // device 3x slower
/// specdec::autoregressive_decoder dec(dev);
/// dec.generate(prompt, {.max_new_tokens = 16});
/// double device_seconds = dev.charged_seconds();  // also on link.now()
/// ```
template <language_model M>
class timed_model {
 public:
  /// `scale` > 0 multiplies each forward's cost; `cost` (optional) replaces the wall time.
  timed_model(M& inner, simulated_link& clock, double scale = 1.0, cost_function cost = {})
      : inner_(inner), clock_(clock), scale_(scale), cost_(std::move(cost)) {
    detail::check_positive("timed_model scale", scale);
  }

  [[nodiscard]] std::size_t vocab_size() const { return static_cast<std::size_t>(inner_.vocab_size()); }
  [[nodiscard]] std::size_t context_length() const { return static_cast<std::size_t>(inner_.context_length()); }
  [[nodiscard]] std::size_t cache_length() const { return static_cast<std::size_t>(inner_.cache_length()); }
  void truncate(std::size_t n) { inner_.truncate(n); }

  logits_block forward(std::span<const token_id> tokens) {
    // Prepaid: the block replays, at the next credited positions, tokens already charged.
    const std::size_t at = static_cast<std::size_t>(inner_.cache_length());
    const bool prepaid = at == credit_pos_ && at + tokens.size() <= prepaid_.size() &&
                         std::equal(tokens.begin(), tokens.end(), prepaid_.begin() + static_cast<std::ptrdiff_t>(at));
    if (prepaid) credit_pos_ += tokens.size();
    else prepaid_.clear();
    auto [out, real, wall] = detail::metered_forward(inner_, tokens, cost_);
    forward_wall_seconds_ += wall;
    const double charged = prepaid ? 0.0 : real * scale_;
    clock_.advance(charged);
    charged_seconds_ += charged;
    ++calls_;
    tokens_ += tokens.size();
    if (track_confidence_ && out.rows > 0) {
      probs_.resize(out.vocab);
      softmax(out.row(out.rows - 1), probs_);
      conf_sum_max_ += *std::max_element(probs_.begin(), probs_.end());
      conf_sum_entropy_ += entropy(probs_);
      ++conf_rows_;
    }
    return out;
  }

  [[nodiscard]] M& inner() noexcept { return inner_; }
  [[nodiscard]] double scale() const noexcept { return scale_; }
  /// Wall seconds the inner model's forwards took in this process (whatever was charged).
  [[nodiscard]] double forward_wall_seconds() const noexcept { return forward_wall_seconds_; }
  /// Virtual seconds charged so far.
  [[nodiscard]] double charged_seconds() const noexcept { return charged_seconds_; }
  [[nodiscard]] std::size_t calls() const noexcept { return calls_; }
  /// Tokens forwarded so far (all blocks).
  [[nodiscard]] std::size_t tokens() const noexcept { return tokens_; }

  /// Declares that forwarding `tokens` from an empty cache has already been charged (by a
  /// probe of the same model): the following forwards that replay them in order, from
  /// position 0, are computed but not charged; the first forward that does not ends the
  /// credit. An empty span cancels it. A request's probe is thus paid once, whichever
  /// route re-runs its prefix.
  void prepay(std::span<const token_id> tokens) {
    prepaid_.assign(tokens.begin(), tokens.end());
    credit_pos_ = 0;
  }

  /// Starts (or stops) recording the confidence of each forward's last row.
  void track_confidence(bool on) noexcept { track_confidence_ = on; }
  /// Forgets the recorded confidence.
  void reset_confidence() noexcept { conf_sum_max_ = conf_sum_entropy_ = 0.0, conf_rows_ = 0; }
  /// Mean max probability of the recorded rows (1 when none).
  [[nodiscard]] float mean_max_prob() const noexcept {
    return conf_rows_ ? static_cast<float>(conf_sum_max_ / static_cast<double>(conf_rows_)) : 1.0f;
  }
  /// Mean entropy (nats) of the recorded rows (0 when none).
  [[nodiscard]] float mean_entropy() const noexcept {
    return conf_rows_ ? static_cast<float>(conf_sum_entropy_ / static_cast<double>(conf_rows_)) : 0.0f;
  }
  [[nodiscard]] std::size_t confidence_rows() const noexcept { return conf_rows_; }

 private:
  M& inner_;
  simulated_link& clock_;
  double scale_;
  cost_function cost_;
  double charged_seconds_ = 0.0;
  double forward_wall_seconds_ = 0.0;
  std::size_t calls_ = 0;
  std::size_t tokens_ = 0;
  bool track_confidence_ = false;
  double conf_sum_max_ = 0.0;
  double conf_sum_entropy_ = 0.0;
  std::size_t conf_rows_ = 0;
  std::vector<float> probs_;
  std::vector<token_id> prepaid_;  ///< see `prepay`
  std::size_t credit_pos_ = 0;     ///< the next position a replayed block may be credited from
};

template <class M>
timed_model(M&, simulated_link&, double = 1.0, cost_function = {}) -> timed_model<M>;

/// How distributions travel during split speculative decoding.
///
/// ```cpp
/// auto p = specdec::hybrid::payload_mode::top_k;  // fp16 probability + int32 id pairs
/// ```
enum class payload_mode {
  token_ids,          ///< ids only (greedy: the cloud needs no q, the device no p)
  top_k,              ///< top-k (fp16 prob, int32 id) pairs per position
  full_distribution,  ///< vocab fp32 values per position
};

/// Where the accept/reject verdict of a speculative round is computed.
///
/// ```cpp
/// auto s = specdec::hybrid::verify_site::device;  // the cloud returns its rows
/// ```
enum class verify_site {
  cloud,   ///< the device uploads its drafts (+ q in the payload format), the cloud returns a verdict
  device,  ///< the device uploads ids only, the cloud returns its k + 1 rows in the payload format
};

/// The message format of split speculative decoding. Per verification round with a
/// block of `n` token ids of which the last `k` are drafts (vocabulary V, top-k K):
///
/// | site   | uplink payload                        | downlink payload                 |
/// |--------|---------------------------------------|----------------------------------|
/// | cloud  | 4n (+ q rows: K-pairs 6kK, full 4kV)  | verdict: accepted count + next token = 8 |
/// | device | 4n                                    | rows: ids 4(k+1), 6(k+1)K, 4(k+1)V |
///
/// Greedy verification needs no q and no p (token_ids at either site is exact);
/// rejection sampling needs q in the cloud or p on the device, so the simulation's exact
/// verification stands for a protocol that ships them in the chosen format (top_k is then
/// an approximation a real deployment would make; here it only sets the byte count).
///
/// ```cpp
/// specdec::hybrid::wire_format w{.mode = specdec::hybrid::payload_mode::top_k, .top_k = 8};
/// std::size_t up = w.uplink_bytes(5, 4, 2048);   // 4*5 + 4*8*6 = 212
/// std::size_t down = w.downlink_bytes(4, 2048);  // 8 (verdict)
/// ```
struct wire_format {
  payload_mode mode = payload_mode::token_ids;
  verify_site site = verify_site::cloud;
  std::size_t top_k = 16;  ///< >= 1 when mode == top_k
  /// Whether a verify leg first opens a server-side session: one extra round trip, the
  /// leg's committed prefix up as ids and an 8-byte reply down, before its first verify
  /// round (`specdec-serve`'s protocol does this per request, wire.hpp's `open_session`).
  /// False: the cloud holds the context already (the idealised protocol).
  bool opens_session = false;

  [[nodiscard]] std::size_t uplink_bytes(std::size_t block_tokens, std::size_t drafted, std::size_t vocab) const {
    std::size_t b = payload_bytes::token_ids(block_tokens);
    if (site == verify_site::cloud) b += rows_bytes(drafted, vocab, false);
    return b;
  }
  [[nodiscard]] std::size_t downlink_bytes(std::size_t drafted, std::size_t vocab) const {
    if (site == verify_site::cloud) return payload_bytes::token_ids(2);
    return rows_bytes(drafted + 1, vocab, true);
  }
  void validate() const {
    if (mode == payload_mode::top_k && top_k == 0)
      throw invalid_argument("wire_format.top_k must be >= 1 when mode == top_k, got 0");
  }

 private:
  [[nodiscard]] std::size_t rows_bytes(std::size_t rows, std::size_t vocab, bool ids_as_rows) const {
    switch (mode) {
      case payload_mode::token_ids: return ids_as_rows ? payload_bytes::token_ids(rows) : 0;
      case payload_mode::top_k: return payload_bytes::top_k(rows, std::min(top_k, vocab));
      case payload_mode::full_distribution: return payload_bytes::full_distribution(rows, vocab);
    }
    return 0;
  }
};

/// How a `remote_model` talks to the cloud.
///
/// ```cpp
/// remote.set_mode(specdec::hybrid::remote_mode::stream);  // cloud-side autoregressive decoding
/// ```
enum class remote_mode {
  /// Every forward is one round trip: the block's ids (+ q) up, cloud compute, verdict or
  /// rows down (split speculative decoding; see `wire_format`).
  verify,
  /// Autoregressive decoding in the cloud, streamed: the first forward opens a request
  /// (`simulated_link::open_request`, its `request_overhead_seconds`) and uploads its block
  /// (one round trip); each forward (plus `link_config::stream_message_seconds`, the cloud's
  /// handling of the token's event) then costs cloud compute plus one streamed token id
  /// down, and single-token forwards that continue the stream upload nothing (the cloud
  /// produced that token itself). The cloud runs ahead of the device: token i reaches the
  /// device at (cloud time of token i) + its downlink delay, not after token i-1's delay.
  stream,
  /// Split decoding without drafts, the cloud running the session ahead as `set_run_ahead`'s
  /// rule says (specdec-serve's run-ahead, hybrid/run_ahead.hpp): the first forward is a
  /// verify round of its block (no drafts); afterwards the cloud decodes on its own clock,
  /// a token a forward, at most `depth` past the last verdict it sent, and the device asks
  /// again as soon as a verdict arrives. A verdict leaves when its request reaches the
  /// cloud with every token decoded by then, or later: once `reply` tokens are decoded, or
  /// the leg's last token when the rest is due within the request's turnaround (the time
  /// since the last verdict left), counted at this forward's cost per token (4 bytes down
  /// per carried token beyond the verdict's own).
  run_ahead,
};

/// The cloud side of a hybrid run: a `language_model` whose forwards run `M` (the cloud
/// model, real compute, charged times `scale`) and pay for the messages they need on a
/// `simulated_link`. A failed send throws `link_unavailable`, leaving the cache as it was.
///
/// In `verify` mode the number k of drafted tokens in a block (which sets the q / row
/// payload) is told by the verifier through `forward_drafts(block, k)` (`local_verifier`
/// calls it when a target has it); a plain `forward(block)` assumes k = block - 1 (the
/// steady state of speculative decoding: the last committed token plus the drafts).
///
/// ```cpp
/// specdec::hybrid::simulated_link link(specdec::hybrid::link_config::lte(), 3);
/// specdec::hybrid::timed_model dev(little, link, 3.0);
/// specdec::hybrid::remote_model cloud(big, link, 0.5);
/// specdec::speculative_decoder dec(dev, cloud, specdec::fixed_gamma{4}, specdec::greedy_match{});
/// auto r = dec.generate(prompt, {.max_new_tokens = 32, .sync_caches = false});
/// double per_token = double(link.counters().bytes_up) / r.tokens.size();
/// ```
template <language_model M>
class remote_model {
 public:
  remote_model(M& inner, simulated_link& link, double scale = 1.0, wire_format wire = {}, cost_function cost = {})
      : inner_(inner), link_(link), scale_(scale), wire_(wire), cost_(std::move(cost)) {
    detail::check_positive("remote_model scale", scale);
    wire_.validate();
  }

  [[nodiscard]] std::size_t vocab_size() const { return static_cast<std::size_t>(inner_.vocab_size()); }
  [[nodiscard]] std::size_t context_length() const { return static_cast<std::size_t>(inner_.context_length()); }
  [[nodiscard]] std::size_t cache_length() const { return static_cast<std::size_t>(inner_.cache_length()); }
  /// Cuts the cloud's cache (implied by the verdict: no message).
  void truncate(std::size_t n) {
    inner_.truncate(n);
    if (cache_length() != stream_cached_) stream_open_ = false;
  }

  logits_block forward(std::span<const token_id> tokens) {
    return forward_drafts(tokens, tokens.empty() ? 0 : tokens.size() - 1);
  }
  /// A forward whose last `drafts` tokens are drafted (verify mode: the payload carries
  /// their q or rows); in the other modes the same as `forward`.
  logits_block forward_drafts(std::span<const token_id> tokens, std::size_t drafts) {
    switch (mode_) {
      case remote_mode::verify: return forward_verify(tokens, std::min(drafts, tokens.size()));
      case remote_mode::stream: return forward_stream(tokens);
      case remote_mode::run_ahead: break;
    }
    return forward_run_ahead(tokens);
  }

  [[nodiscard]] M& inner() noexcept { return inner_; }
  [[nodiscard]] remote_mode mode() const noexcept { return mode_; }
  /// Switches the protocol; a new stream starts with the next forward.
  void set_mode(remote_mode m) noexcept {
    mode_ = m;
    stream_open_ = false;
    session_open_ = false;
  }
  /// How `run_ahead` mode serves (specdec-serve's defaults unless set), and the most
  /// tokens the leg will produce (its final length; unset: no last tokens to wait for).
  void set_run_ahead(const run_ahead_rule& rule,
                     std::size_t max_tokens = std::numeric_limits<std::size_t>::max()) {
    rule.validate();
    ahead_rule_ = rule;
    ahead_max_tokens_ = max_tokens;
  }
  [[nodiscard]] const wire_format& wire() const noexcept { return wire_; }
  void set_wire(const wire_format& w) {
    w.validate();
    wire_ = w;
  }

  /// Round trips started (verify rounds and stream openings).
  [[nodiscard]] std::size_t round_trips() const noexcept { return round_trips_; }
  /// Cloud forwards and the tokens they processed (the cloud's compute cost).
  [[nodiscard]] std::size_t calls() const noexcept { return calls_; }
  [[nodiscard]] std::size_t tokens() const noexcept { return tokens_; }
  /// Drafted tokens sent for verification.
  [[nodiscard]] std::size_t drafted_tokens() const noexcept { return drafted_; }
  /// Wall seconds the inner model's forwards took in this process (whatever was charged).
  [[nodiscard]] double forward_wall_seconds() const noexcept { return forward_wall_seconds_; }
  /// Virtual cloud compute seconds charged.
  [[nodiscard]] double charged_seconds() const noexcept { return charged_seconds_; }
  /// Sends that failed (each threw `link_unavailable`).
  [[nodiscard]] std::size_t failures() const noexcept { return failures_; }

 private:
  [[noreturn]] void fail(const char* what, std::size_t restore) {
    inner_.truncate(restore);
    stream_open_ = false;
    ++failures_;
    throw link_unavailable(std::string("remote_model: the ") + what + " failed at virtual time " +
                           std::to_string(link_.now()) + " s (outage or retransmit limit); expected a delivered message");
  }

  /// One verify round; `verdict_leaves`, when given, receives the time the verdict leaves
  /// the cloud.
  logits_block forward_verify(std::span<const token_id> tokens, std::size_t k, double* verdict_leaves = nullptr) {
    const std::size_t cached = cache_length();
    const std::size_t n = tokens.size();
    const std::size_t v = vocab_size();
    open_session(cached, n - k);
    ++round_trips_;
    // Upload first: a block that never arrives is never computed.
    const send_result up = link_.send_up(wire_.uplink_bytes(n, k, v));
    if (!up.delivered) fail("upload of a verification block", cached);
    auto [out, real, wall] = detail::metered_forward(inner_, tokens, cost_);
    forward_wall_seconds_ += wall;
    charge(real, n);
    drafted_ += k;
    if (verdict_leaves != nullptr) *verdict_leaves = link_.now();
    const send_result down = link_.send_down(wire_.downlink_bytes(k, v));
    if (!down.delivered) fail("download of a verdict", cached);
    return out;
  }

  logits_block forward_stream(std::span<const token_id> tokens) {
    const std::size_t cached = cache_length();
    const std::size_t n = tokens.size();
    const bool continues = stream_open_ && n == 1 && cached == stream_cached_;
    if (!continues) {  // a new stream: one request of its own (an HTTP request on the wire)
      ++round_trips_;
      link_.open_request();
      const send_result up = link_.send_up(payload_bytes::token_ids(n));
      if (!up.delivered) fail("upload of a prompt", cached);
      cloud_time_ = link_.now();
    }
    auto [out, real, wall] = detail::metered_forward(inner_, tokens, cost_);
    forward_wall_seconds_ += wall;
    // The cloud's clock: the forward, then handing the token's event over (serial with the
    // next forward on the server's core).
    cloud_time_ += charge(real, n, /*on_clock=*/false) + link_.config().stream_message_seconds;
    const send_result down = link_.send_down_at(cloud_time_, payload_bytes::token_ids(1));
    if (!down.delivered) fail("download of a streamed token", cached);
    stream_open_ = true;
    stream_cached_ = cache_length();
    return out;
  }

  logits_block forward_run_ahead(std::span<const token_id> tokens) {
    const std::size_t cached = cache_length();
    const std::size_t n = tokens.size();
    const std::size_t v = vocab_size();
    if (!(stream_open_ && n == 1 && cached == stream_cached_)) {
      // The session's first round: a verify round without drafts.
      logits_block out = forward_verify(tokens, 0, &reply_leaves_);
      cloud_time_ = reply_leaves_;
      reply_tokens_ = reply_carries_ = ahead_produced_ = 1;
      stream_open_ = true;
      stream_cached_ = cache_length();
      return out;
    }
    auto [out, real, wall] = detail::metered_forward(inner_, tokens, cost_);
    forward_wall_seconds_ += wall;
    ++ahead_produced_;
    // The cloud stops `depth` tokens past its last verdict until the pending request takes them.
    const double start = reply_tokens_ >= ahead_rule_.depth ? std::max(cloud_time_, reply_leaves_) : cloud_time_;
    const double per_token = charge(real, n, /*on_clock=*/false);
    cloud_time_ = start + per_token;
    if (reply_tokens_ < reply_carries_) {
      ++reply_tokens_;  // decoded before the pending verdict leaves: it carries this token
      link_.extend_down(payload_bytes::token_ids(1));
    } else {
      // The device asked again when the last verdict arrived (the clock's now).
      ++round_trips_;
      if (!link_.send_up(wire_.uplink_bytes(0, 0, v)).delivered) fail("upload of a verification request", cached);
      const double arrives = link_.now(), turnaround = arrives - reply_leaves_;
      // This token and the leg's rest; those decoded by the request's arrival; then the
      // server's reasons to hold the request.
      const std::size_t left =
          ahead_max_tokens_ >= ahead_produced_ ? ahead_max_tokens_ - ahead_produced_ + 1 : std::size_t{1};
      const std::size_t cap = std::min(left, ahead_rule_.depth);
      std::size_t carries = 0;
      if (cloud_time_ <= arrives) {
        const double decoded = per_token > 0.0 ? 1.0 + std::floor((arrives - cloud_time_) / per_token) : 1e300;
        carries = static_cast<std::size_t>(std::min(decoded, static_cast<double>(cap)));
      }
      carries = std::max(carries, std::min(ahead_rule_.reply, left));
      if (static_cast<double>(left - carries) * per_token <= turnaround) carries = left;
      reply_carries_ = std::min(carries, ahead_rule_.depth);
      reply_leaves_ = std::max(arrives, cloud_time_ + static_cast<double>(reply_carries_ - 1) * per_token);
      reply_tokens_ = 1;
      if (!link_.send_down_at(reply_leaves_, wire_.downlink_bytes(0, v)).delivered) fail("download of a verdict", cached);
    }
    stream_cached_ = cache_length();
    return out;
  }

  /// `wire_format::opens_session`: one round trip opening the leg's session, the
  /// committed prefix up (`cached` cached tokens and the block's `committed` ones).
  void open_session(std::size_t cached, std::size_t committed) {
    if (!wire_.opens_session || session_open_) return;
    ++round_trips_;
    if (!link_.send_up(payload_bytes::token_ids(cached + committed)).delivered) fail("upload of a session open", cached);
    if (!link_.send_down(payload_bytes::token_ids(2)).delivered) fail("download of a session reply", cached);
    session_open_ = true;
  }

  double charge(double real, std::size_t n, bool on_clock = true) {
    const double s = real * scale_;
    if (on_clock) link_.advance(s);
    charged_seconds_ += s;
    ++calls_;
    tokens_ += n;
    return s;
  }

  M& inner_;
  simulated_link& link_;
  double scale_;
  wire_format wire_;
  cost_function cost_;
  remote_mode mode_ = remote_mode::verify;
  bool stream_open_ = false;
  bool session_open_ = false;  ///< `wire_format::opens_session`: this leg's session is open
  std::size_t stream_cached_ = 0;
  double cloud_time_ = 0.0;
  run_ahead_rule ahead_rule_{};
  std::size_t ahead_max_tokens_ = std::numeric_limits<std::size_t>::max();
  std::size_t ahead_produced_ = 0;  ///< run_ahead: tokens of the leg so far
  double reply_leaves_ = 0.0;       ///< run_ahead: when the latest verdict leaves the cloud
  std::size_t reply_carries_ = 0;   ///< run_ahead: the tokens it carries
  std::size_t reply_tokens_ = 0;    ///< run_ahead: of which forwarded so far
  std::size_t round_trips_ = 0;
  std::size_t calls_ = 0;
  std::size_t tokens_ = 0;
  std::size_t drafted_ = 0;
  std::size_t failures_ = 0;
  double charged_seconds_ = 0.0;
  double forward_wall_seconds_ = 0.0;
};

template <class M>
remote_model(M&, simulated_link&, double = 1.0, wire_format = {}, cost_function = {}) -> remote_model<M>;

}  // namespace specdec::hybrid
